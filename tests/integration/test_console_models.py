"""The console's Models pages and actions through its handler, on a real database and a real artifact
directory: what the pages show, and that shadow / promote / retire / rollback need a session, the session's CSRF
token and a confirmation, go through the registry, and change nothing when refused."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_console import KEYS, event, sign_in
from txguard import db
from txguard.console import session
from txguard.console.app import handle
from txguard.models import artifact_store
from txguard.models.artifact import encode_artifact
from txguard.storage import models as registry

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000
T0 = 1_530_403_200_000  # 2018-07-01T00:00:00Z
FEATURES = ("amount", "count")


def tiny_dump(split: float = 100.0) -> dict[str, Any]:
    """A LightGBM dump_model() of one tree: amount <= split scores low, above it high."""
    return {
        "name": "tree",
        "version": "v4",
        "num_class": 1,
        "num_tree_per_iteration": 1,
        "label_index": 0,
        "max_feature_idx": len(FEATURES) - 1,
        "objective": "binary sigmoid:1",
        "average_output": False,
        "feature_names": list(FEATURES),
        "pandas_categorical": None,
        "tree_info": [
            {
                "tree_index": 0,
                "num_leaves": 2,
                "num_cat": 0,
                "shrinkage": 1,
                "tree_structure": {
                    "split_index": 0,
                    "split_feature": 0,
                    "split_gain": 1.0,
                    "threshold": split,
                    "decision_type": "<=",
                    "default_left": True,
                    "missing_type": "None",
                    "internal_value": 0,
                    "internal_weight": 100,
                    "internal_count": 100,
                    "left_child": {"leaf_index": 0, "leaf_value": -3.0, "leaf_weight": 90, "leaf_count": 90},
                    "right_child": {"leaf_index": 1, "leaf_value": 2.0, "leaf_weight": 10, "leaf_count": 10},
                },
            }
        ],
    }


def report(auc: float) -> dict[str, Any]:
    """A training report as txguard.models.training writes it into the registry row."""
    curve = [
        {"threshold": t, "precision": p, "recall": r}
        for t, p, r in ((0.9, 1.0, 0.0), (0.8, 0.8, 0.25), (0.5, 0.6, 0.5), (0.2, 0.3, 0.75), (0.01, 0.01, 1.0))
    ]
    validation = {
        "rows": 10_000,
        "frauds": 100,
        "labelled": 10_000,
        "roc_auc": auc,
        "average_precision": auc - 0.2,
        "card_precision_at_k": 0.3,
        "f1": 0.55,
        "precision": 0.6,
        "recall": 0.5,
        "threshold": 0.5,
        "k": 100,
        "confusion_matrix": {"tp": 50, "fp": 33, "fn": 50, "tn": 9867},
        "precision_recall_curve": curve,
    }
    return {
        "validation": validation,
        "training": {"rows": 40_000, "frauds": 400, "labelled": 40_000},
        "feature_importance": [
            {"feature": "amount", "gain": 120.5, "share": 0.9432},
            {"feature": "count", "gain": 7.25, "share": 0.0568},
        ],
        "baseline": {
            "available": True,
            "model": "DecisionTreeClassifier(max_depth=6)",
            "roc_auc": 0.8,
            "average_precision": 0.5,
            "card_precision_at_k": 0.2,
            "f1": 0.4,
            "precision": 0.5,
            "recall": 0.33,
            "threshold": 0.7,
        },
        "champion": {"available": False, "reason": "there is no champion"},
    }


THRESHOLDS = [
    {"score": t, "flagged": n, "precision": p, "recall": r, "fpr": f}
    for t, n, p, r, f in ((0.2, 250, 0.3, 0.75, 0.0177), (0.5, 83, 0.6, 0.5, 0.0033), (0.8, 31, 0.8, 0.25, 0.0006))
]


@pytest.fixture
def model_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("TXGUARD_MODEL_BUCKET", raising=False)
    monkeypatch.setenv("TXGUARD_MODEL_DIR", str(tmp_path))
    return tmp_path


def register(name: str = "m", auc: float = 0.9, split: float = 100.0) -> int:
    """A tiny model registered as a candidate, its artifact in the model directory."""
    sha = artifact_store.put(encode_artifact(FEATURES, tiny_dump(split), 0.5, lightgbm_version="4.6.0"))
    new = registry.NewModel(
        name=name,
        artifact_sha256=sha,
        features=FEATURES,
        train_from=T0 - 60 * DAY_MS,
        train_to=T0 - 37 * DAY_MS,
        gap_days=7,
        valid_from=T0 - 30 * DAY_MS,
        valid_to=T0,
        label_cutoff=T0,
        seed=1,
        params={"num_leaves": 2},
        metrics=report(auc),
        thresholds=THRESHOLDS,
        created_by="test",
    )
    return db.run_in_transaction(lambda cur: registry.register(cur, new)).version


def state(database: Any) -> tuple[Any, ...]:
    """Every model's status and every detector version: what an action may change."""
    return (
        database.query("SELECT version, status FROM model_versions ORDER BY version"),
        database.query(
            "SELECT version, champion_model_version, shadow_model_versions FROM detector_versions ORDER BY version"
        ),
    )


