"""Lists: `txguard lists import` of 1,000,000 items into a new list (NEW_LIST_ROUNDS times, a new list each),
then of 100,000 into the last of them (INTO_ROUNDS times, each round another file: half new values, half listed
ones with another note), CSV file to committed version through the command's own code, both held to issue #18's
50,000 items/s by the median of their rounds; and the cost of storage.lists.memberships for a batch of 1,000
transactions against a list of 1,000 items and one of 1,000,000 in the same run.

Each round reports its rate and whether a checkpoint began between the list's previous write and the round's end
(pg_stat_bgwriter's counts of checkpoints, the last checkpoint's redo point): after a checkpoint, the first change
of each page writes the whole page to the WAL, and an import into a stored list changes items on pages all over
the list. No checkpoint is forced, before or during a round: on a shared server they come when they come (every
DROP DATABASE requests one), and the minimum, with its round's checkpoints, says what one cost.

A membership costs one primary-key probe per value asked, so the two batches cost about the same: a B-tree of a
million entries is one or two levels deeper than one of a thousand, and its pages are less often in the CPU's
caches, nothing grows with the list's size beyond that (ratio target <= 2); the plan (EXPLAIN) holds probes of
list_items' primary key and no sequential scan.

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
IMPORT_TARGET = 50_000  # items/s (issue #18), held by the median of a kind's rounds
NEW_LIST_ROUNDS = 3  # imports of ITEMS into a new list: about 15 s each
INTO_ROUNDS = 5  # imports of ITEMS / 10 into the last of those lists: about 2 s each


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


def _write_more_csv(path: Path, count: int, extra: int, round_number: int) -> None:
    """Round `round_number`'s file of `extra` items for the list of `count`: every other row a value of the list
    with a note it does not have (a change; each round changes another stretch of the list), the others values
    not in it (adds)."""
    with path.open("w", encoding="utf-8") as file:
        file.write("value,note\n")
        for i in range(extra):
            if i % 2:
                listed = (round_number * 2 * extra + i * 2) % count
                file.write(f"card_{listed:08d},seen again in round {round_number}\n")
            else:
                file.write(f"card_y{round_number:03d}{i:08d},\n")


class CheckpointWatch:
    """Whether a checkpoint began between two marks: pg_stat_bgwriter's counts of checkpoints begun (timed and
    requested) and the redo point of the last one completed, read on an administrator's connection (the
    service's role may not read pg_control_checkpoint)."""

    def __init__(self, database: BenchDatabase) -> None:
        self._conn = psycopg2.connect(database.admin_url)
        self._conn.autocommit = True  # each read its own snapshot of the statistics

    def mark(self) -> tuple[int, str]:
        with self._conn.cursor() as cur:
            cur.execute(
                """SELECT (SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter),
                          (SELECT redo_lsn::text FROM pg_control_checkpoint())"""
            )
            count, redo = cur.fetchone()
        return int(count), str(redo)

    @staticmethod
    def began(since: tuple[int, str], until: tuple[int, str]) -> int:
        """How many checkpoints began between the marks (at least 1 when only the redo point moved)."""
        return max(until[0] - since[0], int(until[1] != since[1]))

    def close(self) -> None:
        self._conn.close()


def _rounds_result(rates: list[float], checkpoints: list[int]) -> dict[str, Any]:
    """The figures of a kind's rounds: the median (measured, held to the target), the minimum, each round's
    rate and checkpoints, and a line saying which rounds a checkpoint fell in."""
    median, slowest = statistics.median(rates), min(rates)
    shown = ", ".join(
        f"{rate:,.0f}{' (checkpoint)' if began else ''}" for rate, began in zip(rates, checkpoints, strict=True)
    )
    detail = f"rounds {shown}; median {median:,.0f}, minimum {slowest:,.0f} items/s"
    if any(checkpoints):
        clean = [rate for rate, began in zip(rates, checkpoints, strict=True) if not began]
        slowest_had_one = checkpoints[rates.index(slowest)] > 0
        detail += (
            f"; {sum(1 for c in checkpoints if c)} of {len(rates)} rounds with a checkpoint"
            + (", the slowest one among them" if slowest_had_one else "")
            + (f"; median without one {statistics.median(clean):,.0f}" if clean else "")
        )
    else:
        detail += "; no checkpoint in any round"
    return {
        "measured_rows_per_s": round(median),
        "min_rows_per_s": round(slowest),
        "rounds_rows_per_s": [round(rate) for rate in rates],
        "rounds_checkpoints": checkpoints,
        "detail": detail,
        "met": median >= IMPORT_TARGET,
    }


