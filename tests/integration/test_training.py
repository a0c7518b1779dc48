"""Training on a small labelled history stored through the real ingest path: the model ranks the planted frauds
first, reads nothing decided or labelled at or after the cutoff, is the same model for the same seed, and is
registered as a candidate with its metrics and threshold table."""

from __future__ import annotations

import itertools
import json
import random
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests.conftest import Database, project_template
from tests.integration.helpers import apply_rules, rule, store
from txguard import db
from txguard.domain import FraudLabel, Transaction
from txguard.models import training
from txguard.models.artifact_store import DirectoryStore
from txguard.models.training import TrainingError, TrainingOptions
from txguard.storage import models as registry
from txguard.storage.labels import write_labels

pytestmark = pytest.mark.integration

DAY = 86_400_000
HOUR = 3_600_000
T0 = 1_700_006_400_000  # a UTC midnight
DAYS = 40
UNTIL = T0 + DAYS * DAY
FEATURES = ("amount", "count", "count_1h", "mean_amount", "sum_1h")  # count: what mean_amount is over
# Shadow rules read the features training needs, so that every decision stores them (and never flags).
RULES = [
    rule("stores_amounts", "amount > 1000000 AND mean_amount > 1000000", mode="shadow"),
    rule("stores_recent", "count_1h > 1000 AND sum_1h > 1000000", mode="shadow"),
]
OPTIONS = TrainingOptions(until=UNTIL, name="fixture", seed=3, gap_days=3, valid_days=7, rounds=60)


def planted_history(seed: int, first_day: int, days: int, first_id: int) -> tuple[list[Transaction], list[FraudLabel]]:
    """Genuine spending (tens of euros, about one a day per account) and planted frauds: a compromised account
    spends hundreds, three times within the hour. Frauds are labelled two days later, a sample of genuine ones too."""
    from decimal import Decimal

    rng = random.Random(seed)
    transactions: list[Transaction] = []
    labels: list[FraudLabel] = []
    next_id = first_id
    for day in range(first_day, first_day + days):
        for account in range(1, 121):
            if rng.random() < 0.9:
                ts = T0 + day * DAY + rng.randrange(DAY - HOUR)
                amount = Decimal(f"{min(rng.lognormvariate(3.3, 0.6), 300):.2f}")
                transactions.append(Transaction(next_id, account, ts, amount, "EUR", f"m-{rng.randrange(30)}"))
                if rng.random() < 0.2:
                    labels.append(FraudLabel(next_id, False, "test", ts + 2 * DAY, None))
                next_id += 1
        for account in rng.sample(range(1, 121), 2):
            start = T0 + day * DAY + rng.randrange(DAY - 2 * HOUR)
            for burst in range(3):
                ts = start + burst * 600_000
                amount = Decimal(f"{rng.uniform(250, 900):.2f}")
                transactions.append(Transaction(next_id, account, ts, amount, "EUR", f"m-{rng.randrange(30)}"))
                labels.append(FraudLabel(next_id, True, "test", ts + 2 * DAY, "planted"))
                next_id += 1
    transactions.sort(key=lambda t: (t.ts, t.transaction_id))
    return transactions, labels


def ingest(transactions: list[Transaction], labels: list[FraudLabel]) -> None:
    for start in range(0, len(transactions), 2000):
        store(transactions[start : start + 2000])
    db.run_in_transaction(lambda cur: write_labels(cur, labels, now_ms=UNTIL + 30 * DAY))


@pytest.fixture
def history(database: Database) -> tuple[list[Transaction], list[FraudLabel]]:
    apply_rules(database, RULES)
    transactions, labels = planted_history(seed=11, first_day=0, days=DAYS, first_id=1)
    ingest(transactions, labels)
    return transactions, labels


@pytest.fixture
def conn(database: Database) -> Iterator[Any]:
    connection = psycopg2.connect(database.service_url)  # the service's own role: what TrainFunction has
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def artifacts(tmp_path: Path) -> DirectoryStore:
    return DirectoryStore(tmp_path / "models")