def post(path: str, cookie: str | None, **form: str) -> Any:
    return handle(event("POST", path, form=form, cookie=cookie), KEYS)


def current_detector(database: Any) -> str:
    return str(database.query("SELECT max(version) FROM detector_versions")[0][0])


def test_the_models_pages_show_each_version_its_report_and_plots(database: Any, model_dir: Path) -> None:
    first = register("first", 0.91)
    register("second", 0.87)
    cookie, _ = sign_in()
    listing = handle(event("GET", "/models", cookie=cookie), KEYS)
    assert listing.status == 200
    body = str(listing.body)
    assert "first" in body and "second" in body and "0.9100" in body and "0.8700" in body
    assert body.count('class="status">candidate<') == 2
    detail = str(handle(event("GET", f"/models/{first}", cookie=cookie), KEYS).body)
    assert "Precision-recall" in detail and "Confusion matrix at threshold 0.5000" in detail
    assert ">9,867<" in detail and "true negatives" in detail
    assert "Feature importance" in detail and "amount: 120.5" in detail
    assert detail.count("<svg") == 3
    curve = handle(event("GET", f"/models/{first}", query={"csv": "pr_curve"}, cookie=cookie), KEYS)
    assert curve.status == 200 and curve.content_type.startswith("text/csv")
    lines = str(curve.body).splitlines()
    assert lines[0] == "recall,precision,threshold" and len(lines) == 6
    assert lines[3] == "0.500000,0.600000,0.500000"
    thresholds = str(handle(event("GET", f"/models/{first}", query={"csv": "thresholds"}, cookie=cookie), KEYS).body)
    assert thresholds.splitlines()[2] == "0.5000,83,0.6000,0.5000,0.0033"
    importance = str(
        handle(event("GET", f"/models/{first}", query={"csv": "feature_importance"}, cookie=cookie), KEYS).body
    )
    assert importance.splitlines()[1:] == ["amount,120.5,0.9432", "count,7.25,0.0568"]
    compared = str(handle(event("GET", f"/models/{first}", query={"csv": "comparison"}, cookie=cookie), KEYS).body)
    assert compared.splitlines()[1:] == [
        "this model,0.9100,0.7100,0.3000,0.5500,",
        "decision-tree baseline,0.8000,0.5000,0.2000,0.4000,DecisionTreeClassifier(max_depth=6)",
        "champion at training time,,,,,there is no champion",
    ]


def test_with_no_model_the_page_says_so_and_shows_the_detector_versions(database: Any) -> None:
    cookie, _ = sign_in()
    body = str(handle(event("GET", "/models", cookie=cookie), KEYS).body)
    assert 'id="no-models"' in body and "the rules alone" in body
    assert "Roll back" not in body


def test_promotion_asks_for_confirmation_then_goes_through_the_registry(database: Any, model_dir: Path) -> None:
    first, second = register("first"), register("second")
    cookie, token = sign_in("alice")
    before = state(database)
    confirm = post(f"/models/{first}/promote", cookie, csrf=token)
    assert confirm.status == 200 and "Nothing has changed yet" in str(confirm.body)
    assert state(database) == before
    done = post(f"/models/{first}/promote", cookie, csrf=token, confirm="yes", detector=current_detector(database))
    assert done.status == 303 and done.headers["Location"].endswith(f"/models/{first}?done=promote")
    assert database.query("SELECT status FROM model_versions WHERE version = %s", (first,)) == [("champion",)]
    newest = database.query(
        "SELECT champion_model_version, created_by FROM detector_versions ORDER BY version DESC LIMIT 1"
    )
    assert newest == [(first, "analyst:alice")]
    page = str(handle(event("GET", f"/models/{first}", query={"done": "promote"}, cookie=cookie), KEYS).body)
    assert "is now <b>champion</b>" in page
    # Promoting the second retires the first; rolling back brings the first back.
    post(f"/models/{second}/promote", cookie, csrf=token, confirm="yes", detector=current_detector(database))
    assert database.query("SELECT version, status FROM model_versions ORDER BY version") == [
        (first, "retired"),
        (second, "champion"),
    ]
    rollback_page = post("/models/rollback", cookie, csrf=token)
    assert rollback_page.status == 200 and f"champion: model {first}" in str(rollback_page.body)
    rolled = post("/models/rollback", cookie, csrf=token, confirm="yes", detector=current_detector(database))
    assert rolled.status == 303
    assert database.query("SELECT version, status FROM model_versions ORDER BY version") == [
        (first, "champion"),
        (second, "retired"),
    ]


