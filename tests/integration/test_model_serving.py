"""Serving models at ingest: the champion scores and flags beside the rules, shadows are recorded and never decide,
rules read `model_score`, explanations name the features that moved the score, every decision records its detector
version, and a model that cannot be loaded falls back to the rules (recorded, counted, never a 5xx)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import psycopg2
import pytest

from tests.conftest import Database, load_event, project_template
from tests.integration.helpers import T0, apply_rules, python_decisions, recompute, rule, sql_decisions, store, tx
from tests.integration.test_handlers import emitted, invoke
from tests.model_fixtures import FEATURES, artifact_path, register, trained_artifact, trained_model
from txguard import db
from txguard.backtest import backtest
from txguard.detection import detector_cache
from txguard.domain import Decision
from txguard.feature_columns import FeatureSource
from txguard.features import Features
from txguard.models import serving
from txguard.models.artifact import artifact_sha256, decode_artifact
from txguard.models.artifact_store import DirectoryStore
from txguard.models.scoring import TreeModel
from txguard.observability import metrics
from txguard.rule_engine import CompiledRuleSet
from txguard.rule_language import validate_rule_set
from txguard.storage import detector_versions, models, training_data
from txguard_dev.local.runner import FunctionRunner

pytestmark = pytest.mark.integration

R = TypeVar("R")


@pytest.fixture(scope="module")
def artifact() -> bytes:
    return trained_artifact(threshold=0.5)


@pytest.fixture
def model_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("TXGUARD_MODEL_DIR", str(tmp_path))
    serving._LOADED.clear()
    detector_cache.clear()
    yield tmp_path
    serving._LOADED.clear()
    detector_cache.clear()


def as_admin(database: Database, work: Callable[[psycopg2.extensions.cursor], R]) -> R:
    conn = psycopg2.connect(database.admin_url)
    try:
        with conn, conn.cursor() as cur:
            return work(cur)
    finally:
        conn.close()
        detector_cache.clear()


def champion(database: Database, directory: Path, data: bytes) -> int:
    """Register `data` and promote it; its version."""

    def work(cur: psycopg2.extensions.cursor) -> int:
        version = register(cur, directory, data)
        models.promote(cur, version, DirectoryStore(directory))
        return version

    return as_admin(database, work)


def expected_scores(data: bytes, rows: list[list[float | None]]) -> list[float]:
    return TreeModel.from_artifact(decode_artifact(data)).score_matrix(rows)


def test_the_champion_scores_every_decision_flags_at_its_threshold_and_explains_in_words(
    database: Database, model_dir: Path, artifact: bytes
) -> None:
    apply_rules(database, [rule("huge", "amount > 5000", "0.9")])
    version = champion(database, model_dir, artifact)
    current = as_admin(database, detector_versions.current)
    assert current is not None and current.champion_model_version == version
    batch = [tx(1, T0, "20.00"), tx(1, T0 + 60_000, "30.00"), tx(1, T0 + 120_000, "812.50"), tx(2, T0, "15.00")]
    results = store(batch)

    # What the model computes on the features ingest computed (count_24h, seconds since the previous one).
    rows: list[list[float | None]] = [[20.0, 0.0, None], [30.0, 1.0, 60.0], [812.5, 2.0, 60.0], [15.0, 0.0, None]]
    expected = expected_scores(artifact, rows)
    threshold = decode_artifact(artifact).threshold
    for result, p in zip(results, expected, strict=True):
        d = result.decision
        assert d.detector_version == current.version
        assert d.model_version == version and d.model_threshold == threshold
        assert d.model_score == p  # full precision, as computed
        assert d.score == serving.combined_score(Decimal(0), p)
        assert d.fraud == (p >= threshold)
        assert d.model_fallback is None
    flagged = results[2].decision
    assert flagged.fraud and expected[2] >= threshold > max(expected[0], expected[1], expected[3])
    (reason,) = flagged.reasons
    assert (reason.rule_id, reason.mode) == (f"model:{version}", "model")
    assert reason.explanation.startswith(f"the model scored {expected[2]:.4f}, at least its threshold 0.5000: ")
    assert "amount 812.50 EUR raised the model score" in reason.explanation
    assert not results[0].decision.reasons  # explanations only where a decision needs one

    stored = database.query(
        "SELECT transaction_id, detector_version, model_version, model_score, model_threshold, model_fallback, "
        "shadow_scores, score, fraud FROM transactions ORDER BY transaction_id"
    )
    assert [(r[1], r[2], r[3], r[4], r[5], r[6]) for r in stored] == [
        (current.version, version, p, threshold, None, None) for p in expected
    ]
    # Decisions store the model's features as well as the rules' (and the default rule set's recorded ones).
    (features,) = database.query(
        "SELECT features FROM transactions WHERE transaction_id = %s", (batch[2].transaction_id,)
    )
    assert set(FEATURES) <= set(features[0]) and "model_score" not in features[0]


def test_the_stored_scores_equal_the_training_library_s_predictions_on_the_stored_features(
    database: Database, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No skew between serving and training: the features ingest computed and scored are the ones stored with the
    decision and the ones training reads back (storage.training_data), value for value, and the training
    library's prediction on those equals the stored score."""
    import lightgbm
    import numpy as np

    live: list[list[float | None]] = []
    decide_columns = serving.ModelDetector.decide_columns

    def recording(
        self: serving.ModelDetector, columns: FeatureSource, items: list[tuple[Features, str | None, str]], snoozed: Any
    ) -> list[Decision]:
        # What the champion scores: the matrix of the chunk's columns (NaN where missing).
        live.extend([None if v != v else v for v in row] for row in columns.matrix(FEATURES).tolist())
        return decide_columns(self, columns, items, snoozed)

    monkeypatch.setattr(serving.ModelDetector, "decide_columns", recording)
    data, text = trained_model(threshold=0.5, seed=13)
    champion(database, model_dir, data)
    amounts = ["5.00", "450.00", "120.00", "999.99", "0.00", "401.00", "0.07", "123456.78"]
    results = store([tx(3, T0 + i * 3_600_000 + i * 7, amount) for i, amount in enumerate(amounts)])
    stored = database.query("SELECT features FROM transactions WHERE account_id = 3 ORDER BY ts")
    stored_rows = [[None if f[0][n] is None else float(f[0][n]) for n in FEATURES] for f in stored]
    conn = psycopg2.connect(database.admin_url)
    try:
        with conn:
            read = [
                list(values)
                for chunk in training_data.labelled_rows(conn, FEATURES, T0, T0 + len(amounts) * 3_600_000, T0)
                for values in chunk.values
            ]
    finally:
        conn.close()
    assert len(live) == len(amounts) and any(v is None for row in live for v in row)  # a missing value too
    assert live == stored_rows == read
    rows = np.array([[np.nan if v is None else v for v in row] for row in read])
    predicted = lightgbm.Booster(model_str=text).predict(rows)
    assert [r.decision.model_score for r in results] == pytest.approx(list(predicted), abs=1e-9, rel=0)
    assert [r.decision.model_score for r in results] == expected_scores(data, read)