def test_the_model_ranks_the_planted_frauds_first_and_is_registered_as_a_candidate(
    history: Any, conn: Any, artifacts: DirectoryStore
) -> None:
    result = training.train(conn, OPTIONS, artifacts)
    model, metrics = result.model, result.model.metrics
    assert model.status == "candidate" and model.name == "fixture"
    assert model.features == FEATURES  # every feature stored with every row, by default
    assert (model.valid_to, model.valid_from) == (UNTIL - 3 * DAY, UNTIL - 10 * DAY)
    assert (model.train_to, model.train_from, model.label_cutoff) == (UNTIL - 13 * DAY, T0, UNTIL)

    valid = metrics["validation"]
    assert valid["frauds"] == 7 * 2 * 3  # two compromised accounts a day, three frauds each
    assert valid["average_precision"] > 0.95 and valid["roc_auc"] > 0.99
    assert valid["f1"] > 0.9 and 0 < valid["threshold"] < 1
    c = valid["confusion_matrix"]
    assert c["tp"] + c["fn"] == valid["frauds"] and sum(c.values()) == valid["rows"]
    # The stored decisions never flag (shadow rules only): the model ranks far better than they do.
    assert metrics["stored_decisions"]["average_precision"] < 0.2
    assert metrics["baseline"]["available"] and metrics["baseline"]["average_precision"] > 0.5
    assert metrics["champion"] == {"available": False, "reason": "there is no champion"}
    assert {item["feature"] for item in metrics["feature_importance"]} == set(FEATURES)
    assert metrics["feature_importance"][0]["feature"] == "amount"

    table = model.thresholds
    assert [row["score"] for row in table] == [i / 100 for i in range(100)]
    assert table[0]["recall"] == 1.0 and table[0]["fpr"] == 1.0
    assert all(a["recall"] >= b["recall"] and a["fpr"] >= b["fpr"] for a, b in itertools.pairwise(table))
    curve = valid["precision_recall_curve"]
    assert 0 < len(curve) <= training.CURVE_POINTS and curve[-1]["recall"] == 1.0

    # The registry row and the artifact agree: the artifact decodes, names the features, carries the threshold.
    from txguard.models.artifact import decode_artifact

    decoded = decode_artifact(artifacts.get(model.artifact_sha256))
    assert decoded.features == FEATURES and decoded.threshold == pytest.approx(valid["threshold"])


def test_the_same_seed_gives_the_same_model_and_nothing_after_the_cutoff_is_read(
    history: Any, database: Database, conn: Any, artifacts: DirectoryStore
) -> None:
    transactions, labels = history
    first = training.train(conn, OPTIONS, artifacts).model
    again = training.train(conn, OPTIONS, artifacts).model
    assert again.artifact_sha256 == first.artifact_sha256 and again.version == first.version + 1
    assert again.metrics == first.metrics

    # Decisions at and after the cutoff, planted frauds among them, and their labels: the model does not change.
    later, later_labels = planted_history(seed=12, first_day=DAYS, days=5, first_id=10**6)
    ingest(later, later_labels)
    assert training.train(conn, OPTIONS, artifacts).model.artifact_sha256 == first.artifact_sha256

    # Labels known at the cutoff or later, about transactions of the training window: no change either.
    trained_on = [t for t in transactions if t.ts < first.train_to]
    flipped = [FraudLabel(t.transaction_id, True, "late", UNTIL + i, "late") for i, t in enumerate(trained_on[:300])]
    db.run_in_transaction(lambda cur: write_labels(cur, flipped, now_ms=UNTIL + 40 * DAY))
    assert training.train(conn, OPTIONS, artifacts).model.artifact_sha256 == first.artifact_sha256

    # The same labels known one millisecond before the cutoff do count: the model changes.
    known = [label._replace(labelled_at_ms=UNTIL - 1, source="known") for label in flipped]
    db.run_in_transaction(lambda cur: write_labels(cur, known, now_ms=UNTIL + 40 * DAY))
    changed = training.train(conn, OPTIONS, artifacts).model
    assert changed.artifact_sha256 != first.artifact_sha256
    already = {label.transaction_id for label in labels if label.fraud}
    newly = sum(1 for t in trained_on[:300] if t.transaction_id not in already)
    assert newly > 250 and changed.metrics["training"]["frauds"] == first.metrics["training"]["frauds"] + newly