def test_shadow_and_retire_each_confirm_then_change(database: Any, model_dir: Path) -> None:
    version = register()
    cookie, token = sign_in()
    for action, status in (("shadow", "shadow"), ("retire", "retired")):
        assert post(f"/models/{version}/{action}", cookie, csrf=token).status == 200
        assert (
            post(
                f"/models/{version}/{action}", cookie, csrf=token, confirm="yes", detector=current_detector(database)
            ).status
            == 303
        )
        assert database.query("SELECT status FROM model_versions") == [(status,)]
    shadows = database.query("SELECT shadow_model_versions FROM detector_versions ORDER BY version")
    assert shadows[-2:] == [([version],), ([],)]


@pytest.mark.parametrize("action", ["shadow", "promote", "retire", "rollback"])
def test_every_action_needs_a_session_and_the_sessions_fresh_csrf_token(
    database: Any, model_dir: Path, action: str
) -> None:
    version = register()
    if action == "rollback":
        db.run_in_transaction(lambda cur: registry.promote(cur, version, artifact_store.store(), "test"))
    path = "/models/rollback" if action == "rollback" else f"/models/{version}/{action}"
    cookie, token = sign_in("alice")
    _, bobs_token = sign_in("bob")
    alice = session.read(KEYS, cookie)
    assert alice is not None
    expired = session.csrf_token(KEYS, alice, now=time.time() - session.CSRF_SECONDS - 1)
    before = state(database)
    detector = current_detector(database)
    assert post(path, None, csrf=token, confirm="yes", detector=detector).status == 401
    for bad in (None, "", "123.forged", bobs_token, expired, token + "x"):
        form = {"confirm": "yes", "detector": detector} | ({} if bad is None else {"csrf": bad})
        assert post(path, cookie, **form).status == 403, bad
        assert state(database) == before
    assert post(path, cookie, csrf=token, confirm="yes", detector=detector).status == 303
    assert state(database) != before


def test_a_confirmation_made_stale_by_another_change_changes_nothing(database: Any, model_dir: Path) -> None:
    first, second = register("first"), register("second")
    cookie, token = sign_in()
    shown = current_detector(database)
    assert post(f"/models/{first}/promote", cookie, csrf=token).status == 200
    db.run_in_transaction(lambda cur: registry.set_shadow(cur, second, artifact_store.store(), "someone else"))
    before = state(database)
    stale = post(f"/models/{first}/promote", cookie, csrf=token, confirm="yes", detector=shown)
    assert stale.status == 409 and "the detector changed since the confirmation page" in str(stale.body)
    assert state(database) == before


def test_promoting_a_model_whose_artifact_is_corrupt_is_refused_with_the_reason(database: Any, model_dir: Path) -> None:
    version = register()
    sha = database.query("SELECT artifact_sha256 FROM model_versions")[0][0]
    (model_dir / "models" / f"{sha}.json").write_bytes(b'{"format": "something else"}')
    cookie, token = sign_in()
    before = state(database)
    refused = post(f"/models/{version}/promote", cookie, csrf=token, confirm="yes", detector=current_detector(database))
    assert refused.status == 409
    assert f"model version {version} cannot be used" in str(refused.body) and "damaged" in str(refused.body)
    assert state(database) == before
    (model_dir / "models" / f"{sha}.json").unlink()
    missing = post(f"/models/{version}/shadow", cookie, csrf=token, confirm="yes", detector=current_detector(database))
    assert missing.status == 409 and "cannot be used" in str(missing.body)
    assert state(database) == before


