"""`console_hourly`, `console_rule_daily` and `console_rollup_state`: the console's rollups of `transactions`.

Refreshed on demand from the last refreshed point, never at ingest: a refresh adds the rows stored since
`refreshed_to` (read through the index on `stored_at`) and moves the mark. Rows are immutable once stored,
so adding them once is the whole story. The mark only moves up to the start of the oldest transaction still
open in this database: a row's `stored_at` (clock_timestamp() at insert) is never earlier than its database
transaction's start, so every row stored before the mark has committed and none is counted twice or missed.
Labels follow the same mark (their received_at): each transaction that got a label, or was stored with labels,
since the mark has what it counted before taken off and what it counts now added. Only one refresh runs at a
time (a try-lock; the others read the rollups as they are). A refresh works in steps with a time budget each,
so a page view never waits long for a store far behind: the pages say how far the rollups have got.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import psycopg2.errors
import psycopg2.extensions

# Any fixed number: concurrent refreshes of one database take turns on it.
_REFRESH_LOCK_KEY = 0x7478_6775_6172_6414

# Upper bounds of amount bands 1..9 (band 0: zero; band 9: 5000 and above), in the transaction's currency.
AMOUNT_BANDS: tuple[Decimal, ...] = tuple(
    Decimal(x) for x in ("0.01", "10", "25", "50", "100", "250", "500", "1000", "5000")
)

_CUTOFF = """
    SELECT least(clock_timestamp(), min(xact_start))
    FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL
