"""Batch ingest through the ingest function (validation, decisions, COPY) vs raw idempotent COPY.

Baseline, from the measured limits of these machines: COPY into a temporary table, then
INSERT ... ON CONFLICT DO NOTHING into a bare four-column table with one index.
"""

from __future__ import annotations

import io
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions

from bench.harness import BenchDatabase, amount_text, history_rule_set, timed
from txguard_dev.local.runner import FunctionRunner, Template

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000_000


def rows(count: int, first_id: int, accounts: int, seed: int, start: int = T0) -> list[tuple[int, int, int, str]]:
    """(transaction id, account, timestamp, amount) in per-account time order."""
    rng = random.Random(seed)
    clock = [start + rng.randint(0, 3_600_000) for _ in range(accounts)]
    out = []
    for i in range(count):
        account = rng.randrange(accounts)
        clock[account] += int(rng.expovariate(1 / 600_000)) + 1
        out.append((first_id + i, account + 1, clock[account], amount_text(rng, 0.8)))
    return out


def raw_copy_load(conn: psycopg2.extensions.connection, data: list[tuple[int, int, int, str]]) -> Callable[[], None]:
    """Make an empty bare table (four columns, one index) on `conn`; return what loads `data` into it by raw
    idempotent COPY: COPY into a temporary table, then INSERT ... ON CONFLICT DO NOTHING, one transaction."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "DROP TABLE IF EXISTS bench_raw; "
            "CREATE TABLE bench_raw (account_id bigint, transaction_id bigint PRIMARY KEY, ts bigint, "
            "amount numeric(14,2)); CREATE INDEX ON bench_raw (account_id, ts)"
        )
    buffer = io.StringIO("".join(f"{a}\t{t}\t{ts}\t{amt}\n" for t, a, ts, amt in data))

    def load() -> None:
        with conn, conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE staging (LIKE bench_raw) ON COMMIT DROP")
            cur.copy_expert("COPY staging (account_id, transaction_id, ts, amount) FROM STDIN", buffer)
            cur.execute("INSERT INTO bench_raw SELECT * FROM staging ON CONFLICT DO NOTHING")

    return load


def raw_copy_rate(database: BenchDatabase, data: list[tuple[int, int, int, str]]) -> float:
    conn = psycopg2.connect(database.admin_url)
    try:
        return len(data) / timed(raw_copy_load(conn, data))
    finally:
        conn.close()


def transaction_json(t: tuple[int, int, int, str], merchants: int = 0) -> dict[str, Any]:
    """One row of `rows()` as POST /store_data reads it (at one of `merchants` merchants, when not 0)."""
    tid, account, ts, amount = t
    item: dict[str, Any] = {"account_id": account, "transaction_id": tid, "timestamp": ts, "amount": amount}
    return item | ({"merchant_id": f"m{tid % merchants}"} if merchants else {})


def batch_events(data: list[tuple[int, int, int, str]], batch_size: int, merchants: int = 0) -> list[dict[str, Any]]:
    """API Gateway events of POST /store_data, `batch_size` transactions each, as the API emulator builds them."""
    template = json.loads((ROOT / "events" / "store_data_batch.json").read_text())
    return [
        {
            **template,
            "body": json.dumps(
                {"transactions": [transaction_json(t, merchants) for t in data[start : start + batch_size]]}
            ),
        }
        for start in range(0, len(data), batch_size)
    ]


def handler_rate(
    database: BenchDatabase, data: list[tuple[int, int, int, str]], batch_size: int, merchants: int = 0
) -> float:
    runner = FunctionRunner(Template(ROOT / "template.yaml"), database_url=None)
    events = batch_events(data, batch_size, merchants)
    first = json.loads(events[0]["body"])["transactions"][0]
    runner.call("IngestFunction", {**events[0], "body": json.dumps({"transactions": [first]})})

    def ingest_all() -> None:
        for event in events:
            result = runner.call("IngestFunction", event)
            if result.failed or json.loads(result.output)["statusCode"] != 201:
                raise RuntimeError(f"ingest failed: {result.output[:300]}")

    return len(data) / timed(ingest_all)


def python_stage_costs(data: list[tuple[int, int, int, str]]) -> dict[str, float]:
    """Microseconds of Python per transaction in each stage of a batch's ingest (no database involved)."""
    from pydantic import TypeAdapter

    from txguard.api.ingest_routes import StoreBody, stored_answer
    from txguard.api.resolver import parse_json
    from txguard.api.schemas import TransactionBatch
    from txguard.detection import Decided, decide_in_time_order, decisions_in_time_order, empty_history, empty_timeline
    from txguard.domain import StoreResult, Transaction
    from txguard.rule_engine import CompiledRuleSet
    from txguard.rule_language import validate_rule_set
    from txguard.storage.rule_sets import default_rule_set
    from txguard.storage.transactions import _LINES_PER_BUILD, copy_lines

    body = json.dumps(
        {
            "transactions": [
                {"account_id": a, "transaction_id": t, "timestamp": ts, "amount": amt} for t, a, ts, amt in data
            ]
        }
    )
    parsed = parse_json(body)
    batch = TransactionBatch.model_validate(parsed)
    txs = sorted(
        (
            Transaction(x.transaction_id, x.account_id, x.timestamp, x.amount, x.currency, x.merchant_id)  # type: ignore[arg-type]
            for x in batch.transactions
        ),
        key=lambda t: (t.ts, t.transaction_id),
    )
    rules = CompiledRuleSet(1, default_rule_set())
    accounts = {t.account_id for t in txs}
    decisions = decide_in_time_order(txs, {a: empty_history() for a in accounts}, {}, rules)
    results = [StoreResult(t, "stored", decisions[t.transaction_id]) for t in txs]
    names = tuple(sorted(rules.needed_features))
    # Each row's stored features JSON as ingest gets it (decisions_in_time_order's `record`).
    recorded = {
        d.transaction.transaction_id: d.recorded
        for d in decisions_in_time_order(txs, {a: empty_history() for a in accounts}, {}, rules, record=names)
    }
    # The rows as COPY writes them, a chunk at a time (transactions._DecidedRows).
    decided = [Decided(t, None, decisions[t.transaction_id], recorded[t.transaction_id]) for t in txs]
    history_rules = CompiledRuleSet(1, validate_rule_set(history_rule_set()))
    at_merchants = [t._replace(merchant_id=f"m{t.transaction_id % 500}") for t in txs]
    store_body = TypeAdapter(StoreBody)

    # what the handler validates its body with (item by item when not plain)
    stages = {
        "parse JSON": lambda: parse_json(body),
        "validate (pydantic)": lambda: TransactionBatch.model_validate(parsed),
        "validate as the handler does (columns, Transactions built)": lambda: store_body.validate_python(parsed),
        "features + rules (default rule set)": lambda: decide_in_time_order(
            txs, {a: empty_history() for a in accounts}, {}, rules
        ),
        "features + rules + the stored features JSON (as ingest decides)": lambda: list(
            decisions_in_time_order(txs, {a: empty_history() for a in accounts}, {}, rules, record=names)
        ),
        "features + rules (default rules and the history features, 500 merchants)": lambda: decide_in_time_order(
            at_merchants,
            {a: empty_history() for a in accounts},
            {f"m{i}": empty_timeline() for i in range(500)},
            history_rules,
        ),
        "COPY text (with the stored features JSON)": lambda: "".join(
            copy_lines(decided[i : i + _LINES_PER_BUILD]) for i in range(0, len(decided), _LINES_PER_BUILD)
        ),
        # As the route answers (api.ingest_routes.store_data): the body built, measured against the size limits.
        "response JSON": lambda: stored_answer(results, "full"),
        "response JSON (?response=decisions)": lambda: stored_answer(results, "decisions"),
    }
    return {name: round(min(timed(work) for _ in range(3)) * 1e6 / len(data), 2) for name, work in stages.items()}