def test_training_refuses_what_it_cannot_train_on_and_registers_nothing(
    history: Any, database: Database, conn: Any, artifacts: DirectoryStore
) -> None:
    refused = [
        (replace(OPTIONS, **{"until": T0 + 5 * DAY}), "training window would be empty"),
        (replace(OPTIONS, **{"features": ("amount", "shoe_size")}), "not a feature serving"),
        (replace(OPTIONS, **{"features": ("amount", "count_24h")}), "stored with 0 of"),
        (replace(OPTIONS, **{"features": ("model_score",)}), "own score"),
        # A day's frauds are labelled two days later: with no gap, none is known by a cutoff a day later.
        (replace(OPTIONS, **{"until": UNTIL - DAY, "gap_days": 0, "valid_days": 1}), "no fraud labelled"),
    ]
    for options, message in refused:
        with pytest.raises(TrainingError, match=message):
            training.train(conn, options, artifacts)
    assert database.query("SELECT count(*) FROM model_versions") == [(0,)]


def test_a_second_model_is_compared_with_the_champion_on_the_same_window(
    history: Any, conn: Any, artifacts: DirectoryStore
) -> None:
    first = training.train(conn, OPTIONS, artifacts).model
    with conn, conn.cursor() as cur:
        registry.promote(cur, first.version, artifacts)
    second = training.train(conn, replace(OPTIONS, **{"seed": 4}), artifacts).model
    champion = second.metrics["champion"]
    assert champion["available"] and champion["version"] == first.version
    # Scored as serving scores it, the champion's figures are the ones it was registered with.
    for metric in ("average_precision", "roc_auc", "card_precision_at_k", "f1"):
        assert champion[metric] == pytest.approx(first.metrics["validation"][metric], abs=1e-9)