def _say(kind: str, number: int, rate: float, checkpoints: int, window: str) -> None:
    began = f"; {checkpoints} checkpoint(s) began {window}" if checkpoints else ""
    print(f"lists import, {kind}, round {number}: {rate:,.0f} items/s{began}", flush=True)


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
    extra = count // 10
    db.reset_connection()
    # The last new list is the one the later rounds import into, right after it is filled, as a list that was
    # just imported would be.
    new_lists = [f"new_cards_{n}" for n in range(1, NEW_LIST_ROUNDS)] + ["big_cards"]
    for name in ("small_cards", *new_lists):
        assert txguard(["lists", "create", name, "--kind", "card", "--actor", "bench"]) == 0
    watch = CheckpointWatch(database)
    try:
        with tempfile.TemporaryDirectory() as directory:
            small_file, big_file = Path(directory) / "small.csv", Path(directory) / "big.csv"
            _write_csv(small_file, SMALL)
            _write_csv(big_file, count)
            assert txguard(["lists", "import", "small_cards", str(small_file), "--no-progress"]) == 0
            bare = _bare_copy_rate(database, big_file, count)
            new_rates: list[float] = []
            new_checkpoints: list[int] = []
            last_write = watch.mark()
            for number, name in enumerate(new_lists, 1):
                since = watch.mark()
                new_rates.append(_import_rate(big_file, name, count))
                last_write = watch.mark()
                new_checkpoints.append(watch.began(since, last_write))
                _say("into a new list", number, new_rates[-1], new_checkpoints[-1], "during the round")
            into_rates: list[float] = []
            into_checkpoints: list[int] = []
            for number in range(INTO_ROUNDS):
                more = Path(directory) / f"more_{number}.csv"
                _write_more_csv(more, count, extra, number)
                into_rates.append(_import_rate(more, "big_cards", extra))
                # From the list's previous write on: a checkpoint begun since then makes this round's first
                # change of each page write the whole page.
                since, last_write = last_write, watch.mark()
                into_checkpoints.append(watch.began(since, last_write))
                _say(
                    "into the stored list",
                    number + 1,
                    into_rates[-1],
                    into_checkpoints[-1],
                    "since the list's previous write",
                )
    finally:
        watch.close()
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
            "name": f"txguard lists import of {count:,} items into a new list (CSV to committed version: validation, "
            "COPY and set-based merge by chunk, each item audited), median of "
            f"{NEW_LIST_ROUNDS} rounds vs a bare COPY of the file into a table without indexes",
            "baseline_rows_per_s": round(bare),
            "ratio": round(statistics.median(new_rates) / bare, 3),
            "target": f"median >= {IMPORT_TARGET:,} items/s",
            **_rounds_result(new_rates, new_checkpoints),
        },
        {
            "name": f"txguard lists import of {extra:,} items into that list of {count:,} and more (each row looked "
            f"up: half new, half listed with another note; the list grows by {extra // 2:,} a round), median of "
            f"{INTO_ROUNDS} rounds vs the same bare COPY",
            "baseline_rows_per_s": round(bare),
            "ratio": round(statistics.median(into_rates) / bare, 3),
            "target": f"median >= {IMPORT_TARGET:,} items/s",
            **_rounds_result(into_rates, into_checkpoints),
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