def test_shadows_are_scored_and_recorded_and_never_decide(database: Database, model_dir: Path, artifact: bytes) -> None:
    apply_rules(database, [rule("huge", "amount > 5000", "0.9")])
    other = trained_artifact(threshold=0.01, seed=11)  # flags nearly everything, were it deciding

    def work(cur: psycopg2.extensions.cursor) -> int:
        version = register(cur, model_dir, other, name="shadow")
        models.set_shadow(cur, version, DirectoryStore(model_dir))
        return version

    shadow = as_admin(database, work)
    results = store([tx(4, T0, "700.00"), tx(4, T0 + 1000, "10.00")])
    expected = expected_scores(other, [[700.0, 0.0, None], [10.0, 1.0, 1.0]])
    current = as_admin(database, detector_versions.current)
    assert current is not None and current.shadow_model_versions == (shadow,)
    for result, p in zip(results, expected, strict=True):
        d = result.decision
        assert d.shadow_scores == {shadow: p}
        assert (d.fraud, d.score, d.model_version, d.model_score) == (False, Decimal("0.0000"), None, None)
        assert d.detector_version == current.version
    assert database.query("SELECT shadow_scores FROM transactions ORDER BY ts") == [
        ({str(shadow): p},) for p in expected
    ]


def test_rules_read_model_score_like_any_feature_and_sql_agrees(
    database: Database, model_dir: Path, artifact: bytes
) -> None:
    apply_rules(database, [rule("model_and_amount", "model_score > 0.3 AND amount > 100", "0.6")], threshold="0.5")
    champion(database, model_dir, artifact)
    batch = [tx(5, T0 + i * 600_000, a) for i, a in enumerate(["50.00", "150.00", "420.00", "80.00", "600.00"])]
    results = store(batch)
    for result in results:
        d = result.decision
        assert d.model_score is not None
        fired = d.model_score > 0.3 and result.transaction.amount > 100
        assert [r.rule_id for r in d.reasons if r.mode == "active"] == (["model_and_amount"] if fired else [])
        if fired:
            assert "the model's score (" in d.reasons[0].explanation
    assert any(r.decision.reasons for r in results)
    in_sql = sql_decisions(database, 5)
    assert {r.transaction.transaction_id: (r.decision.fraud, r.decision.score) for r in results} == {
        tid: (fraud, score) for tid, (fraud, score, _, _) in in_sql.items()
    }
    assert python_decisions(recompute(5)) == in_sql


