"""Reading the stored history that point-in-time features need, in bounded pieces, and keeping per-day totals.

Every read here is bounded by the rules' widest window (or one day) around the transactions being decided,
through the (account_id, ts) and (merchant_id, ts) indexes, plus at most one row per day of an account's
life from account_daily: never by the length of the history.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from decimal import Context
from typing import TypeVar

import psycopg2.extensions

from txguard.domain import Transaction
from txguard.features import DAY_MS, Prior, Timeline, to_units

# Totals exceed the default 28 significant digits (a sum of squared amounts in 1/10^8 units): read them exactly.
WIDE = Context(prec=100)

Span = tuple[int, int]  # [low, high) in epoch milliseconds
K = TypeVar("K", int, str)


def spans_before(times: Sequence[int], reach_ms: int, from_day_start: bool = False) -> list[Span]:
    """The merged spans [t - reach + 1, t) (from the start of t's UTC day too, if asked) for sorted times."""
    spans: list[Span] = []
    for t in times:
        low = t - reach_ms + 1
        if from_day_start:
            low = min(low, t - t % DAY_MS)
        if spans and low <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], t))
        else:
            spans.append((low, t))
    return spans


_ROWS_IN_SPANS = """
    SELECT b.key, b.low, rows.ts, rows.units
    FROM unnest(%s::{key_type}[], %s::bigint[], %s::bigint[]) AS b(key, low, high)
    CROSS JOIN LATERAL (
        SELECT array_agg(txguard_ts_to_ms(t.ts) ORDER BY t.ts) AS ts,
               array_agg((t.amount * 10000)::bigint ORDER BY t.ts) AS units
        FROM transactions t
        WHERE t.{key_column} = b.key AND t.ts >= txguard_ms_to_ts(b.low) AND t.ts < txguard_ms_to_ts(b.high)
              {extra}) AS rows"""
_ACCOUNT_ROWS = _ROWS_IN_SPANS.format(key_type="bigint", key_column="account_id", extra="")
# An account being re-decided adds its own transactions from `since` on as it goes: leave those out.
_MERCHANT_ROWS = _ROWS_IN_SPANS.format(
    key_type="text", key_column="merchant_id", extra="AND (t.account_id <> %s OR t.ts < txguard_ms_to_ts(%s))"
)


def account_rows(cur: psycopg2.extensions.cursor, spans: dict[int, list[Span]]) -> dict[int, Timeline]:
    """Each account's stored transactions inside its spans, as one sorted Timeline per account."""
    keys, lows, highs = _flatten(spans)
    if not keys:
        return {}
    cur.execute(_ACCOUNT_ROWS, (array_literal(keys), array_literal(lows), array_literal(highs)))
    return _timelines(cur.fetchall(), spans)


def merchant_windows(
    cur: psycopg2.extensions.cursor,
    transactions: Iterable[Transaction],
    reach_ms: int,
    skip_account_from: tuple[int, int] = (0, 0),
) -> dict[str, Timeline]:
    """For the merchants of these transactions (sorted by time), their stored transactions (every account's)
    within reach_ms before each one, as one sorted Timeline per merchant; empty ones, read from nowhere, when no
    rule looks at merchants (reach_ms 0).

    skip_account_from = (account, ms) leaves out that account's transactions from ms on (0: none left out).
    """
    times: dict[str, list[int]] = defaultdict(list)
    for t in transactions:
        if t.merchant_id is not None:
            times[t.merchant_id].append(t.ts)
    if reach_ms <= 0:
        return {m: Timeline(complete_from=0) for m in times}
    spans = {m: spans_before(ts, reach_ms) for m, ts in times.items()}
    keys, lows, highs = _flatten(spans)
    if not keys:
        return {}
    cur.execute(_MERCHANT_ROWS, (keys, array_literal(lows), array_literal(highs), *skip_account_from))
    return _timelines(cur.fetchall(), spans)


def _flatten(spans: dict[K, list[Span]]) -> tuple[list[K], list[int], list[int]]:
    keys, lows, highs = [], [], []
    for key, key_spans in spans.items():
        for low, high in key_spans:
            keys.append(key)
            lows.append(low)
            highs.append(high)
    return keys, lows, highs


def _timelines(
    rows: Iterable[tuple[K, int, list[int] | None, list[int] | None]], spans: dict[K, list[Span]]
) -> dict[K, Timeline]:
    pieces: dict[K, list[tuple[int, list[int], list[int]]]] = defaultdict(list)
    for key, low, ts, units in rows:
        pieces[key].append((low, ts or [], units or []))
    timelines = {}
    for key, key_spans in spans.items():
        ordered = sorted(pieces.get(key, []), key=lambda piece: piece[0])  # spans are disjoint: concatenating sorts
        timelines[key] = Timeline.from_sorted(
            key_spans[0][0], [t for _, ts, _ in ordered for t in ts], [u for _, _, us in ordered for u in us]
        )
    return timelines


