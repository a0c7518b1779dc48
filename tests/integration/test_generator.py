"""Generated traffic stored for real: `--direct` through the ingest code, the scheduled function, evaluation."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import time
import uuid
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EVENTS_DIR, ROOT, Database, load_event
from txguard.scoring import average_precision, roc_auc
from txguard_dev.cli import main
from txguard_generator import PATTERN_NAMES
from txguard_generator.accounts import SYNTHETIC_ACCOUNT_BASE

pytestmark = pytest.mark.integration

START = "2026-01-01T00:00:00Z"


def txguard(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        status = main(list(argv))
    return status, out.getvalue()


def generate_direct(*extra: str, n: int = 600, seed: int = 5) -> tuple[int, str]:
    return txguard(
        "generate", "--direct", "--num-transactions", str(n), "--num-accounts", "40",
        "--seed", str(seed), "--start", START, "--no-progress", *extra,
    )  # fmt: skip


def run_ids(database: Database) -> list[int]:
    # A generated run's transaction ids are [run_id << 23, (run_id + 1) << 23).
    return [row[0] for row in database.query("SELECT DISTINCT transaction_id >> 23 FROM labels ORDER BY 1")]


def test_direct_stores_exactly_n_each_with_its_decision_and_label(database: Database) -> None:
    status, output = generate_direct(n=600)
    assert status == 0, output
    ((stored, decided, labelled, frauds),) = database.query(
        """SELECT count(*), count(t.rule_set_version), count(l.transaction_id),
                  count(*) FILTER (WHERE l.fraud AND l.reason IS NOT NULL)
           FROM transactions t LEFT JOIN labels l USING (transaction_id)"""
    )
    assert (stored, decided, labelled) == (600, 600, 600)
    assert frauds == 12  # 2 % of 600
    assert database.query("SELECT count(*), min(source), max(source) FROM labels")[0] == (600, "generator", "generator")
    assert "600 stored, 0 duplicates" in output


def test_direct_runs_with_the_same_seed_store_the_same_traffic_under_new_ids(database: Database) -> None:
    assert generate_direct(n=300)[0] == 0
    assert generate_direct(n=300)[0] == 0
    first, second = run_ids(database)
    contents = [
        database.query(
            """SELECT t.account_id, t.ts, t.amount, t.merchant_id, l.fraud, l.reason
               FROM transactions t JOIN labels l USING (transaction_id)
               WHERE l.transaction_id >> 23 = %s ORDER BY t.ts, t.account_id, t.amount""",
            (run_id,),
        )
        for run_id in (first, second)
    ]
    assert len(contents[0]) == 300 and contents[0] == contents[1]
    assert database.query("SELECT count(DISTINCT transaction_id) FROM transactions")[0][0] == 600


def test_sending_a_run_again_with_its_run_id_stores_nothing_twice(database: Database) -> None:
    assert generate_direct("--run-id", "424242", n=200)[0] == 0
    status, output = generate_direct("--run-id", "424242", n=200)
    assert status == 0
    assert "0 stored, 200 duplicates" in output
    assert database.query("SELECT count(*), count(DISTINCT transaction_id >> 23) FROM labels")[0] == (200, 1)


def test_evaluate_reports_the_matrix_and_every_pattern_from_the_labels_table(database: Database) -> None:
    assert generate_direct(n=2000, seed=8)[0] == 0
    status, output = txguard("evaluate", "--format", "json")
    assert status == 0
    report = json.loads(output)
    matrix = report["confusion_matrix"]
    assert report["evaluated"] == sum(matrix.values()) == 2000
    assert matrix["tp"] + matrix["fn"] == report["frauds"] == report["labelled_fraud"] == 40
    assert report["unlabelled"] == 0 and report["labelled_genuine"] == 1960
    assert set(report["reasons"]) == set(PATTERN_NAMES)
    # The ranking metrics are those of the stored scores against the stored labels.
    rows = database.query(
        "SELECT t.score::float8, l.fraud::int FROM transactions t JOIN labels l USING (transaction_id) ORDER BY 1"
    )
    scores, truth = [r[0] for r in rows], [r[1] for r in rows]
    assert report["roc_auc"] == pytest.approx(roc_auc(scores, truth))
    assert report["average_precision"] == pytest.approx(average_precision(scores, truth))
    assert 0 <= report["card_precision"]["mean"] <= 1
    flagged = database.query("SELECT count(*) FROM transactions WHERE fraud")[0][0]
    assert matrix["tp"] + matrix["fp"] == flagged
    status, text = txguard("evaluate", "--run-id", str(run_ids(database)[0]))
    assert status == 0 and "card_testing" in text
    assert text.startswith("Evaluated 2,000 stored decisions (")
    assert "against the labels store" in text.splitlines()[0]


def test_evaluate_reads_a_labels_file_the_same_way(database: Database, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    assert generate_direct("--labels-out", str(labels), n=500, seed=9)[0] == 0
    from_table = json.loads(txguard("evaluate", "--format", "json")[1])
    from_file = json.loads(txguard("evaluate", "--format", "json", "--labels", str(labels))[1])
    assert from_file["confusion_matrix"] == from_table["confusion_matrix"]
    assert from_file["evaluated"] == 500
    status, text = txguard("evaluate", "--labels", str(labels))
    assert status == 0
    assert text.startswith("Evaluated 500 stored decisions (")
    assert text.splitlines()[0].endswith(f"against the labels in the file {labels}")
    assert "generated" not in text.splitlines()[0]
    # The form `txguard labels import` reads (the README's), CSV and JSON lines, gives the same evaluation.
    stored = database.query(
        "SELECT transaction_id, fraud, source, (extract(epoch FROM labelled_at) * 1000)::bigint, coalesce(reason, '') "
        "FROM labels ORDER BY transaction_id"
    )
    imported = tmp_path / "chargebacks.csv"
    imported.write_text(
        "transaction_id,fraud,source,labelled_at,reason\n"
        + "".join(f"{t},{str(f).lower()},{s},{at},{r}\n" for t, f, s, at, r in stored)
    )
    as_lines = tmp_path / "chargebacks.jsonl"
    as_lines.write_text(
        "".join(
            json.dumps({"transaction_id": t, "fraud": f, "source": s, "labelled_at": at} | ({"reason": r} if r else {}))
            + "\n"
            for t, f, s, at, r in stored
        )
    )
    for path in (imported, as_lines):
        status, output = txguard("evaluate", "--format", "json", "--labels", str(path))
        assert status == 0, output
        report = json.loads(output)
        assert report["confusion_matrix"] == from_table["confusion_matrix"] and report["evaluated"] == 500, path
        assert report["reasons"] == from_table["reasons"], path
    # A later label of a fraud says genuine: the file's label in force is the later one.
    fraud = next(row for row in stored if row[1])
    imported.write_text(imported.read_text() + f"{fraud[0]},false,analyst,{fraud[3] + 1},\n")
    relabelled = json.loads(txguard("evaluate", "--format", "json", "--labels", str(imported))[1])
    assert relabelled["labelled_fraud"] == from_table["labelled_fraud"] - 1
    imported.write_text(imported.read_text() + "1,perhaps,analyst,,\n")
    err = io.StringIO()
    with redirect_stderr(err):
        status, _ = txguard("evaluate", "--labels", str(imported))
    assert status == 2 and f"line {len(stored) + 3}: fraud = 'perhaps'" in err.getvalue()
    assert "nothing was evaluated" in err.getvalue()


def test_evaluate_leaves_out_labels_whose_transactions_are_not_stored(database: Database) -> None:
    assert generate_direct(n=100)[0] == 0
    database.execute(
        "INSERT INTO labels (transaction_id, fraud, source, labelled_at, reason) "
        "VALUES (1, true, 'analyst', date_trunc('milliseconds', now()), 'x')"
    )
    report = json.loads(txguard("evaluate", "--format", "json")[1])
    # A label may wait for its transaction: the evaluation covers stored decisions only.
    assert (report["evaluated"], report["labelled_fraud"] + report["labelled_genuine"]) == (100, 100)


# --- the scheduled function, in-process -------------------------------------------------------------


@dataclass
class FakeContext:
    function_name: str = "GenerateFunction"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:GenerateFunction"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))


def generate_handler() -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    spec = importlib.util.spec_from_file_location("generate_function_app", ROOT / "functions/generate/app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler: Callable[[dict[str, Any], Any], dict[str, Any]] = module.lambda_handler
    return handler


def scheduled_event() -> dict[str, Any]:
    if (EVENTS_DIR / "scheduled.json").exists():
        return load_event("scheduled.json")
    # What `sam local generate-event cloudwatch scheduled-event` gives.
    return {
        "id": "cdc73f9d-aea9-11e3-9d5a-835b769c0d9c",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": "1970-01-01T00:00:00Z",
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/ExampleRule"],
        "detail": {},
    }


def test_the_scheduled_function_stores_the_configured_count_up_to_now_in_the_reserved_accounts(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TXGUARD_GENERATE_NUM_TRANSACTIONS", "150")
    monkeypatch.setenv("TXGUARD_GENERATE_NUM_ACCOUNTS", "3000")
    before = int(time.time() * 1000)
    result = generate_handler()(scheduled_event(), FakeContext())
    after = int(time.time() * 1000)
    assert (result["mode"], result["generated"], result["stored"]) == ("direct", 150, 150)
    ((count, first, last),) = database.query(
        "SELECT count(*), txguard_ts_to_ms(min(ts)), txguard_ts_to_ms(max(ts)) FROM transactions"
    )
    assert count == 150
    # In the day up to the invocation (whole-day shifts keep a seed's traffic reproducible), never in the future,
    # and a few minutes of traffic, not days.
    assert before - 86_400_000 < last <= after and last - first < 3_600_000
    assert all(account > SYNTHETIC_ACCOUNT_BASE for (account,) in database.query("SELECT account_id FROM transactions"))
    labelled = database.query("SELECT count(*) FROM labels WHERE transaction_id >> 23 = %s", (result["run_id"],))
    assert labelled == [(150,)]


def test_the_scheduled_events_detail_overrides_the_environment(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TXGUARD_GENERATE_NUM_TRANSACTIONS", "150")
    event = {**scheduled_event(), "detail": {"num_transactions": 20, "seed": 3}}
    result = generate_handler()(event, FakeContext())
    assert result["stored"] == 20 and result["seed"] == 3
    assert database.query("SELECT count(*) FROM transactions")[0][0] == 20


def test_scheduled_runs_never_reuse_an_id(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXGUARD_GENERATE_NUM_TRANSACTIONS", "50")
    monkeypatch.setenv("TXGUARD_GENERATE_SEED", "1")  # the same traffic each time: only the ids tell runs apart
    handler = generate_handler()
    results = [handler(scheduled_event(), FakeContext()) for _ in range(3)]
    assert [r["stored"] for r in results] == [50, 50, 50]
    assert database.query("SELECT count(DISTINCT transaction_id) FROM transactions")[0][0] == 150


def test_evaluate_takes_a_period_and_counts_only_its_decisions(database: Database) -> None:
    assert generate_direct(n=400, seed=11)[0] == 0
    (first_day, count_first_day, frauds_first_day) = database.query(
        """SELECT min(ts)::date, count(*) FILTER (WHERE ts::date = (SELECT min(ts)::date FROM transactions)),
                  count(*) FILTER (WHERE ts::date = (SELECT min(ts)::date FROM transactions) AND l.fraud)
           FROM transactions t LEFT JOIN labels l USING (transaction_id)"""
    )[0]
    next_day = first_day + timedelta(days=1)
    status, output = txguard("evaluate", "--from", first_day.isoformat(), "--to", next_day.isoformat(), "--json")
    assert status == 0, output
    report = json.loads(output)
    assert report["evaluated"] == count_first_day and report["frauds"] == frauds_first_day
    for argv, message in (
        (("--from", next_day.isoformat(), "--to", first_day.isoformat()), "--from must be before --to"),
        (("--from", "2018-13-01"), "2018-13-01"),
    ):
        errors = io.StringIO()
        with redirect_stderr(errors), contextlib.suppress(SystemExit):
            status, _ = txguard("evaluate", *argv)
        assert message in errors.getvalue()
