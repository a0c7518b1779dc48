"""What PostgreSQL spends per transaction: batch ingest through the ingest handler vs raw idempotent COPY.

pg_stat_statements is not loaded on the servers these benchmarks run on (and is not ours to configure), so the
measure is its honest equivalent on one machine: the CPU time of the server processes that did the work, read
from /proc/<pid>/schedstat (time on CPU in ns; /proc/<pid>/stat's utime + stime, in clock ticks, where
schedstat is missing) before and after. For the handler, the backends its connections hold (application_name
`txguard`, the layer's); for the baseline, the backend of the connection running bench/ingest_bench.py's raw
idempotent COPY (COPY into a temporary table, INSERT ... ON CONFLICT DO NOTHING into a bare indexed table).
Background processes (WAL writer, checkpointer, autovacuum) are in neither; time waiting for the disk is
not CPU and is in neither.

Paired rounds, as the ingest benchmark's: raw COPY of the same count of rows, then the handler, in batches of
5,000 with the default rules, new ids for the same 1,000 accounts a month after the previous round's. The
ratio is the median of the rounds' ratios of backend CPU per transaction. Reported beside it: this process's
CPU per transaction while the handler ran (Python and libpq: everything the function does outside the database).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import psycopg2

from bench.harness import BenchDatabase
from bench.ingest_bench import T0, batch_events, raw_copy_load, rows
from txguard_dev.local.runner import FunctionRunner, Template

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 3
DAY_MS = 86_400_000
CLOCK_TICK_NS = 1e9 / os.sysconf("SC_CLK_TCK")


def cpu_ns(pid: int) -> float:
    """Time process `pid` has spent on a CPU so far, in ns."""
    try:
        return float(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except FileNotFoundError:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * CLOCK_TICK_NS  # utime, stime (fields 14 and 15)


def txguard_backends(monitor: Any) -> list[int]:
    with monitor.cursor() as cur:
        cur.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'txguard' "
            "AND backend_type = 'client backend'"
        )
        return [pid for (pid,) in cur.fetchall()]


def copy_cpu_us(database: BenchDatabase, data: list[tuple[int, int, int, str]]) -> tuple[float, float]:
    """Backend CPU µs per row of a raw idempotent COPY of `data`, and its rows/s."""
    conn = psycopg2.connect(database.admin_url)
    try:
        load = raw_copy_load(conn, data)
        pid = conn.get_backend_pid()
        before, started = cpu_ns(pid), time.perf_counter()
        load()
        wall, spent = time.perf_counter() - started, cpu_ns(pid) - before
    finally:
        conn.close()
    return spent / 1000 / len(data), len(data) / wall


def handler_cpu_us(
    database: BenchDatabase, data: list[tuple[int, int, int, str]], monitor: Any
) -> tuple[float, float, float]:
    """Backend CPU µs per transaction of batch ingest of `data` through the handler, this process's CPU µs per
    transaction meanwhile, and its transactions/s."""
    runner = FunctionRunner(Template(ROOT / "template.yaml"), database_url=None)
    events = batch_events(data, 5000)
    first = json.loads(events[0]["body"])["transactions"][0]
    runner.call("IngestFunction", {**events[0], "body": json.dumps({"transactions": [first]})})  # connected, warm
    pids = txguard_backends(monitor)
    if not pids:
        raise RuntimeError("no backend with application_name 'txguard' on the bench database")
    before = {pid: cpu_ns(pid) for pid in pids}
    process_before, started = time.process_time(), time.perf_counter()
    for event in events:
        result = runner.call("IngestFunction", event)
        if result.failed or json.loads(result.output)["statusCode"] != 201:
            raise RuntimeError(f"ingest failed: {result.output[:300]}")
    wall, process = time.perf_counter() - started, time.process_time() - process_before
    if set(txguard_backends(monitor)) != set(pids):
        raise RuntimeError("the handler's connection changed during the round: its backend CPU would be lost")
    spent = sum(cpu_ns(pid) - before[pid] for pid in pids)
    return spent / 1000 / len(data), process * 1e6 / len(data), len(data) / wall


def run(database: BenchDatabase, scale: float) -> dict[str, Any]:
    count = max(5000, int(20_000 * scale))
    monitor = psycopg2.connect(database.admin_url)
    monitor.autocommit = True
    copy_us, copy_rates, handler_us, process_us, handler_rates = [], [], [], [], []
    try:
        for n in range(ROUNDS):
            us, rate = copy_cpu_us(database, rows(count, 1, 1000, seed=1))
            copy_us.append(us)
            copy_rates.append(rate)
            data = rows(count, 10_000_000 * (n + 1), 1000, seed=n + 2, start=T0 + 30 * DAY_MS * n)
            us, process, rate = handler_cpu_us(database, data, monitor)
            handler_us.append(us)
            process_us.append(process)
            handler_rates.append(rate)
    finally:
        monitor.close()
    ratios = [h / c for h, c in zip(handler_us, copy_us, strict=True)]
    ratio = statistics.median(ratios)
    return {
        "name": "database time per transaction (backend CPU): batch ingest through the ingest handler (default "
        "rules, batches of 5,000) vs raw idempotent COPY",
        "rows": count,
        "rounds": ROUNDS,
        "baseline_us_per_transaction": round(statistics.median(copy_us), 2),
        "measured_us_per_transaction": round(statistics.median(handler_us), 2),
        "ratio": round(ratio, 3),
        "ratio_by_round": [round(r, 3) for r in ratios],
        "handler_process_cpu_us_per_transaction": round(statistics.median(process_us), 2),
        "copy_rows_per_s": round(statistics.median(copy_rates)),
        "handler_rows_per_s": round(statistics.median(handler_rates)),
        "target": "<= 1.5",
        "met": ratio <= 1.5,
    }