def daily_totals(
    cur: psycopg2.extensions.cursor, days: dict[int, tuple[int, int]]
) -> dict[int, tuple[Prior, list[tuple[int, Prior]]]]:
    """Per account, for days[account] = (first, until) in UTC day numbers: the totals of every day before `first`
    (summed by the server) and each day's totals from `first` up to `until` (excluded), oldest first."""
    if not days:
        return {}
    accounts = list(days)
    params = (
        array_literal(accounts),
        array_literal(days[a][0] for a in accounts),
        array_literal(days[a][1] for a in accounts),
    )
    cur.execute(
        """SELECT b.account_id, NULL, p.n, p.s, p.s2, p.m, p.last_ms
           FROM unnest(%s::bigint[], %s::int[], %s::int[]) AS b(account_id, first_day, until_day)
           CROSS JOIN LATERAL (
               SELECT coalesce(sum(tx_count), 0) AS n, coalesce(sum(amount_sum), 0) AS s,
                      coalesce(sum(amount_sum_sq), 0) AS s2, max(amount_max) AS m,
                      txguard_ts_to_ms(max(last_ts)) AS last_ms
               FROM account_daily d WHERE d.account_id = b.account_id AND d.day < b.first_day) AS p
           UNION ALL
           SELECT d.account_id, d.day, d.tx_count, d.amount_sum, d.amount_sum_sq, d.amount_max,
                  txguard_ts_to_ms(d.last_ts)
           FROM unnest(%s::bigint[], %s::int[], %s::int[]) AS b(account_id, first_day, until_day)
           JOIN account_daily d ON d.account_id = b.account_id AND d.day >= b.first_day AND d.day < b.until_day
           ORDER BY 1, 2 NULLS FIRST""",
        params + params,
    )
    result: dict[int, tuple[Prior, list[tuple[int, Prior]]]] = {}
    for account_id, day, count, total, total_sq, largest, last_ts in cur.fetchall():
        totals = Prior(
            int(count),
            int(total.scaleb(4, WIDE)),
            int(total_sq.scaleb(8, WIDE)),
            None if largest is None else to_units(largest),
            last_ts,
        )
        if day is None:
            result[account_id] = (totals, [])
        else:
            result[account_id][1].append((day, totals))
    return result


def add_to_daily_totals(cur: psycopg2.extensions.cursor, new: Iterable[Transaction]) -> None:
    """Add newly stored transactions to account_daily (in the same database transaction as their insert).

    Callers hold the accounts' account_stats row locks, so no two writers update one account's days at once.
    """
    days: dict[tuple[int, int], list[int]] = {}  # [count, sum, sum of squares, max, last timestamp]
    for t in new:
        key, units = (t.account_id, t.ts // DAY_MS), to_units(t.amount)
        day = days.get(key)
        if day is None:
            days[key] = [1, units, units * units, units, t.ts]
        else:
            day[0] += 1
            day[1] += units
            day[2] += units * units
            day[3] = max(day[3], units)
            day[4] = max(day[4], t.ts)
    if not days:
        return
    keys = sorted(days)
    totals = [Prior(*days[k]) for k in keys]
    cur.execute(
        """INSERT INTO account_daily AS d (account_id, day, tx_count, amount_sum, amount_sum_sq, amount_max, last_ts)
           SELECT account_id, day, n, s * 0.0001, s2 * 0.00000001, m * 0.0001, txguard_ms_to_ts(l)
           FROM unnest(%s::bigint[], %s::int[], %s::bigint[], %s::numeric[], %s::numeric[], %s::numeric[],
                       %s::bigint[]) AS v(account_id, day, n, s, s2, m, l)
           ON CONFLICT (account_id, day) DO UPDATE SET
               tx_count = d.tx_count + excluded.tx_count,
               amount_sum = d.amount_sum + excluded.amount_sum,
               amount_sum_sq = d.amount_sum_sq + excluded.amount_sum_sq,
               amount_max = greatest(d.amount_max, excluded.amount_max),
               last_ts = greatest(d.last_ts, excluded.last_ts)""",
        (
            array_literal(a for a, _ in keys),
            array_literal(d for _, d in keys),
            array_literal(p.count for p in totals),
            array_literal(p.sum_units for p in totals),
            array_literal(p.sum_sq_units for p in totals),
            array_literal(p.max_units for p in totals),
            array_literal(p.last_ts for p in totals),
        ),
    )


def array_literal(values: Iterable[int | bool | None]) -> str:
    """An array parameter as one literal ("{1,2,NULL}") the server parses at once; a Python list would be sent as
    an ARRAY[...] expression of one constant per element, costly to adapt here and to parse there."""
    return "{" + ",".join("NULL" if v is None else str(v) for v in values) + "}"
