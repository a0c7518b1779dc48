"""One transaction at a time, in-process: the ingest handler called as the local API emulator calls it
(`FunctionRunner.call` with the API Gateway event of `POST /store_data`), without HTTP, against the naive peer
app's own view (bench/peer_app.py) called through Flask's test client, also without HTTP, on the same database.

Both have served a batch of history for the same 1,000 accounts first; the two sides alternate request by
request so that the machine's load hits both alike; p50 and p99 per round, the ratio of the rounds' p50s.

Then the database round trips each makes for one transaction, counted from the client side (bench/roundtrips.py:
psycopg2's own BEGIN, each statement, COMMIT), with the statements' first words, so the redesign can see which
ones remain.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench import roundtrips
from bench.harness import BenchDatabase, ms, p50, p99
from bench.ingest_bench import T0, batch_events, rows, transaction_json
from bench.peer_app import create_app
from txguard import db
from txguard_dev.local.runner import FunctionRunner, Template

ROOT = Path(__file__).resolve().parent.parent
ACCOUNTS = 1000
MONTH_MS = 30 * 86_400_000
ROUNDS = 5
COUNTED = 20  # single transactions whose round trips are counted


class Sides:
    """The ingest handler and the peer's view, each storing one transaction a call; raises unless stored."""

    def __init__(self, database: BenchDatabase) -> None:
        self.runner = FunctionRunner(Template(ROOT / "template.yaml"), database_url=None)
        self.event = json.loads((ROOT / "events" / "store_data.json").read_text())
        self.peer = create_app(database.admin_url).test_client()

    def load_history(self, data: list[tuple[int, int, int, str]]) -> None:
        for event in batch_events(data, 5000):
            self.check("txguard", self.runner.call("IngestFunction", event).payload["statusCode"])
            items = json.loads(event["body"])["transactions"]
            self.check("peer", self.peer.post("/store_data", json=items).status_code)

    def txguard(self, item: dict[str, Any]) -> None:
        result = self.runner.call("IngestFunction", {**self.event, "body": json.dumps(item)})
        self.check("txguard", result.payload["statusCode"] if not result.failed else result.output)

    def peer_app(self, item: dict[str, Any]) -> None:
        self.check("peer", self.peer.post("/store_data", json=item).status_code)

    @staticmethod
    def check(side: str, status: Any) -> None:
        if status != 201:
            raise RuntimeError(f"{side} did not store the transaction: {str(status)[:300]}")


def latency_rounds(sides: Sides, requests: int) -> dict[str, list[list[float]]]:
    latencies: dict[str, list[list[float]]] = {"txguard": [], "peer": []}
    for n in range(ROUNDS):
        data = rows(requests, 500_000_000 + n * 1_000_000, ACCOUNTS, seed=200 + n, start=T0 + (n + 1) * MONTH_MS)
        times: dict[str, list[float]] = {"txguard": [], "peer": []}
        for i, t in enumerate(data):
            item = transaction_json(t)
            calls = (("txguard", sides.txguard), ("peer", sides.peer_app))
            for name, call in calls if i % 2 == 0 else calls[::-1]:
                started = time.perf_counter()
                call(item)
                times[name].append(time.perf_counter() - started)
        for name in latencies:
            latencies[name].append(times[name])
    return latencies


def round_trips(database: BenchDatabase, transactions: int = COUNTED) -> dict[str, Any]:
    """Round trips per transaction of each side (median over `transactions` single stores, after a warm-up),
    and, in order, what each sent for the last one."""
    counts: dict[str, list[int]] = {"txguard": [], "peer": []}
    seen: dict[str, list[str]] = {}
    db.reset_connection()
    try:
        with roundtrips.counting() as log:
            sides = Sides(database)  # its connections are opened inside: they count
            data = rows(transactions + 3, 700_000_000, ACCOUNTS, seed=300, start=T0 + (ROUNDS + 2) * MONTH_MS)
            for i, t in enumerate(data):
                for name, call in (("txguard", sides.txguard), ("peer", sides.peer_app)):
                    log.clear()
                    call(transaction_json(t))
                    if i >= 3:
                        counts[name].append(len(log))
                        seen[name] = list(log)
    finally:
        db.reset_connection()  # the next users get a connection that does not count
    return {
        name: {"per_transaction": statistics.median(values), "min": min(values), "max": max(values)}
        for name, values in counts.items()
    } | {"statements": seen}


def run(database: BenchDatabase, scale: float) -> list[dict[str, Any]]:
    sides = Sides(database)
    sides.load_history(rows(5000, 1, ACCOUNTS, seed=1, start=T0))
    for t in rows(20, 400_000_000, ACCOUNTS, seed=2, start=T0 + MONTH_MS // 2):  # warm: both have stored singles
        sides.txguard(transaction_json(t))
        sides.peer_app(transaction_json(t))
    requests = max(100, int(300 * scale))
    latencies = latency_rounds(sides, requests)
    p50s = {name: [p50(r) for r in rs] for name, rs in latencies.items()}
    p99s = {name: [p99(r) for r in rs] for name, rs in latencies.items()}
    ratios = [t / p for t, p in zip(p50s["txguard"], p50s["peer"], strict=True)]
    measured_p50 = statistics.median(p50s["txguard"])
    trips = round_trips(database)
    return [
        {
            "name": "one transaction in-process: the ingest handler (as the API emulator calls it, no HTTP) vs the "
            "naive Flask + psycopg2 app's view (Flask test client, no HTTP)",
            "requests_per_round": requests,
            "rounds": ROUNDS,
            "baseline_p50_ms": ms(statistics.median(p50s["peer"])),
            "measured_p50_ms": ms(measured_p50),
            "ratio": round(statistics.median(ratios), 3),
            "ratio_by_round": [round(r, 3) for r in ratios],
            "baseline_p99_ms": ms(statistics.median(p99s["peer"])),
            "measured_p99_ms": ms(statistics.median(p99s["txguard"])),
            "target": "handler p50 <= 1 ms",
            "met": measured_p50 <= 0.001,
        },
        {
            "name": "database round trips for one transaction: the ingest handler vs the naive Flask + psycopg2 app",
            "transactions": COUNTED,
            "baseline_round_trips": trips["peer"]["per_transaction"],
            "measured_round_trips": trips["txguard"]["per_transaction"],
            "ratio": round(trips["txguard"]["per_transaction"] / trips["peer"]["per_transaction"], 3),
            "range": {name: [trips[name]["min"], trips[name]["max"]] for name in ("txguard", "peer")},
            "statements": trips["statements"],
            "target": "as few as the guarantees allow",
        },
    ]