def rules_without_recorded_features() -> dict[str, Any]:
    """The default rule set without `features.record`: decisions store only the features its rules read."""
    from txguard.storage.rule_sets import default_rule_set

    document = default_rule_set().document()
    document["features"] = {k: v for k, v in document.get("features", {}).items() if k != "record"}
    return document


def apply_empty_rule_set(database: BenchDatabase) -> None:
    database.apply_rules({"rules": []}, "bench: the write path without detection")


ROUNDS = 3
DAY_MS = 86_400_000


def paired_rounds(
    database: BenchDatabase, count: int, batch_size: int, first_round: int, merchants: int = 0
) -> tuple[list[float], list[float]]:
    """Raw COPY then the handler, ROUNDS times over: each ratio pairs two runs made moments apart.

    Every round sends new ids for the same 1,000 accounts, a month after the previous round's, so the
    handler always meets accounts with history and transactions arriving in order.
    """
    baselines, measured = [], []
    for n in range(first_round, first_round + ROUNDS):
        baselines.append(raw_copy_rate(database, rows(count, 1, 1000, seed=1)))
        data = rows(count, 10_000_000 * (n + 1), 1000, seed=n + 2, start=T0 + 30 * DAY_MS * n)
        measured.append(handler_rate(database, data, batch_size, merchants))
    return baselines, measured


