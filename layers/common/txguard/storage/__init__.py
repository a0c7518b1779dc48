"""Storage by table: each module owns its table's SQL and row mappers, and the read and write paths both import
from here, never from each other. Every function runs on the caller's unit of work (a cursor from
db.run_in_transaction): none commits. Writes whose result nobody reads go through `execute_later`, which sends
them with the unit of work's next statement or its COMMIT instead of in a round trip of their own.

| module | tables |
| --- | --- |
| `transactions.py` | `transactions`: stored transactions with their decisions, COPY of decided rows, bounded reads |
| `account_stats.py` | `account_stats` (count and times, the per-account write lock), `account_currency_stats` |
| | (amount totals per currency), `account_daily` (per day and currency), `account_merchants` (when an account |
| | first used each merchant) |
| `merchants.py` | `merchant_daily` (per-day counts), reads of `merchant_label_daily` (labelled frauds per day) |
| `rule_sets.py` | `rule_sets`: versioned rule sets |
| `models.py` | `model_versions`: the model registry (candidate, shadow, champion, retired) |
| `detector_versions.py` | `detector_versions`: what decides (rule set, champion, shadows), a version per change |
| `outbox.py` | `alert_outbox`: FraudDetected events waiting to be published |
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Context
from typing import Any

import psycopg2.extensions

# Totals exceed the default 28 significant digits (a sum of squared amounts in 1/10^8 units): read them exactly.
WIDE = Context(prec=100)


def array_literal(values: Iterable[int | bool | None]) -> str:
    """An array parameter as one literal ("{1,2,NULL}") the server parses at once; a Python list would be sent as
    an ARRAY[...] expression of one constant per element, costly to adapt here and to parse there."""
    return "{" + ",".join("NULL" if v is None else str(v) for v in values) + "}"


def execute_later(cur: psycopg2.extensions.cursor, query: str, vars: Any = None) -> None:
    """Run a write whose result nobody reads: on a unit of work's cursor (db.UnitOfWorkCursor), in front of its next
    statement or with its COMMIT, in the same round trip; on any other cursor, now. Its errors are raised where it
    is sent, before the unit of work commits."""
    later = getattr(cur, "execute_later", None)
    if later is None:
        cur.execute(query, vars)
    else:
        later(query, vars)