def test_a_transition_the_lifecycle_forbids_is_a_409_naming_it(database: Any, model_dir: Path) -> None:
    version = register()
    cookie, token = sign_in()
    post(f"/models/{version}/retire", cookie, csrf=token, confirm="yes", detector=current_detector(database))
    before = state(database)
    again = post(f"/models/{version}/retire", cookie, csrf=token, confirm="yes", detector=current_detector(database))
    assert again.status == 409 and "already retired" in str(again.body)
    nothing = post("/models/rollback", cookie, csrf=token)
    assert nothing.status == 409 and "no champion to roll back" in str(nothing.body)
    assert state(database) == before


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/models/abc", 404),
        ("GET", "/models/0", 404),
        ("GET", "/models/99", 404),
        ("POST", "/models/1/explode", 404),
        ("POST", "/models/99/promote", 404),
        ("GET", "/models/1/promote", 404),
    ],
)
def test_a_model_that_is_not_there_is_a_404(
    database: Any, model_dir: Path, method: str, path: str, status: int
) -> None:
    register()
    cookie, token = sign_in()
    answer = handle(event(method, path, form={"csrf": token} if method == "POST" else None, cookie=cookie), KEYS)
    assert answer.status == status, answer.body


@pytest.mark.parametrize(
    ("field", "value"),
    [("name", "<b>"), ("until", "2018-02-30"), ("seed", "-3"), ("gap_days", "x")],
)
def test_the_training_form_refuses_a_bad_field_by_name_and_trains_nothing(
    database: Any, model_dir: Path, field: str, value: str
) -> None:
    cookie, token = sign_in()
    form = {"csrf": token, "name": "c1", "until": "2018-07-01", "seed": "1", "gap_days": "7"} | {field: value}
    answer = post("/models/train", cookie, **form)
    assert answer.status == 400 and f"&#39;{field}&#39;" in str(answer.body), answer.body
    assert database.query("SELECT count(*) FROM model_versions") == [(0,)]
    assert handle(event("GET", "/models/train", cookie=cookie), KEYS).status == 200


def test_model_names_and_authors_with_markup_show_as_text(database: Any, model_dir: Path) -> None:
    version = register("<script>alert(1)</script>")
    cookie, token = sign_in()
    for path in ("/models", f"/models/{version}"):
        body = str(handle(event("GET", path, cookie=cookie), KEYS).body)
        assert "<script>alert" not in body and "&lt;script&gt;alert(1)&lt;/script&gt;" in body, path
    confirm = post(f"/models/{version}/promote", cookie, csrf=token)
    assert confirm.status == 200 and re.search(r"<script", str(confirm.body)) is None


def test_the_decision_page_shows_the_model_that_scored_it_and_its_contributions(database: Any, model_dir: Path) -> None:
    from tests.integration.helpers import store, tx
    from txguard.console import model_pages
    from txguard.detection import detector_cache

    version, shadow = register(), register("shadow", split=1000.0)
    db.run_in_transaction(lambda cur: registry.promote(cur, version, artifact_store.store(), "test"))
    db.run_in_transaction(lambda cur: registry.set_shadow(cur, shadow, artifact_store.store(), "test"))
    detector_cache.clear()
    scored = store([tx(31, T0, "500.00", "m-1")])[0]
    assert scored.decision.model_version == version and scored.decision.shadow_scores
    cookie, _ = sign_in()
    page = str(handle(event("GET", f"/decisions/{scored.transaction.transaction_id}", cookie=cookie), KEYS).body)
    assert f"model {version}</a>: probability {scored.decision.model_score:.6f}" in page
    shadow_score = scored.decision.shadow_scores[shadow]
    assert f"model {shadow}</a>: {shadow_score:.6f} (recorded, never deciding)" in page
    assert f"detector version</th><td>{scored.decision.detector_version} (rule set version" in page
    # The one tree: amount 500 > 100 reaches the leaf of +2.0; the model's average is (90 × -3 + 10 × 2) / 100.
    assert "<td>amount</td><td>500</td><td>+4.5000</td>" in page
    assert "<td>bias (the model&#39;s average)</td><td></td><td>-2.5000</td>" in page
    # Its artifact gone: the page says why there are no contributions.
    sha = database.query("SELECT artifact_sha256 FROM model_versions")[0][0]
    (model_dir / "models" / f"{sha}.json").unlink()
    model_pages._MODELS.clear()
    page = str(handle(event("GET", f"/decisions/{scored.transaction.transaction_id}", cookie=cookie), KEYS).body)
    assert 'id="contributions-note"' in page and "cannot be read" in page
    # A decision the rules took alone because the champion could not be loaded says so.
    other = store([tx(32, T0, "20.00", "m-1")])[0].transaction.transaction_id
    database.execute(
        "UPDATE transactions SET model_version = NULL, model_score = NULL, model_threshold = NULL, "
        "model_fallback = %s WHERE transaction_id = %s",
        (f"champion v{version} unavailable: <b>gone</b>", other),
    )
    page = str(handle(event("GET", f"/decisions/{other}", cookie=cookie), KEYS).body)
    assert f"none: the rules decided alone (champion v{version} unavailable: &lt;b&gt;gone&lt;/b&gt;)" in page
    assert "No model scored this decision" in page