def summary(name: str, count: int, batch_size: int, baselines: list[float], measured: list[float]) -> dict[str, Any]:
    ratios = [m / b for m, b in zip(measured, baselines, strict=True)]
    return {
        "name": name,
        "rows": count,
        "batch_size": batch_size,
        "rounds": len(ratios),
        "baseline_rows_per_s": round(statistics.median(baselines)),
        "measured_rows_per_s": round(statistics.median(measured)),
        "ratio": round(statistics.median(ratios), 3),
        "ratio_by_round": [round(r, 3) for r in ratios],
    }


# Earlier code whose own bench runs here again, alternately with this code's: issue #14 asks batch ingest with the
# new features to keep "today's share of raw idempotent COPY (0.076)", a figure read off another day's machine.
EARLIER_CODE = {
    # The code whose full `make bench` run of 2026-11-21 measured that 0.076.
    "db12506": "the code that measured #14's 0.076 (2026-11-21)",
    # The code as it was when #14 was filed (2026-11-29), before any of its work.
    "5ac09b0": "the code #14 was filed against (2026-11-29)",
}
# Run in a tree's own bench: its first ingest measure (default rules, 5,000-row batches), paired with raw COPY.
_PAIRED_ROUNDS = """
import json, sys
from bench import ingest_bench
from bench.harness import bench_database
with bench_database() as database:
    raw, handler = ingest_bench.paired_rounds(database, int(sys.argv[1]), 5000, first_round=0)
print(json.dumps({"raw": raw, "handler": handler}))
"""


