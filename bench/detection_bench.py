"""Per-transaction detection at 200,000 vs 100 previous transactions of the account, and GET /is_fraud
answered from stored decisions vs recomputed over the whole history (the naive approach)."""

from __future__ import annotations

import itertools
import json
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench.harness import BenchDatabase, amount_text, history_rule_set, p50, p99, samples
from txguard import account_tails, service
from txguard.domain import Transaction
from txguard_dev.local.runner import FunctionRunner, Template

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_600_000_000_000
GAP_MS = 600_000  # one transaction every ten minutes on average
HOT, NORMAL = 1, 2
MERCHANTS = 500


def build_history(account_id: int, count: int, first_id: int, seed: int) -> int:
    """Store `count` transactions for the account through the ingest code; returns the last timestamp."""
    rng = random.Random(seed)
    ts = T0
    batch: list[Transaction] = []
    for i in range(count):
        ts += int(rng.expovariate(1 / GAP_MS)) + 1
        amount = Decimal(amount_text(rng, 0.6))
        merchant = f"m{rng.randrange(MERCHANTS)}"
        batch.append(Transaction(first_id + i, account_id, ts, amount, "EUR", merchant))
        if len(batch) == 5000:
            service.store(batch)
            batch = []
    if batch:
        service.store(batch)
    return ts


def run(database: BenchDatabase, scale: float) -> list[dict[str, Any]]:
    # Detection with the history features (30-day windows, merchant risk): what they cost must not grow either.
    database.apply_rules(history_rule_set(), "bench: default rules with history features")
    hot_size = int(200_000 * scale)
    last = {HOT: build_history(HOT, hot_size, 1, seed=1), NORMAL: build_history(NORMAL, 100, 5_000_000, seed=2)}
    ids = itertools.count(9_000_000)
    rng = random.Random(3)

    def one(account_id: int) -> None:
        # Every tail read from the database, as by a function that did not write the account last: a warm
        # function's kept tail (txguard.account_tails) would leave the read out of what this measures.
        account_tails.clear()
        last[account_id] += 60_000
        amount = Decimal(amount_text(rng, 0.6))
        merchant = f"m{rng.randrange(MERCHANTS)}"
        service.store([Transaction(next(ids), account_id, last[account_id], amount, "EUR", merchant)])

    normal = samples(lambda: one(NORMAL), 300, warmup=20)
    hot = samples(lambda: one(HOT), 300, warmup=20)
    detection = {
        "name": "per-transaction detection (ingest of one transaction): 200,000 vs 100 previous",
        "previous_transactions": [hot_size, 100],
        "baseline_p50_ms": round(p50(normal) * 1000, 3),
        "measured_p50_ms": round(p50(hot) * 1000, 3),
        "ratio": round(p50(hot) / p50(normal), 3),
        "target": "<= 1.5",
        "met": p50(hot) / p50(normal) <= 1.5,
    }

    runner = FunctionRunner(Template(ROOT / "template.yaml"), database_url=None)
    event = json.loads((ROOT / "events" / "is_fraud.json").read_text())
    stored_event = {**event, "path": f"/is_fraud/{HOT}", "pathParameters": {"account": str(HOT)}}
    recompute_event = {
        **stored_event,
        "queryStringParameters": {"recompute": "true"},
        "multiValueQueryStringParameters": {"recompute": ["true"]},
    }

    def get(e: dict[str, Any]) -> None:
        result = runner.call("DetectFunction", e)
        if json.loads(result.output)["statusCode"] != 200:
            raise RuntimeError(result.output[:300])

    stored = samples(lambda: get(stored_event), 200, warmup=10)
    recomputed = samples(lambda: get(recompute_event), 5, warmup=1)
    reads = {
        "name": "GET /is_fraud for the 200,000-transaction account: stored decisions vs ?recompute=true",
        "baseline_p50_ms": round(p50(recomputed) * 1000, 1),
        "baseline_p99_ms": round(p99(recomputed) * 1000, 1),
        "measured_p50_ms": round(p50(stored) * 1000, 3),
        "measured_p99_ms": round(p99(stored) * 1000, 3),
        "ratio": round(p50(stored) / p50(recomputed), 5),
        "speedup": round(p50(recomputed) / p50(stored), 1),
    }
    return [detection, reads]