def test_training_from_the_console_registers_a_candidate_and_opens_its_report(database: Any, model_dir: Path) -> None:
    from datetime import UTC, datetime

    from tests.integration.helpers import apply_rules
    from tests.integration.test_training import DAYS, RULES, UNTIL, ingest, planted_history

    apply_rules(database, RULES)
    ingest(*planted_history(seed=11, first_day=0, days=DAYS, first_id=1))
    cookie, token = sign_in("alice")
    until = datetime.fromtimestamp(UNTIL / 1000, UTC).date().isoformat()
    form = {"csrf": token, "name": "from-the-console", "until": until, "seed": "3", "gap_days": "3"}
    assert post("/models/train", cookie, **(form | {"csrf": "forged"})).status == 403
    assert database.query("SELECT count(*) FROM model_versions") == [(0,)]
    answer = post("/models/train", cookie, **form)
    assert answer.status == 303, answer.body
    row = database.query("SELECT version, name, status, created_by, seed, gap_days FROM model_versions")
    assert row == [(1, "from-the-console", "candidate", "analyst:alice", 3, 3)]
    assert answer.headers["Location"].endswith("/models/1?done=trained")
    report = str(handle(event("GET", "/models/1", query={"done": "trained"}, cookie=cookie), KEYS).body)
    assert "Trained and registered as a candidate" in report and report.count("<svg") == 3
    assert "decision-tree baseline" in report and "there is no champion" in report
    # Labels known only from a later day: nothing to learn from before it, a 400 that says so, nothing registered.
    early = post("/models/train", cookie, **(form | {"until": "2023-11-20", "name": "too-early"}))
    assert early.status == 400 and "nothing was registered" in str(early.body)
    assert database.query("SELECT count(*) FROM model_versions") == [(1,)]


def test_what_if_decides_with_the_champion_and_shows_its_contributions(database: Any, model_dir: Path) -> None:
    from txguard.detection import detector_cache

    version = register()
    db.run_in_transaction(lambda cur: registry.promote(cur, version, artifact_store.store(), "test"))
    detector_cache.clear()
    cookie, _ = sign_in()
    before = database.query("SELECT count(*) FROM transactions")
    query = {"decide": "1", "amount": "500", "count": "3", "mean_amount": "20"}
    page = str(handle(event("GET", "/what-if", query=query, cookie=cookie), KEYS).body)
    # The one tree's leaf for amounts above 100 is +2.0 in log-odds: p = 1 / (1 + e^-2), above the threshold 0.5.
    assert f"Model {version} (the champion): probability 0.880797, at or above its threshold 0.5000" in page
    assert "Flagged" in page and f"model:{version}" in page
    assert "<td>amount</td><td>500</td><td>+4.5000</td>" in page
    small = str(handle(event("GET", "/what-if", query=query | {"amount": "20"}, cookie=cookie), KEYS).body)
    assert (
        "probability 0.047426, below its threshold 0.5000" in small
        and "<td>amount</td><td>20</td><td>-0.5000</td>" in small
    )
    assert database.query("SELECT count(*) FROM transactions") == before


def test_a_deployment_without_the_training_library_says_so_and_trains_nothing(
    database: Any, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.delenv("TXGUARD_TRAIN_FUNCTION", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lightgbm" else found(name, *a))
    cookie, token = sign_in()
    form = {"csrf": token, "name": "c1", "until": "2018-07-01", "seed": "1", "gap_days": "7"}
    answer = post("/models/train", cookie, **form)
    assert answer.status == 501 and "txguard train" in str(answer.body)
    assert database.query("SELECT count(*) FROM model_versions") == [(0,)]


def test_in_aws_the_console_hands_training_to_train_function(
    database: Any, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto import mock_aws

    monkeypatch.setenv("TXGUARD_TRAIN_FUNCTION", "txguard-TrainFunction")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    cookie, token = sign_in()
    form = {"csrf": token, "name": "nightly", "until": "2018-07-01", "seed": "1", "gap_days": "7"}
    with mock_aws(config={"lambda": {"use_docker": False}}):
        answer = post("/models/train", cookie, **form)
    assert answer.status == 303 and answer.headers["Location"].endswith("/models/train?started=nightly")
    assert database.query("SELECT count(*) FROM model_versions") == [(0,)]  # TrainFunction registers it, later
    page = str(handle(event("GET", "/models/train", query={"started": "nightly"}, cookie=cookie), KEYS).body)
    assert "Training of nightly has started in TrainFunction" in page