def _paired_rounds_in(tree: Path, count: int, server_url: str) -> tuple[list[float], list[float]]:
    """paired_rounds as the code in `tree` runs it, in a process of its own, on the server of `server_url`."""
    path = os.pathsep.join(str(tree / part) for part in ("", "layers/common", "tools"))
    done = subprocess.run(
        [sys.executable, "-c", _PAIRED_ROUNDS, str(count)],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": path, "DATABASE_URL": server_url, "POWERTOOLS_LOG_LEVEL": "WARNING"},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    for line in reversed(done.stdout.splitlines()):
        if line.startswith('{"raw"'):
            found = json.loads(line)
            return found["raw"], found["handler"]
    raise RuntimeError(f"the bench in {tree} failed: {(done.stderr or done.stdout)[-600:]}")


def _checkout(commit: str, into: Path) -> str | None:
    """Write `commit`'s files into `into` (git archive); None, or why it could not."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit], capture_output=True, check=False
    )
    if archive.returncode != 0:
        return f"git archive {commit} failed: {archive.stderr.decode()[:200].strip()}"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return None


def against_earlier_code(database: BenchDatabase, count: int, alternations: int = 3) -> list[dict[str, Any]]:
    """The first ingest measure (paired_rounds: raw COPY, then the handler, ROUNDS times) run by this code and by
    each of EARLIER_CODE's, in turn, `alternations` times over, each run in a process of its own. One result per
    earlier code: the handler's median rows/s then and now, and their ratio, which is the ratio of their shares of
    raw idempotent COPY: every run's raw COPY is the same load, so each share is taken against the median of all
    of them (each side's own rounds swung 20-30 % between runs minutes apart).

    The earlier files come from git, so this needs the repository's history; without it the results say why they
    were not measured."""
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="txguard-earlier-") as directory:
        trees: dict[str, Path] = {"now": ROOT}
        for commit, about in EARLIER_CODE.items():
            why_not = _checkout(commit, Path(directory) / commit)
            if why_not is None:
                trees[commit] = Path(directory) / commit
            else:
                results.append(
                    {
                        "name": f"batch ingest (default rules) vs the same bench on {about}",
                        "baseline_rows_per_s": 0,
                        "measured_rows_per_s": 0,
                        "ratio": None,
                        "target": f"not measured: {why_not}",
                    }
                )
        raw: list[float] = []
        handler: dict[str, list[float]] = {side: [] for side in trees}
        for _ in range(alternations):
            for side, tree in trees.items():
                side_raw, side_handler = _paired_rounds_in(tree, count, database.server.admin_url)
                raw.extend(side_raw)
                handler[side].extend(side_handler)
    raw_median = statistics.median(raw)
    now = statistics.median(handler["now"])
    for commit in (c for c in EARLIER_CODE if c in trees):
        then = statistics.median(handler[commit])
        results.append(
            {
                "name": f"batch ingest (default rules) vs the same bench on {EARLIER_CODE[commit]}, {commit}",
                "detail": f"share of raw idempotent COPY {now / raw_median:.3f} now, {then / raw_median:.3f} then; "
                f"{alternations} alternations of {ROUNDS} paired rounds",
                "rows": count,
                "baseline_rows_per_s": round(then),
                "measured_rows_per_s": round(now),
                "raw_copy_rows_per_s": round(raw_median),
                "handler_rows_per_s_by_round": {
                    "now": [round(x) for x in handler["now"]],
                    "then": [round(x) for x in handler[commit]],
                },
                "ratio": round(now / then, 3),
                "target": ">= 1 (the share now ÷ the share then)",
                "met": now >= then,
            }
        )
    return results


def run(database: BenchDatabase, scale: float) -> list[dict[str, Any]]:
    count = int(50_000 * scale)
    batch_size = 5000
    with_rules = summary(
        "batch ingest through the ingest handler vs raw idempotent COPY",
        count,
        batch_size,
        *paired_rounds(database, count, batch_size, first_round=0),
    )
    with_rules["target"] = ">= 0.25"
    with_rules["met"] = with_rules["ratio"] >= 0.25
    with_rules["python_us_per_row_by_stage"] = python_stage_costs(rows(5000, 5_000_000, 1000, seed=3))
    # The same rules recording only what they read: what storing the model's features (the default rule set's
    # `features.record`, 29 of them) costs.
    database.apply_rules(rules_without_recorded_features(), "bench: the default rules, recording no extra features")
    without_recording = summary(
        "reference: the same ingest with the default rules recording no extra features vs raw idempotent COPY",
        count,
        batch_size,
        *paired_rounds(database, count, batch_size, first_round=3 * ROUNDS),
    )
    # The same again with no rules at all: what validation, idempotency, account locks, running totals,
    # COPY into the indexed table and the response cost without any detection.
    apply_empty_rule_set(database)
    without_rules = summary(
        "reference: the same ingest with an empty rule set (no detection) vs raw idempotent COPY",
        count,
        batch_size,
        *paired_rounds(database, count, batch_size, first_round=ROUNDS),
    )
    # And with the history features: the default rules plus rules on 7- and 30-day windows, merchant counts over
    # days, merchant risk, merchant used before and local time, at 500 merchants.
    database.apply_rules(history_rule_set(), "bench: default rules with history features")
    with_history = summary(
        "reference: the same ingest with the default rules and the history features (500 merchants) vs raw COPY",
        count,
        batch_size,
        *paired_rounds(database, count, batch_size, first_round=2 * ROUNDS, merchants=500),
    )
    earlier = against_earlier_code(database, count)
    return [with_rules, without_recording, without_rules, with_history, *earlier]