def test_the_commands_train_show_promote_and_roll_back_with_clear_errors(
    history: Any,
    database: Database,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    import json

    from txguard_dev.cli import main

    monkeypatch.setenv("TXGUARD_MODEL_DIR", str(tmp_path / "cli-models"))
    monkeypatch.delenv("TXGUARD_MODEL_BUCKET", raising=False)
    url = ["--database-url", database.admin_url]
    until = ["--until", "2023-12-25", "--gap-days", "3", "--rounds", "30", "--no-progress"]  # UNTIL's date
    assert main(["train", *url, *until, "--name", "cli", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["version"] == 1 and report["status"] == "candidate" and report["metrics"]["validation"]["frauds"]
    assert (tmp_path / "cli-models" / "models" / f"{report['artifact_sha256']}.json").is_file()
    assert main(["train", *url, *until, "--seed", "9"]) == 0
    text = capsys.readouterr().out
    assert "model version 2 (lightgbm-2023-12-25) registered as a candidate" in text
    assert "decision tree (baseline)" in text and "Confusion matrix" in text

    assert main(["models", "list", *url]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[1].split()[:2] == ["2", "candidate"] and listed[2].split()[:2] == ["1", "candidate"]
    assert main(["models", "promote", "1", *url]) == 0
    assert "model version 1: candidate -> champion" in capsys.readouterr().out
    assert main(["models", "shadow", "latest", *url, "--json"]) == 0
    shadowed = json.loads(capsys.readouterr().out)
    assert shadowed["detector"]["champion_model_version"] == 1 and shadowed["detector"]["shadow_model_versions"] == [2]
    assert main(["models", "promote", "2", *url]) == 0
    capsys.readouterr()
    assert main(["models", "show", "2", *url]) == 0
    shown = capsys.readouterr().out
    assert "model version 2 (lightgbm-2023-12-25): champion" in shown and "replaced      champion 1" in shown
    assert main(["models", "rollback", *url]) == 0
    assert "model version 1: retired -> champion" in capsys.readouterr().out

    for argv, code, message in [
        (["models", "show", "7", *url], 1, "model version 7 is not registered; `txguard models list`"),
        (["models", "promote", "1", *url], 1, "already the champion; nothing changed"),
        (["models", "retire", "0", *url], 2, "must be a model version (a positive integer) or 'latest'"),
        (["train", *url, "--until", "2023-11-16", "--no-progress"], 2, "training window would be empty"),
        (["train", *url, *until, "--features", "amount,nope"], 2, "'nope' is not a feature serving computes"),
    ]:
        try:
            status = main(argv)
        except SystemExit as exc:  # argparse refuses the command line itself
            status = int(exc.code or 0)
        assert status == code
        err = capsys.readouterr().err
        assert message in err, err
        assert "Traceback" not in err
    assert database.query("SELECT version, status FROM model_versions ORDER BY version") == [
        (1, "champion"),
        (2, "retired"),
    ]

    # An artifact gone from the store: the version is refused, with the reason.
    (tmp_path / "cli-models" / "models" / f"{report['artifact_sha256']}.json").unlink()
    assert main(["models", "rollback", *url]) == 0  # back to the rules alone: nothing to load
    capsys.readouterr()
    assert main(["models", "promote", "1", *url]) == 1
    assert "cannot be used: the artifact" in capsys.readouterr().err


def test_the_train_function_writes_a_candidate_to_s3_and_promotes_only_with_auto_promote_and_the_margin(
    history: Any, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3
    from moto import mock_aws

    from txguard.models import training_job
    from txguard.models.artifact_store import S3Store

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("TXGUARD_TRAIN_GAP_DAYS", "3")
    monkeypatch.setenv("TXGUARD_TRAIN_ROUNDS", "30")
    event = {"until": "2023-12-25", "seed": 5}  # UNTIL's date

    def connect() -> Any:
        return psycopg2.connect(database.service_url)

    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="models")
        bucket = S3Store("models")
        monkeypatch.delenv("TXGUARD_TRAIN_AUTO_PROMOTE", raising=False)
        first = training_job.run(event, connect, bucket)
        assert (first["promoted"], first["why"]) == (False, "AutoPromote is off")
        sha = database.query("SELECT artifact_sha256 FROM model_versions WHERE version = %s", (first["version"],))[0][0]
        assert bucket.get(sha)  # the artifact is in the bucket, intact

        monkeypatch.setenv("TXGUARD_TRAIN_AUTO_PROMOTE", "true")
        monkeypatch.setenv("TXGUARD_TRAIN_PROMOTE_MARGIN", "0.05")
        second = training_job.run(event, connect, bucket)  # no champion: the bar is the stored decisions' AP
        assert second["promoted"] and "the stored decisions" in second["why"]
        third = training_job.run({**event, "seed": 6}, connect, bucket)  # as good as the champion, not 0.05 better
        assert not third["promoted"] and f"champion {second['version']}" in third["why"]
    assert database.query("SELECT version, status, created_by FROM model_versions ORDER BY version") == [
        (first["version"], "candidate", "TrainFunction"),
        (second["version"], "champion", "TrainFunction"),
        (third["version"], "candidate", "TrainFunction"),
    ]


def test_the_train_functions_event_is_validated() -> None:
    from txguard.models.training_job import InvalidTrainingEvent, JobSettings, options_from_event

    now = T0 + 3 * DAY + 5 * HOUR
    scheduled = options_from_event({"source": "aws.events", "detail-type": "Scheduled Event"}, JobSettings(), now)
    assert scheduled.until == T0 + 3 * DAY and scheduled.name == "lightgbm-2023-11-18-scheduled"
    given = options_from_event({"until": "2023-12-25", "features": ["amount"], "rounds": 5}, JobSettings(), now)
    assert (given.until, given.features, given.rounds) == (UNTIL, ("amount",), 5)
    for event, message in [
        ({"until": "2023-13-01"}, "until"),
        ({"rounds": 0}, "rounds must be an integer from 1"),
        ({"seed": True}, "seed must be an integer"),
        ({"features": []}, "features must be a non-empty list"),
        ({"promote": True}, re.escape("unknown fields ['promote']")),
        ({"until": 5}, "until"),
        ([1], "must be a JSON object"),
    ]:
        with pytest.raises(InvalidTrainingEvent, match=message):
            options_from_event(event, JobSettings(), now)


def test_the_train_function_runs_as_lambda_runs_it(
    history: Any, database: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from txguard_dev.local.runner import FunctionRunner

    monkeypatch.setenv("TXGUARD_MODEL_DIR", str(tmp_path / "local-models"))
    runner = FunctionRunner(project_template(AutoPromote="true"), database_url=database.service_url)
    event = {"until": "2023-12-25", "gap_days": 3, "rounds": 20, "name": "invoked"}
    result = runner.call("TrainFunction", event)
    assert not result.failed, result.output
    outcome = json.loads(result.output)
    assert outcome["name"] == "invoked" and outcome["promoted"], outcome
    assert database.query("SELECT name, status FROM model_versions") == [("invoked", "champion")]
    assert len(list((tmp_path / "local-models" / "models").iterdir())) == 1

    refused = runner.call("TrainFunction", {"until": "someday"})
    assert refused.failed and "until" in refused.output
    assert database.query("SELECT count(*) FROM model_versions") == [(1,)]
