"""The `merchant_daily` table (each merchant's transactions per UTC day, maintained on insert) and reads of
`merchant_label_daily` (labelled frauds per merchant, transaction day and day known; migrations/0009_labels.sql).

merchant_daily is updated in the database transaction that stores the transactions, under the merchants'
advisory locks (transactions.lock_merchants); its upsert is also safe without them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import psycopg2.extensions

from txguard.domain import Transaction
from txguard.features import DAY_MS, RISK_FEATURES, RISK_WINDOWS, FeatureSettings, Timeline, merchant_days_back
from txguard.storage import array_literal, execute_later


def daily_counts(cur: psycopg2.extensions.cursor, days: dict[str, tuple[int, int]]) -> dict[str, dict[int, list[int]]]:
    """Per merchant, for days[merchant] = (first, until) in UTC day numbers: {day: [count, 0]} for the days in
    [first, until) with transactions (the second slot is the features' sum, not kept per merchant)."""
    result: dict[str, dict[int, list[int]]] = {m: {} for m in days}
    if not days:
        return result
    merchants = list(days)
    cur.execute(
        """SELECT d.merchant_id, d.day, d.tx_count
           FROM unnest(%s::text[], %s::int[], %s::int[]) AS b(merchant_id, first_day, until_day)
           JOIN merchant_daily d ON d.merchant_id = b.merchant_id AND d.day >= b.first_day AND d.day < b.until_day""",
        (merchants, array_literal(days[m][0] for m in merchants), array_literal(days[m][1] for m in merchants)),
    )
    for merchant_id, day, count in cur.fetchall():
        result[merchant_id][day] = [int(count), 0]
    return result


def label_steps(
    cur: psycopg2.extensions.cursor, days: dict[str, tuple[int, int, int]]
) -> dict[str, list[tuple[int, int, int]]]:
    """Per merchant, for days[merchant] = (first, until, known_until): its merchant_label_daily rows as
    (tx day, known day, signed frauds) with tx day in [first, until) and known day < known_until."""
    result: dict[str, list[tuple[int, int, int]]] = {m: [] for m in days}
    if not days:
        return result
    merchants = list(days)
    cur.execute(
        """SELECT l.merchant_id, l.tx_day, l.known_day, l.frauds
           FROM unnest(%s::text[], %s::int[], %s::int[], %s::int[]) AS b(merchant_id, first_day, until_day, known_until)
           JOIN merchant_label_daily l ON l.merchant_id = b.merchant_id AND l.tx_day >= b.first_day
                AND l.tx_day < b.until_day AND l.known_day < b.known_until""",
        (
            merchants,
            array_literal(days[m][0] for m in merchants),
            array_literal(days[m][1] for m in merchants),
            array_literal(days[m][2] for m in merchants),
        ),
    )
    for merchant_id, tx_day, known_day, frauds in cur.fetchall():
        result[merchant_id].append((tx_day, known_day, frauds))
    return result


def add_to_daily_counts(cur: psycopg2.extensions.cursor, new: Iterable[Transaction]) -> None:
    """Add newly stored transactions to merchant_daily (in the same database transaction as their insert)."""
    counts = Counter((t.merchant_id, t.ts // DAY_MS) for t in new if t.merchant_id is not None)
    if not counts:
        return
    keys = sorted(counts)
    execute_later(
        cur,
        """INSERT INTO merchant_daily AS d (merchant_id, day, tx_count)
           SELECT * FROM unnest(%s::text[], %s::int[], %s::bigint[])
           ON CONFLICT (merchant_id, day) DO UPDATE SET tx_count = d.tx_count + excluded.tx_count""",
        ([m for m, _ in keys], array_literal(d for _, d in keys), array_literal(counts[k] for k in keys)),
    )


def attach_history(
    cur: psycopg2.extensions.cursor,
    transactions: Iterable[Transaction],
    merchants: dict[str, Timeline],
    needed: frozenset[str],
    settings: FeatureSettings,
) -> None:
    """Give the merchants' timelines what their day windows and risk need for these transactions (sorted by time):
    the per-day counts of the days before the latest one's day, as far back as the features reach, and the label
    steps of the days risk reads. Nothing is read when no such feature is needed."""
    back = merchant_days_back(needed, settings)
    if back == 0:
        return
    span: dict[str, tuple[int, int]] = {}
    for t in transactions:
        if t.merchant_id is not None:
            day = t.ts // DAY_MS
            first, last = span.get(t.merchant_id, (day, day))
            span[t.merchant_id] = (min(first, day), max(last, day))
    counts = daily_counts(cur, {m: (first - back, last) for m, (first, last) in span.items()})
    steps: dict[str, list[tuple[int, int, int]]] = {}
    if not needed.isdisjoint(RISK_FEATURES):
        delay, widest = settings.label_delay_days, max(w for _, w in RISK_WINDOWS)
        steps = label_steps(cur, {m: (first - delay - widest, last - delay, last) for m, (first, last) in span.items()})
    for merchant_id, (first, _) in span.items():
        timeline = merchants[merchant_id]
        timeline.days = counts[merchant_id]
        timeline.days_from = first - back
        timeline.use_label_steps(steps.get(merchant_id, []))
