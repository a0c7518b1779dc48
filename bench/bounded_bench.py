"""Bounded work per request, whatever the history: each row a ratio against a baseline measured in the same run.

- GET /is_fraud?recompute=true on a 200,000-transaction account vs one with exactly one recompute window
  (5,000 transactions): a request re-decides at most one window, so the ratio stays near 1.
- one transaction dated two years back vs one dated now, on the same 200,000-transaction account, and a
  backfill of 1,000 transactions two years back vs 1,000 in order.
- a 5,000-item batch of replays: 20 concurrent copies (each on its own connection) vs the same 20 one after
  another, and one copy while another transaction holds the batch's account locks vs one alone.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
import tracemalloc
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg2

from bench.detection_bench import build_history
from bench.harness import BenchDatabase, history_rule_set, p50, samples, timed
from txguard import db, queries, service
from txguard.detection import DetectorCache
from txguard.domain import Transaction
from txguard.ingest import store_transactions
from txguard_dev.local.runner import FunctionRunner, Template

ROOT = Path(__file__).resolve().parent.parent
HOT, WINDOW_SIZED, REPLAYED = 11, 12, 13
TWO_YEARS_MS = 730 * 86_400_000


def run(database: BenchDatabase, scale: float) -> list[dict[str, Any]]:
    # Bounded with the history features too: 7- and 30-day windows, merchant counts over days and merchant risk.
    database.apply_rules(history_rule_set(), "bench: default rules with history features")
    hot_size = int(200_000 * scale)
    last = build_history(HOT, hot_size, 1, seed=1)
    build_history(WINDOW_SIZED, queries.RECOMPUTE_WINDOW, 10_000_000, seed=2)
    database.execute("ANALYZE")  # as autovacuum keeps live tables analysed
    return [
        _recompute(hot_size),
        *_back_dated(hot_size, last),
        *_replays(database),
    ]


def _recompute(hot_size: int) -> dict[str, Any]:
    runner = FunctionRunner(Template(ROOT / "template.yaml"), database_url=None)
    event = json.loads((ROOT / "events" / "is_fraud.json").read_text())

    def get(account_id: int) -> None:
        e = {
            **event,
            "path": f"/is_fraud/{account_id}",
            "pathParameters": {"account": str(account_id)},
            "queryStringParameters": {"recompute": "true"},
            "multiValueQueryStringParameters": {"recompute": ["true"]},
        }
        result = runner.call("DetectFunction", e)
        if json.loads(result.output)["statusCode"] != 200:
            raise RuntimeError(result.output[:300])

    small = samples(lambda: get(WINDOW_SIZED), 15, warmup=2)
    large = samples(lambda: get(HOT), 15, warmup=2)
    row = _row(
        f"GET /is_fraud?recompute=true: {hot_size:,}-transaction account vs one of "
        f"{queries.RECOMPUTE_WINDOW:,} (one recompute window)",
        small,
        large,
        at_most=2,
    )
    # Memory: the peak of Python allocations during one request, measured apart (tracing slows the timing).
    row["python_peak_mb"] = {"baseline": _peak_mb(lambda: get(WINDOW_SIZED)), "measured": _peak_mb(lambda: get(HOT))}
    return row


def _peak_mb(work: Callable[[], object]) -> float:
    tracemalloc.start()
    try:
        work()
        return round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
    finally:
        tracemalloc.stop()


def _row(name: str, baseline: list[float], measured: list[float], at_most: float) -> dict[str, Any]:
    """A benchmark row: p50 of `measured` against p50 of `baseline` (seconds), with its target."""
    ratio = p50(measured) / p50(baseline)
    return {
        "name": name,
        "baseline_p50_ms": round(p50(baseline) * 1000, 3),
        "measured_p50_ms": round(p50(measured) * 1000, 3),
        "ratio": round(ratio, 3),
        "target": f"<= {at_most}",
        "met": ratio <= at_most,
    }


def _back_dated(hot_size: int, last: int) -> list[dict[str, Any]]:
    ids = itertools.count(50_000_000)
    rng = random.Random(4)
    now = [last]
    past = [last - TWO_YEARS_MS]

    def batch(clock: list[int], size: int) -> list[Transaction]:
        out = []
        for _ in range(size):
            clock[0] += 1_000
            amount = Decimal(f"{rng.lognormvariate(3.5, 0.6):.2f}")
            out.append(Transaction(next(ids), HOT, clock[0], amount, "EUR", f"m{rng.randrange(500)}"))
        return out

    # Interleaved, so that both sides see the same machine load.
    in_order, back_dated = [], []
    for _ in range(60):
        in_order.append(timed(lambda: service.store(batch(now, 1))))
        back_dated.append(timed(lambda: service.store(batch(past, 1))))
    in_order_1000, back_dated_1000 = [], []
    for _ in range(5):
        in_order_1000.append(timed(lambda: service.store(batch(now, 1000))))
        back_dated_1000.append(timed(lambda: service.store(batch(past, 1000))))
    return [
        _row(
            f"ingest of one transaction two years back vs one now, {hot_size:,}-transaction account",
            in_order,
            back_dated,
            at_most=2,
        ),
        _row(
            f"backfill of 1,000 transactions two years back vs 1,000 now, {hot_size:,}-transaction account",
            in_order_1000,
            back_dated_1000,
            at_most=2,
        ),
    ]


def _replays(database: BenchDatabase) -> list[dict[str, Any]]:
    rng = random.Random(5)
    batch = [
        Transaction(
            70_000_000 + i,
            100 + i % 500,
            1_700_000_000_000 + i * 1000,
            Decimal(f"{rng.lognormvariate(3.5, 0.6):.2f}"),
            "EUR",
            f"m-{i % 800}",
        )
        for i in range(5000)
    ]
    service.store(batch)

    def replay() -> None:
        holder = db.ConnectionHolder()
        try:
            results = db.run_in_transaction(
                lambda cur: store_transactions(cur, batch, DetectorCache().current(cur, 0)), holder=holder
            )
        finally:
            holder.reset()
        if any(r.status != "duplicate" for r in results):
            raise RuntimeError("a replay stored something")

    def concurrent(copies: int) -> float:
        errors: list[BaseException] = []

        def one() -> None:
            try:
                replay()
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=one) for _ in range(copies)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise RuntimeError(f"{len(errors)} of {copies} replays failed: {errors[0]!r}")
        return time.perf_counter() - started

    serial, parallel = [], []
    for _ in range(3):
        serial.append(timed(lambda: [replay() for _ in range(20)]))
        parallel.append(concurrent(20))

    # Interleaved: each replay alone, then one while another transaction holds the batch's account locks.
    alone, behind = [], []
    blocker = psycopg2.connect(database.admin_url)
    try:
        for _ in range(15):
            alone.append(timed(replay))
            with blocker.cursor() as cur:
                cur.execute("SELECT * FROM account_stats WHERE account_id BETWEEN 100 AND 599 FOR UPDATE")
            behind.append(timed(replay))
            blocker.rollback()
    finally:
        blocker.close()
    return [
        _row(
            "20 concurrent copies of a 5,000-item batch of replays vs the same 20 one after another (wall)",
            serial,
            parallel,
            at_most=1.5,
        ),
        _row("a 5,000-item batch of replays while a writer holds its accounts' locks vs alone", alone, behind, 1.5),
    ]
