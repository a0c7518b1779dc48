"""The replay's rate: a Handbook-shaped labelled file (`txguard replay --preset handbook`) sent directly through
the ingest code with its labels released 7 days later in event time, against raw idempotent COPY of the same rows
in the same run."""

from __future__ import annotations

import argparse
import gzip
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.harness import BenchDatabase
from bench.ingest_bench import raw_copy_rate
from txguard_dev.commands import replay


def handbook_file(path: Path, transactions: int, seed: int = 1) -> list[tuple[int, int, int, str]]:
    """A file in the Handbook's layout: 5,000 customers, 10,000 terminals, about 1% fraud, a few per second."""
    rng = random.Random(seed)
    start = datetime(2018, 4, 1, tzinfo=UTC)
    rows = []
    with gzip.open(path, "wt") as file:
        file.write("TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD,TX_FRAUD_SCENARIO\n")
        seconds = 0
        for tid in range(transactions):
            seconds += rng.randint(0, 6)
            when = start + timedelta(seconds=seconds)
            customer, terminal = rng.randrange(5000), rng.randrange(10_000)
            amount = f"{rng.uniform(1, 200):.2f}"
            scenario = rng.choice((1, 2, 3)) if rng.random() < 0.01 else 0
            file.write(
                f"{tid},{when:%Y-%m-%d %H:%M:%S},{customer},{terminal},{amount},{int(scenario > 0)},{scenario}\n"
            )
            rows.append((tid, customer + 1, int(when.timestamp() * 1000), amount))
    return rows


def run(database: BenchDatabase, scale: float) -> dict[str, Any]:
    count = max(1000, int(50_000 * scale))
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "handbook-shaped.csv.gz"
        rows = handbook_file(path, count)
        baseline = raw_copy_rate(database, rows)
        # How `txguard replay --preset handbook` reads each field (the preset over every field's own column).
        mapping = replay.cells(argparse.Namespace(preset="handbook", map=[]))
        read_started = time.perf_counter()
        replayed = replay.read_replay(path, mapping, "chargeback", 7 * replay.DAY_MS, False, None, None)
        read_s = time.perf_counter() - read_started

        class _Quiet:
            def update(self, _n: int) -> None:
                pass

        started = time.perf_counter()
        totals = replay.replay(replayed, replay.Destination(None, None), 5000, _Quiet(), int(time.time() * 1000))
        elapsed = time.perf_counter() - started
    assert totals.stored == count, totals
    rate = count / elapsed
    return {
        "name": "txguard replay --preset handbook, direct (ingest code, decisions, labels 7 days later) vs raw "
        "idempotent COPY",
        "transactions": count,
        "labels": totals.labels_stored,
        "batch_size": 5000,
        "read_and_check_s": round(read_s, 2),
        "wall_s": round(elapsed, 2),
        "baseline_rows_per_s": round(baseline),
        "measured_rows_per_s": round(rate),
        "ratio": round(rate / baseline, 3),
    }
