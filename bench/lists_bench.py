"""Lists: `txguard lists import` of 1,000,000 items into a new list, then of 100,000 into that list (CSV file to
committed version, through the command's own code; both held to issue #18's 50,000 items/s), and the cost of
storage.lists.memberships for a batch of 1,000 transactions against a list of 1,000 items and one of 1,000,000 in
the same run. A membership costs one primary-key probe per value asked, so the two batches cost about the same: a
B-tree of a million entries is one or two levels deeper than one of a thousand, and its pages are less often in
the CPU's caches, nothing grows with the list's size beyond that (ratio target <= 2); the
plan (EXPLAIN) holds probes of list_items' primary key and no sequential scan.

Baselines: the import against a bare COPY of the same file into a table without indexes (what the database does
at the least); the large list's lookups against the small list's."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg2

from bench.harness import BenchDatabase, p50, samples
from txguard import db
from txguard.storage import lists
from txguard_dev.cli import main as txguard

ITEMS = 1_000_000
SMALL = 1_000
BATCH = 1_000  # transactions in one ingest batch, each asking for its card
ROUNDS = 90
IMPORT_TARGET = 50_000  # items/s (issue #18)


def _write_csv(path: Path, count: int) -> None:
    expiry = "2099-01-01T00:00:00Z"
    with path.open("w", encoding="utf-8") as file:
        file.write("value,expires_at,note\n")
        for i in range(count):
            # A tenth expire, a twentieth carry a note: the file exercises every column.
            file.write(f"card_{i:08d},{expiry if i % 10 == 0 else ''},{'chargeback' if i % 20 == 0 else ''}\n")


def _bare_copy_rate(database: BenchDatabase, path: Path, count: int) -> float:
    conn = psycopg2.connect(database.admin_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("CREATE TEMPORARY TABLE bare (value text, expires_at text, note text)")
            started = time.perf_counter()
            with path.open(encoding="utf-8") as file:
                cur.copy_expert("COPY bare FROM STDIN WITH (FORMAT csv, HEADER)", file)
            elapsed = time.perf_counter() - started
            conn.rollback()
    finally:
        conn.close()
    return count / elapsed


def _import_rate(path: Path, name: str, count: int) -> float:
    started = time.perf_counter()
    code = txguard(["lists", "import", name, str(path), "--no-progress", "--actor", "bench"])
    elapsed = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"txguard lists import exited {code}")
    return count / elapsed


def _asked(prefix_count: int) -> list[str]:
    # Half the batch's cards are in the list (spread over it), half are not.
    step = max(prefix_count // (BATCH // 2), 1)
    present = [f"card_{i * step:08d}" for i in range(BATCH // 2)]
    absent = [f"card_x{i:07d}" for i in range(BATCH - len(present))]
    return present + absent


def _plan(cur: Any, name: str, asked: list[str]) -> str:
    cur.execute("EXPLAIN (FORMAT JSON) " + lists.MEMBERSHIPS_SQL, lists.membership_arguments({name: asked}))
    return json.dumps(cur.fetchone()[0])


def run(database: BenchDatabase, scale: float) -> list[dict[str, Any]]:
    count = max(int(ITEMS * scale), 10 * SMALL)
    db.reset_connection()
    for name in ("small_cards", "big_cards"):
        assert txguard(["lists", "create", name, "--kind", "card", "--actor", "bench"]) == 0
    with tempfile.TemporaryDirectory() as directory:
        small_file, big_file = Path(directory) / "small.csv", Path(directory) / "big.csv"
        _write_csv(small_file, SMALL)
        _write_csv(big_file, count)
        assert txguard(["lists", "import", "small_cards", str(small_file), "--no-progress"]) == 0
        bare = _bare_copy_rate(database, big_file, count)
        imported = _import_rate(big_file, "big_cards", count)
        # Into the full list: every row looked up (half of them listed already, with another note: changed).
        more = Path(directory) / "more.csv"
        extra = count // 10
        with more.open("w", encoding="utf-8") as file:
            file.write("value,note\n")
            for i in range(extra):
                file.write(f"card_{i * 2:08d},seen again\n" if i % 2 else f"card_y{i:08d},\n")
        into_full = _import_rate(more, "big_cards", extra)
    database.execute("ANALYZE list_items")

    conn = psycopg2.connect(os.environ["DATABASE_URL"])  # the service's role, as ingest asks
    try:
        small_asked, big_asked = _asked(SMALL), _asked(count)
        with conn, conn.cursor() as cur:
            found = (
                len(lists.memberships(cur, {"small_cards": small_asked})["small_cards"]),
                len(lists.memberships(cur, {"big_cards": big_asked})["big_cards"]),
            )
            plans = [_plan(cur, "small_cards", small_asked), _plan(cur, "big_cards", big_asked)]
            small_ms, big_ms = [], []
            for _ in range(3):  # alternated, so that both see the same load on a shared machine
                small_ms += samples(lambda: lists.memberships(cur, {"small_cards": small_asked}), ROUNDS // 3)
                big_ms += samples(lambda: lists.memberships(cur, {"big_cards": big_asked}), ROUNDS // 3)
    finally:
        conn.close()
    index_only = all("list_items_pkey" in plan and '"Seq Scan"' not in plan for plan in plans)
    ratio = p50(big_ms) / p50(small_ms)
    return [
        {
            "name": f"txguard lists import of {count:,} items (CSV to committed version: validation, COPY and "
            "set-based merge by chunk, each item audited) vs a bare COPY of the file into a table without indexes",
            "baseline_rows_per_s": round(bare),
            "measured_rows_per_s": round(imported),
            "ratio": round(imported / bare, 3),
            "target": f">= {IMPORT_TARGET:,} items/s",
            "met": imported >= IMPORT_TARGET,
        },
        {
            "name": f"txguard lists import of {extra:,} items into that list of {count:,} (each row looked up: half "
            "new, half listed with another note) vs the same bare COPY",
            "baseline_rows_per_s": round(bare),
            "measured_rows_per_s": round(into_full),
            "ratio": round(into_full / bare, 3),
            "target": f">= {IMPORT_TARGET:,} items/s",
            "met": into_full >= IMPORT_TARGET,
        },
        {
            "name": f"storage.lists.memberships of a {BATCH:,}-transaction batch (half of its cards listed): a list "
            f"of {count:,} items vs one of {SMALL:,}",
            "baseline_p50_ms": round(p50(small_ms) * 1000, 3),
            "measured_p50_ms": round(p50(big_ms) * 1000, 3),
            "ratio": round(ratio, 3),
            "per_transaction_us": round(p50(big_ms) * 1e6 / BATCH, 2),
            "found": list(found),
            "plan_is_primary_key_probes": index_only,
            "spread_ms": [round(statistics.quantiles(big_ms, n=10)[0] * 1000, 3), round(max(big_ms) * 1000, 3)],
            "target": "ratio <= 2 (cost per transaction independent of the list's size), primary-key probes only",
            "met": ratio <= 2 and index_only and found == (BATCH // 2, BATCH // 2),
        },
    ]
