"""Run ids and the transaction ids derived from them: unique across runs with no coordination.

A run id is the run's start time in milliseconds since 2024-01-01T00:00:00Z (40 bits, until 2058);
a transaction id is `run_id << 23 | index` (23 bits, up to 8,388,608 transactions per run), a positive
signed 64-bit integer. Two runs started in different milliseconds can never share an id, and the
transactions of one run are the id range `[run_id << 23, (run_id + 1) << 23)`.
"""

from __future__ import annotations

import threading
import time

INDEX_BITS = 23
MAX_TRANSACTIONS_PER_RUN = 1 << INDEX_BITS
RUN_ID_EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
MAX_RUN_ID = (1 << (63 - INDEX_BITS)) - 1

_lock = threading.Lock()
_last_run_id = 0


def new_run_id(now_ms: int | None = None) -> int:
    """A run id from the clock, strictly increasing within this process (two runs in one ms get two ids)."""
    global _last_run_id
    clock = int(time.time() * 1000) if now_ms is None else now_ms
    with _lock:
        run_id = max(clock - RUN_ID_EPOCH_MS, _last_run_id + 1)
        _last_run_id = run_id
    check_run_id(run_id)
    return run_id


def check_run_id(run_id: int) -> None:
    if not 0 < run_id <= MAX_RUN_ID:
        raise ValueError(f"run id must be from 1 to {MAX_RUN_ID}")


def transaction_id(run_id: int, index: int) -> int:
    return (run_id << INDEX_BITS) | index


def run_of(transaction_id: int) -> int:
    return transaction_id >> INDEX_BITS


def id_range(run_id: int) -> tuple[int, int]:
    """The run's transaction ids, as a half-open range."""
    return run_id << INDEX_BITS, (run_id + 1) << INDEX_BITS