def test_a_backtest_of_a_candidate_reads_the_stored_model_scores(
    database: Database, model_dir: Path, artifact: bytes
) -> None:
    champion(database, model_dir, artifact)
    results = store([tx(6, T0 + i * 600_000, a) for i, a in enumerate(["50.00", "450.00", "90.00"])])
    serving._LOADED.clear()
    # The artifact is gone: a backtest never runs the models again.
    for path in (model_dir / "models").iterdir():
        path.unlink()
    candidate = CompiledRuleSet(0, validate_rule_set({"rules": [rule("m", "model_score >= 0", "0.1")]}))
    report = db.run_in_transaction(lambda cur: backtest(cur, candidate))
    assert report.evaluated == 3
    assert report.fired["m"] == 3
    assert report.flagged == sum(r.decision.fraud for r in results)


@pytest.fixture
def runner(database: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[FunctionRunner]:
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    metrics.clear_metrics()
    yield FunctionRunner(project_template(), database_url=database.service_url)


def _corrupt(directory: Path, sha: str, database: Database, version: int) -> None:
    artifact_path(directory, sha).write_bytes(b'{"format": "txguard-lightgbm-1", "damaged": tru')


def _missing(directory: Path, sha: str, database: Database, version: int) -> None:
    artifact_path(directory, sha).unlink()


def _mismatched(directory: Path, sha: str, database: Database, version: int) -> None:
    # The registry says one feature list, the artifact another: serving would compute the wrong inputs.
    database.execute(
        "UPDATE model_versions SET features = %s WHERE version = %s", (["amount", "count", "count_1h"], version)
    )


@pytest.mark.parametrize(
    ("damage", "why"),
    [(_corrupt, "damaged"), (_missing, "is not in"), (_mismatched, "artifact features differ from the registered")],
)
def test_an_unusable_champion_falls_back_to_the_rules_through_the_api_recorded_and_counted(
    database: Database,
    model_dir: Path,
    artifact: bytes,
    runner: FunctionRunner,
    capsys: pytest.CaptureFixture[str],
    damage: Callable[[Path, str, Database, int], None],
    why: str,
) -> None:
    version = champion(database, model_dir, artifact)
    damage(model_dir, artifact_sha256(artifact), database, version)
    serving._LOADED.clear()
    detector_cache.clear()
    capsys.readouterr()
    event = load_event("store_data.json")
    response = invoke(runner, "IngestFunction", event)
    assert response["statusCode"] == 201, response
    decision = json.loads(response["body"])["results"][0]["decision"]
    assert decision["model_fallback"].startswith(f"champion v{version} unavailable: ")
    assert why in decision["model_fallback"]
    assert (decision["model_score"], decision["model_version"]) == (None, None)
    assert decision["detector_version"] is not None
    found, _ = emitted(capsys.readouterr().out)
    assert found["ModelUnavailable"] == 1
    ((fallback, score),) = database.query("SELECT model_fallback, model_score FROM transactions")
    assert fallback == decision["model_fallback"] and score is None


def test_models_compare_reports_champion_and_shadow_on_labelled_outcomes_from_the_stored_scores(
    database: Database, model_dir: Path, artifact: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    from txguard.scoring import average_precision, roc_auc
    from txguard_dev.cli import main

    version = champion(database, model_dir, artifact)
    other = trained_artifact(threshold=0.3, seed=11)

    def shadow(cur: psycopg2.extensions.cursor) -> int:
        number = register(cur, model_dir, other, name="shadow")
        models.set_shadow(cur, number, DirectoryStore(model_dir))
        return number

    second = as_admin(database, shadow)
    amounts = ["12.00", "640.00", "35.00", "410.00", "88.00", "905.00", "150.00", "20.00", "470.00", "60.00"]
    results = store([tx(8 + i % 3, T0 + i * 600_000, a) for i, a in enumerate(amounts)])
    frauds = {results[i].transaction.transaction_id for i in (1, 5, 8)}
    for r in results:
        database.execute(
            "INSERT INTO labels (transaction_id, fraud, source, labelled_at) "
            "VALUES (%s, %s, 'analyst', txguard_ms_to_ts(%s))",
            (r.transaction.transaction_id, r.transaction.transaction_id in frauds, r.transaction.ts + 1000),
        )
    capsys.readouterr()
    assert main(["models", "compare", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    truth = [int(r.transaction.transaction_id in frauds) for r in results]
    first_scores = [r.decision.model_score for r in results]
    second_scores = [r.decision.shadow_scores[second] for r in results]  # type: ignore[index]
    assert report["compared"] == len(results) and report["frauds"] == 3
    assert report["champion"]["version"] == version and report["shadow"]["version"] == second
    assert report["champion"]["roc_auc"] == roc_auc(first_scores, truth)  # type: ignore[arg-type]
    assert report["shadow"]["average_precision"] == average_precision(second_scores, truth)
    assert report["shadow"]["threshold"] == 0.3
    flagged = [s >= 0.3 for s in second_scores]
    hits = sum(f and t for f, t in zip(flagged, truth, strict=True))
    assert report["shadow"]["precision"] == hits / sum(flagged)
    assert report["shadow"]["recall"] == hits / 3

    assert main(["models", "compare", "--shadow", str(version)]) == 2  # the same model on both sides
    assert "--champion and --shadow are both" in capsys.readouterr().err