"""

_ADD_HOURLY = """
    INSERT INTO console_hourly AS h (hour, currency, amount_band, transactions, amount, flagged)
    SELECT date_trunc('hour', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', currency,
           width_bucket(amount, %(bands)s::numeric[]), count(*), sum(amount), count(*) FILTER (WHERE fraud)
    FROM transactions
    WHERE stored_at >= %(since)s AND stored_at < %(until)s
    GROUP BY 1, 2, 3
    ON CONFLICT (hour, currency, amount_band) DO UPDATE SET
        transactions = h.transactions + excluded.transactions,
        amount = h.amount + excluded.amount,
        flagged = h.flagged + excluded.flagged
"""

_ADD_RULES = """
    INSERT INTO console_rule_daily AS d (day, rule_id, mode, hits)
    SELECT txguard_day(t.ts), r->>'rule_id', r->>'mode', count(*)
    FROM transactions t, jsonb_array_elements(t.reasons) r
    WHERE t.stored_at >= %(since)s AND t.stored_at < %(until)s AND t.reasons <> '[]'::jsonb
    GROUP BY 1, 2, 3
    ON CONFLICT (day, rule_id, mode) DO UPDATE SET hits = d.hits + excluded.hits
"""


# What each transaction touched by the refresh (a label received, or stored with labels, in [since, until))
# counted before (labels received and the transaction stored before `since`) and counts now (before `until`).
_LABEL_CHANGES_TABLE = """
    CREATE TEMP TABLE IF NOT EXISTS console_label_changes (
        sign integer, labelled_fraud boolean, ts timestamptz, amount numeric, flagged boolean, reasons jsonb
    ) ON COMMIT DELETE ROWS
"""

# Every lookup of a transaction's labels goes through labels_transaction, one transaction at a time (a LIMIT 1
# subquery): a join here let the planner sort the whole labels table for an empty step, 7 s on 1.17 M labels,
# longer than a step's budget, so the refresh never advanced.
_LABEL_CHANGES = """
    INSERT INTO console_label_changes (sign, labelled_fraud, ts, amount, flagged, reasons)
    WITH dirty AS MATERIALIZED (
        SELECT transaction_id FROM labels WHERE received_at >= %(since)s AND received_at < %(until)s
        UNION
        SELECT t.transaction_id FROM transactions t
        WHERE t.stored_at >= %(since)s AND t.stored_at < %(until)s
          AND (SELECT true FROM labels l
               WHERE l.transaction_id = t.transaction_id AND l.received_at < %(until)s LIMIT 1)
    ),
    before AS (
        SELECT d.transaction_id, b.fraud
        FROM dirty d
        CROSS JOIN LATERAL (
            SELECT l.fraud FROM labels l
            WHERE l.transaction_id = d.transaction_id AND l.received_at < %(since)s
            ORDER BY l.labelled_at DESC, l.label_id DESC LIMIT 1
        ) b
    ),
    after AS (
        SELECT d.transaction_id, a.fraud
        FROM dirty d
        CROSS JOIN LATERAL (
            SELECT l.fraud FROM labels l
            WHERE l.transaction_id = d.transaction_id AND l.received_at < %(until)s
            ORDER BY l.labelled_at DESC, l.label_id DESC LIMIT 1
        ) a
    )
    SELECT -1 AS sign, b.fraud AS labelled_fraud, t.ts, t.amount, t.fraud AS flagged, t.reasons
    FROM before b JOIN transactions t ON t.transaction_id = b.transaction_id WHERE t.stored_at < %(since)s
    UNION ALL
    SELECT 1, a.fraud, t.ts, t.amount, t.fraud, t.reasons
    FROM after a JOIN transactions t ON t.transaction_id = a.transaction_id WHERE t.stored_at < %(until)s
"""

_ADD_LABELS = """
    INSERT INTO console_label_hourly AS h (hour, amount_band, flagged, labelled, fraud)
    SELECT date_trunc('hour', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', width_bucket(amount, %(bands)s::numeric[]),
           flagged, sum(sign), sum(sign * labelled_fraud::int)
    FROM console_label_changes
    GROUP BY 1, 2, 3
    ON CONFLICT (hour, amount_band, flagged) DO UPDATE SET
        labelled = h.labelled + excluded.labelled, fraud = h.fraud + excluded.fraud
"""

_ADD_RULE_LABELS = """
    INSERT INTO console_rule_label_daily AS d (day, rule_id, labelled, fraud)
    SELECT txguard_day(c.ts), r.rule_id, sum(c.sign), sum(c.sign * c.labelled_fraud::int)
    FROM console_label_changes c,
         LATERAL (SELECT DISTINCT x->>'rule_id' AS rule_id FROM jsonb_array_elements(c.reasons) x) r
    WHERE c.reasons <> '[]'::jsonb
    GROUP BY 1, 2
    ON CONFLICT (day, rule_id) DO UPDATE SET labelled = d.labelled + excluded.labelled, fraud = d.fraud + excluded.fraud
"""


STEP_BUDGET_MS = 400  # one refresh step's statement timeout
REFRESH_BUDGET_S = 0.6  # steps one page view runs, at most (then it reads the rollups as far as they got)
FIRST_SLICE_MS = 3_600_000
MIN_SLICE_MS = 1
MAX_STEPS = 500  # per call: each step holds a savepoint until the transaction ends


@dataclass(frozen=True)
class Refresh:
    refreshed_to: datetime | None  # rows stored (labels received) before this are counted (None: none yet)
    caught_up: bool  # False: rows stored before the cutoff remain for the next refresh
    ran: bool  # False: another refresh held the lock, the rollups were read as they were


def refresh(
    cur: psycopg2.extensions.cursor, budget_s: float = REFRESH_BUDGET_S, step_budget_ms: int = STEP_BUDGET_MS
) -> Refresh:
    """Add what was stored since the last refresh to the rollups, in steps of `slice_ms` of stored_at time, each
    bounded by `step_budget_ms` (a step that runs out is undone and the slice halved; a quick one doubles it), for
    at most `budget_s`. Runs on the caller's unit of work, which must commit it. A store far behind (the first
    refresh after a replay) catches up over several page views or refresh calls; each one only adds."""
    cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (_REFRESH_LOCK_KEY,))
    row = cur.fetchone()
    locked = bool(row and row[0])
    cur.execute("SELECT refreshed_to, slice_ms FROM console_rollup_state WHERE id = 1")
    state = cur.fetchone()
    since: datetime | None = state[0] if state else None  # None: nothing counted yet
    slice_ms = int(state[1]) if state else FIRST_SLICE_MS
    if not locked:
        return Refresh(since, False, False)
    cur.execute(_CUTOFF)
    cutoff: datetime = cur.fetchone()[0]
    if since is None:
        cur.execute("SELECT least((SELECT min(stored_at) FROM transactions), (SELECT min(received_at) FROM labels))")
        first = cur.fetchone()[0]
        if first is None:
            return Refresh(None, True, True)
        since = first
    cur.execute(_LABEL_CHANGES_TABLE)
    cur.execute("SELECT current_setting('statement_timeout')")
    previous_timeout = cur.fetchone()[0]
    started = time.monotonic()
    try:
        for _ in range(MAX_STEPS):
            if since >= cutoff or time.monotonic() - started >= budget_s:
                break
            until = min(cutoff, since + timedelta(milliseconds=slice_ms))
            cur.execute("SAVEPOINT console_refresh_step")
            cur.execute("SELECT set_config('statement_timeout', %s, true)", (str(step_budget_ms),))
            try:
                _add(cur, since, until)
            except psycopg2.errors.QueryCanceled:
                cur.execute("ROLLBACK TO SAVEPOINT console_refresh_step")
                slice_ms = max(MIN_SLICE_MS, slice_ms // 2)
                continue
            cur.execute("RELEASE SAVEPOINT console_refresh_step")
            since = until
            slice_ms = min(slice_ms * 2, 30 * 86_400_000)
    finally:
        cur.execute("SELECT set_config('statement_timeout', %s, true)", (previous_timeout,))
    cur.execute(
        """INSERT INTO console_rollup_state (id, refreshed_to, slice_ms) VALUES (1, %s, %s)
           ON CONFLICT (id) DO UPDATE SET refreshed_to = excluded.refreshed_to, slice_ms = excluded.slice_ms""",
        (since, slice_ms),
    )
    return Refresh(since, since >= cutoff, True)


def _add(cur: psycopg2.extensions.cursor, since: datetime, until: datetime) -> None:
    params = {"since": since, "until": until, "bands": [str(b) for b in AMOUNT_BANDS]}
    cur.execute(_ADD_HOURLY, params)
    cur.execute(_ADD_RULES, params)
    cur.execute(_LABEL_CHANGES, params)
    cur.execute(_ADD_LABELS, params)
    cur.execute(_ADD_RULE_LABELS, params)
    cur.execute("TRUNCATE console_label_changes")


def catch_up(cur: psycopg2.extensions.cursor, step_budget_ms: int = STEP_BUDGET_MS) -> Refresh:
    """Refresh until the rollups hold everything stored before the cutoff (`txguard console refresh`, the
    benchmark); a larger `step_budget_ms` takes larger, cheaper steps."""
    while True:
        result = refresh(cur, budget_s=3600, step_budget_ms=step_budget_ms)
        if result.caught_up or not result.ran:
            return result


@dataclass(frozen=True)
class HourRow:
    hour: datetime
    currency: str
    amount_band: int
    transactions: int
    amount: Decimal
    flagged: int


def hourly(cur: psycopg2.extensions.cursor, since: datetime, until: datetime) -> list[HourRow]:
    """The rollup's rows for hours in [since, until), oldest first."""
    cur.execute(
        """SELECT hour, currency, amount_band, transactions, amount, flagged FROM console_hourly
           WHERE hour >= %s AND hour < %s ORDER BY hour, currency, amount_band""",
        (since, until),
    )
    return [HourRow(r[0], r[1].strip(), int(r[2]), int(r[3]), Decimal(r[4]), int(r[5])) for r in cur.fetchall()]


def extent(cur: psycopg2.extensions.cursor) -> tuple[datetime, datetime] | None:
    """The first and last hour the rollup holds, or None when it is empty."""
    cur.execute("SELECT min(hour), max(hour) FROM console_hourly")
    row = cur.fetchone()
    if not row or row[0] is None:
        return None
    return row[0], row[1]


@dataclass(frozen=True)
class LabelRow:
    hour: datetime
    amount_band: int
    flagged: bool
    labelled: int
    fraud: int


def label_hourly(cur: psycopg2.extensions.cursor, since: datetime, until: datetime) -> list[LabelRow]:
    """Labelled transactions (labels in force) by hour of the transaction, amount band and flag, in [since, until)."""
    cur.execute(
        """SELECT hour, amount_band, flagged, labelled, fraud FROM console_label_hourly
           WHERE hour >= %s AND hour < %s AND labelled <> 0 ORDER BY hour""",
        (since, until),
    )
    return [LabelRow(r[0], int(r[1]), bool(r[2]), int(r[3]), int(r[4])) for r in cur.fetchall()]


def rule_labels(cur: psycopg2.extensions.cursor, first_day: int, end_day: int) -> list[tuple[int, str, int, int]]:
    """(day, rule id, labelled hits, fraud hits) for UTC days [first_day, end_day)."""
    cur.execute(
        """SELECT day, rule_id, labelled, fraud FROM console_rule_label_daily
           WHERE day >= %s AND day < %s AND labelled <> 0 ORDER BY day, rule_id""",
        (first_day, end_day),
    )
    return [(int(d), str(r), int(n), int(f)) for d, r, n, f in cur.fetchall()]


def rule_hits(cur: psycopg2.extensions.cursor, first_day: int, end_day: int) -> list[tuple[int, str, str, int]]:
    """(day, rule id, mode, hits) for UTC days [first_day, end_day)."""
    cur.execute(
        "SELECT day, rule_id, mode, hits FROM console_rule_daily WHERE day >= %s AND day < %s ORDER BY day, rule_id",
        (first_day, end_day),
    )
    return [(int(d), str(r), str(m), int(h)) for d, r, m, h in cur.fetchall()]
