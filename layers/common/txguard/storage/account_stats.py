"""The `account_stats` table (each account's running count and times; its row is the account's write lock), the
`account_currency_stats` table (its running amount totals per currency: amounts of different currencies are never
added up) and the `account_daily` table (per-day totals per currency, for transactions that arrive late or
back-dated).

All are updated in the database transaction that stores the account's new transactions.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import psycopg2.errors
import psycopg2.extensions

from txguard.domain import Transaction
from txguard.features import DAY_MS, FIRST_USE_FIELDS, AccountHistory, Amounts, Prior, Timeline, to_units
from txguard.storage import WIDE, array_literal, execute_later

# The per-day totals of each account's days in [first, until), for the day-aligned windows.
_WINDOW_DAYS = """FROM unnest(%(da)s::bigint[], %(df)s::int[], %(du)s::int[]) AS b(account_id, first_day, until_day)
           JOIN account_daily d ON d.account_id = b.account_id AND d.day >= b.first_day AND d.day < b.until_day"""


# lock_accounts: create, lock the accounts with a transaction not stored yet, then read (see there).
_LOCK_AND_READ = (
    """INSERT INTO account_stats (account_id) SELECT unnest(%(a)s::bigint[]) ON CONFLICT DO NOTHING;
           SELECT FROM account_stats WHERE account_id IN (
               SELECT p.account_id FROM unnest(%(pa)s::bigint[], %(ids)s::bigint[]) AS p(account_id, id)
               WHERE NOT EXISTS (SELECT FROM transactions t WHERE t.transaction_id = p.id OFFSET 0))
           ORDER BY account_id FOR UPDATE;
           SELECT 's', a.account_id, a.tx_count, txguard_ts_to_ms(a.first_ts), txguard_ts_to_ms(a.last_ts),
                  c.currency, c.tx_count, c.amount_sum, c.amount_sum_sq, c.amount_max,
                  txguard_ts_to_ms(c.amount_max_ts), a.written_by, NULL::json
           FROM account_stats a
           LEFT JOIN account_currency_stats c ON c.account_id = a.account_id
           WHERE a.account_id = ANY(%(a)s::bigint[])
           UNION ALL
           SELECT 'd', d.account_id, NULL, NULL, NULL, d.currency, d.tx_count, d.amount_sum, NULL, NULL, NULL,
                  d.day, NULL
           """  # noqa: S608 (constants only)
    + _WINDOW_DAYS
    + """
           UNION ALL
           SELECT 't', i.id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
           FROM unnest(%(ids)s::bigint[]) AS i(id)
           WHERE EXISTS (SELECT FROM transactions t WHERE t.transaction_id = i.id OFFSET 0)"""
)
# lock_accounts' `also`: one more row, its value in the last column.
_ALSO = "\n           UNION ALL SELECT 'x', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, "


class Locked(NamedTuple):
    """What lock_accounts read under the accounts' locks: each account's history (running totals; the tail and its
    `stored_before` are for the caller to load), the ids among those asked that are stored by now, the
    per-day totals asked for (day_totals_for_windows' shape), and which unit of work last wrote each account
    (`account_stats.written_by`, None when not known: see txguard.account_tails)."""

    histories: dict[int, AccountHistory]
    stored_ids: list[int]
    window_days: dict[int, dict[str, dict[int, list[int]]]]
    written_by: dict[int, int | None]
    also: Any = None


def lock_accounts(
    cur: psycopg2.extensions.cursor,
    transactions: Sequence[Transaction],
    window_days: Mapping[int, tuple[int, int]] | None = None,
    also: str | None = None,
) -> Locked:
    """Lock the running totals of the accounts of those `transactions` that are not stored yet (creating empty
    totals for every account of `transactions`) and read every one's totals with its per-currency amount totals;
    and, under the same locks and in the same round trip, which of the transactions' ids are stored by now (a
    writer that held an account may have stored them meanwhile) and the per-day totals of `window_days` (as
    day_totals_for_windows); `also`, an SQL expression of one json value (parameters already bound, as
    cursor.mogrify gives it), is read in the same statement too, into Locked.also. Every writer locks in account
    order: no deadlock.

    A transaction already stored takes no lock: a batch of replays is answered without waiting for a writer that
    holds its accounts, and an id stored with different content is refused (by the caller, from
    Locked.stored_ids) without waiting for one either. Stored rows never change, so a transaction found stored
    when the locks are taken is still stored when the read under them runs."""
    # One round trip: create, lock, then read. The read is a statement of its own so that it sees (READ COMMITTED:
    # a new snapshot per statement) what a writer that held a lock committed, its new currencies included. Its
    # parts are told apart by the first column: s (an account's totals, per currency), d (a day's totals),
    # t (a stored id), x (`also`).
    # Both id probes look each id up in the primary key: OFFSET 0 keeps each EXISTS a subquery run per id, never a
    # join the planner may answer by reading the whole table. It did, while the table was small enough for that to
    # look cheaper (a batch of 5,000 ids against 60,000 stored rows: two scans of every row, about 30 ms more
    # backend CPU per batch than the probes), and such a scan grows with the table.
    # Creating an account's totals waits only for a writer creating the same account (ON CONFLICT DO NOTHING
    # takes no lock on a committed row), never for one holding it.
    days = window_days or {}
    cur.execute(
        _LOCK_AND_READ if also is None else _LOCK_AND_READ + _ALSO + also.replace("%", "%%"),
        {
            "a": array_literal(sorted({t.account_id for t in transactions})),
            "pa": array_literal(t.account_id for t in transactions),
            "ids": array_literal(t.transaction_id for t in transactions),
            **_window_days_arguments(days),
        },
    )
    histories: dict[int, AccountHistory] = {}
    written_by: dict[int, int | None] = {}
    stored: list[int] = []
    by_day: dict[int, dict[str, dict[int, list[int]]]] = {a: {} for a in days}
    read_also = None
    for part, account_id, count, first, last, currency, n, total, total_sq, max_amount, max_ts, day, json in cur:
        if part == "x":
            read_also = json
            continue
        if part == "t":
            stored.append(account_id)  # the transaction id
            continue
        if part == "d":
            by_day[account_id].setdefault(currency, {})[day] = [int(n), to_units(total)]
            continue
        history = histories.get(account_id)
        if history is None:
            written_by[account_id] = day  # an 's' row's account_stats.written_by
            history = histories[account_id] = AccountHistory(
                count=count,
                first_ts=first,
                last_ts=last,
                amounts={},
                tail=Timeline(complete_from=0),
                stored_before=_nothing_loaded,
            )
        if currency is not None:
            history.amounts[currency] = Amounts(
                n,
                int(total.scaleb(4, WIDE)),
                int(total_sq.scaleb(8, WIDE)),
                None if max_amount is None else to_units(max_amount),
                max_ts,
            )
    return Locked(histories, stored, by_day, written_by, read_also)


def _nothing_loaded(t: int, currency: str) -> tuple[Prior, Prior]:
    raise ValueError("the account's history was not loaded")


def write_totals(
    cur: psycopg2.extensions.cursor, histories: dict[int, AccountHistory], changed: set[int], written_by: int
) -> None:
    """Write back the running totals of the `changed` accounts (locked by lock_accounts): counts and times to
    account_stats, the amount totals of each currency they added transactions in to account_currency_stats.
    `written_by` (account_tails.new_writer) marks the accounts as written by this unit of work: whoever stores an
    account's transactions writes its totals, and with them a number of its own (see txguard.account_tails)."""
    accounts = sorted(changed)
    h = [histories[a] for a in accounts]
    pairs = [(a, c) for a in accounts for c in sorted(histories[a].added)]
    totals = [histories[a].amounts[c] for a, c in pairs]
    execute_later(
        cur,
        """UPDATE account_stats AS a SET
               tx_count = v.tx_count, first_ts = txguard_ms_to_ts(v.first_ts), last_ts = txguard_ms_to_ts(v.last_ts),
               written_by = %s
           FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[])
                AS v(account_id, tx_count, first_ts, last_ts)
           WHERE a.account_id = v.account_id;
           INSERT INTO account_currency_stats AS c
               (account_id, currency, tx_count, amount_sum, amount_sum_sq, amount_max, amount_max_ts)
           SELECT account_id, currency, n, s * 0.0001, s2 * 0.00000001, m * 0.0001, txguard_ms_to_ts(m_ts)
           FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %s::numeric[], %s::numeric[], %s::numeric[],
                       %s::bigint[]) AS v(account_id, currency, n, s, s2, m, m_ts)
           ON CONFLICT (account_id, currency) DO UPDATE SET
               tx_count = excluded.tx_count, amount_sum = excluded.amount_sum,
               amount_sum_sq = excluded.amount_sum_sq, amount_max = excluded.amount_max,
               amount_max_ts = excluded.amount_max_ts""",
        (
            written_by,
            array_literal(accounts),
            array_literal(x.count for x in h),
            array_literal(x.first_ts for x in h),
            array_literal(x.last_ts for x in h),
            array_literal(a for a, _ in pairs),
            [c for _, c in pairs],
            array_literal(x.count for x in totals),
            array_literal(x.sum_units for x in totals),
            array_literal(x.sum_sq_units for x in totals),
            array_literal(x.max_units for x in totals),
            array_literal(x.max_ts for x in totals),
        ),
    )


def first_ts(cur: psycopg2.extensions.cursor, account_id: int) -> int | None:
    """When the account's first transaction happened (epoch ms), or None for an account with none."""
    cur.execute("SELECT txguard_ts_to_ms(first_ts) FROM account_stats WHERE account_id = %s", (account_id,))
    row = cur.fetchone()
    return row[0] if row else None


DayTotals = tuple[dict[str, Prior], dict[str, list[tuple[int, Prior]]]]


def daily_totals(cur: psycopg2.extensions.cursor, days: dict[int, tuple[int, int]]) -> dict[int, DayTotals]:
    """Per account, for days[account] = (first, until) in UTC day numbers, per currency: the totals of every day
    before `first` (summed by the server) and each day's totals from `first` up to `until` (excluded), oldest
    first. Currencies with no such day are left out."""
    if not days:
        return {}
    accounts = list(days)
    params = (
        array_literal(accounts),
        array_literal(days[a][0] for a in accounts),
        array_literal(days[a][1] for a in accounts),
    )
    cur.execute(
        """SELECT b.account_id, d.currency, NULL::integer, sum(d.tx_count), sum(d.amount_sum),
                  sum(d.amount_sum_sq), max(d.amount_max), txguard_ts_to_ms(max(d.last_ts))
           FROM unnest(%s::bigint[], %s::int[], %s::int[]) AS b(account_id, first_day, until_day)
           JOIN account_daily d ON d.account_id = b.account_id AND d.day < b.first_day
           GROUP BY b.account_id, d.currency
           UNION ALL
           SELECT d.account_id, d.currency, d.day, d.tx_count, d.amount_sum, d.amount_sum_sq, d.amount_max,
                  txguard_ts_to_ms(d.last_ts)
           FROM unnest(%s::bigint[], %s::int[], %s::int[]) AS b(account_id, first_day, until_day)
           JOIN account_daily d ON d.account_id = b.account_id AND d.day >= b.first_day AND d.day < b.until_day
           ORDER BY 1, 2, 3 NULLS FIRST""",
        params + params,
    )
    result: dict[int, DayTotals] = {a: ({}, {}) for a in accounts}
    for account_id, currency, day, count, total, total_sq, largest, last_ts in cur.fetchall():
        totals = Prior(
            int(count),
            int(total.scaleb(4, WIDE)),
            int(total_sq.scaleb(8, WIDE)),
            None if largest is None else to_units(largest),
            last_ts,
        )
        before, by_day = result[account_id]
        if day is None:
            before[currency] = totals
        else:
            by_day.setdefault(currency, []).append((day, totals))
    return result


def add_to_daily_totals(cur: psycopg2.extensions.cursor, new: Iterable[Transaction]) -> None:
    """Add newly stored transactions to account_daily, per account, day and currency (in the same database
    transaction as their insert).

    Callers hold the accounts' account_stats row locks, so no two writers update one account's days at once.
    """
    days: dict[tuple[int, int, str], list[int]] = {}  # [count, sum, sum of squares, max, last timestamp]
    for t in new:
        key, units = (t.account_id, t.ts // DAY_MS, t.currency), to_units(t.amount)
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
    execute_later(
        cur,
        """INSERT INTO account_daily AS d
               (account_id, day, currency, tx_count, amount_sum, amount_sum_sq, amount_max, last_ts)
           SELECT account_id, day, currency, n, s * 0.0001, s2 * 0.00000001, m * 0.0001, txguard_ms_to_ts(l)
           FROM unnest(%s::bigint[], %s::int[], %s::text[], %s::bigint[], %s::numeric[], %s::numeric[],
                       %s::numeric[], %s::bigint[]) AS v(account_id, day, currency, n, s, s2, m, l)
           ON CONFLICT (account_id, day, currency) DO UPDATE SET
               tx_count = d.tx_count + excluded.tx_count,
               amount_sum = d.amount_sum + excluded.amount_sum,
               amount_sum_sq = d.amount_sum_sq + excluded.amount_sum_sq,
               amount_max = greatest(d.amount_max, excluded.amount_max),
               last_ts = greatest(d.last_ts, excluded.last_ts)""",
        (
            array_literal(a for a, _, _ in keys),
            array_literal(d for _, d, _ in keys),
            [c for _, _, c in keys],
            array_literal(p.count for p in totals),
            array_literal(p.sum_units for p in totals),
            array_literal(p.sum_sq_units for p in totals),
            array_literal(p.max_units for p in totals),
            array_literal(p.last_ts for p in totals),
        ),
    )


def merchants_first_used(cur: psycopg2.extensions.cursor, pairs: set[tuple[int, str]]) -> dict[int, dict[str, int]]:
    """Per account, when (epoch ms) it first transacted at each of these merchants (account_merchants); pairs
    never seen are left out."""
    result: dict[int, dict[str, int]] = defaultdict(dict)
    if not pairs:
        return result
    ordered = sorted(pairs)
    cur.execute(
        """SELECT m.account_id, m.merchant_id, txguard_ts_to_ms(m.first_ts)
           FROM unnest(%s::bigint[], %s::text[]) AS p(account_id, merchant_id)
           JOIN account_merchants m ON m.account_id = p.account_id AND m.merchant_id = p.merchant_id""",
        (array_literal(a for a, _ in ordered), [m for _, m in ordered]),
    )
    for account_id, merchant_id, first in cur.fetchall():
        result[account_id][merchant_id] = first
    return result


def add_to_merchants_used(cur: psycopg2.extensions.cursor, new: Iterable[Transaction]) -> None:
    """Record (or move back) when each account first transacted at each merchant, for newly stored transactions.

    Callers hold the accounts' account_stats row locks. A pair already recorded as early or earlier is left as it
    is, not rewritten with the same value (a new row version, and its WAL, for nothing)."""
    first: dict[tuple[int, str], int] = {}
    for t in new:
        if t.merchant_id is not None:
            key = (t.account_id, t.merchant_id)
            if key not in first or t.ts < first[key]:
                first[key] = t.ts
    if not first:
        return
    keys = sorted(first)
    execute_later(
        cur,
        """INSERT INTO account_merchants AS m (account_id, merchant_id, first_ts)
           SELECT a, mid, txguard_ms_to_ts(f) FROM unnest(%s::bigint[], %s::text[], %s::bigint[]) AS v(a, mid, f)
           ON CONFLICT (account_id, merchant_id) DO UPDATE SET first_ts = excluded.first_ts
           WHERE excluded.first_ts < m.first_ts""",
        (array_literal(a for a, _ in keys), [m for _, m in keys], array_literal(first[k] for k in keys)),
    )


def values_first_used(
    cur: psycopg2.extensions.cursor, wanted: Iterable[tuple[int, str, str]]
) -> dict[int, dict[str, dict[str, int]]]:
    """Per account and attribute, when (epoch ms) the account first used each of these (account, attribute, value)
    (account_values, attributes features.FIRST_USE_FIELDS); values never used are left out."""
    result: dict[int, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    ordered = sorted(set(wanted))
    if not ordered:
        return result
    cur.execute(
        """SELECT v.account_id, v.attribute, v.value, txguard_ts_to_ms(v.first_ts)
           FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS p(account_id, attribute, value)
           JOIN account_values v ON (v.account_id, v.attribute, v.value) = (p.account_id, p.attribute, p.value)""",
        (array_literal(a for a, _, _ in ordered), [f for _, f, _ in ordered], [v for _, _, v in ordered]),
    )
    for account_id, attribute, value, first in cur.fetchall():
        result[account_id][attribute][value] = first
    return result


def first_use_wanted(transactions: Iterable[Transaction]) -> set[tuple[int, str, str]]:
    """The (account, attribute, value) of these transactions whose first use account_values keeps."""
    return {
        (t.account_id, attribute, value)
        for t in transactions
        for attribute in FIRST_USE_FIELDS
        if (value := getattr(t, attribute)) is not None
    }


def add_to_values_used(cur: psycopg2.extensions.cursor, new: Iterable[Transaction]) -> None:
    """Record (or move back) when each account first used each country and device, for newly stored transactions.

    Callers hold the accounts' account_stats row locks. A value already recorded as early or earlier is left as it
    is (as add_to_merchants_used)."""
    first: dict[tuple[int, str, str], int] = {}
    for t in new:
        if t.country is None and t.device_id is None:
            continue
        for key in first_use_wanted([t]):
            if key not in first or t.ts < first[key]:
                first[key] = t.ts
    if not first:
        return
    keys = sorted(first)
    execute_later(
        cur,
        """INSERT INTO account_values AS v (account_id, attribute, value, first_ts)
           SELECT a, f, x, txguard_ms_to_ts(ms)
           FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::bigint[]) AS n(a, f, x, ms)
           ON CONFLICT (account_id, attribute, value) DO UPDATE SET first_ts = excluded.first_ts
           WHERE excluded.first_ts < v.first_ts""",
        (
            array_literal(a for a, _, _ in keys),
            [f for _, f, _ in keys],
            [x for _, _, x in keys],
            array_literal(first[k] for k in keys),
        ),
    )


def _window_days_arguments(days: Mapping[int, tuple[int, int]]) -> dict[str, str]:
    accounts = list(days)
    return {
        "da": array_literal(accounts),
        "df": array_literal(days[a][0] for a in accounts),
        "du": array_literal(days[a][1] for a in accounts),
    }


def day_totals_for_windows(
    cur: psycopg2.extensions.cursor, days: dict[int, tuple[int, int]]
) -> dict[int, dict[str, dict[int, list[int]]]]:
    """Per account, for days[account] = (first, until): {currency: {day: [count, sum of units]}} from account_daily
    for the days in [first, until) with transactions."""
    result: dict[int, dict[str, dict[int, list[int]]]] = {a: {} for a in days}
    if not days:
        return result
    cur.execute(
        "SELECT d.account_id, d.currency, d.day, d.tx_count, d.amount_sum " + _WINDOW_DAYS,
        _window_days_arguments(days),
    )
    for account_id, currency, day, count, total in cur.fetchall():
        result[account_id].setdefault(currency, {})[day] = [int(count), to_units(total)]
    return result


def lock_accounts_now(cur: psycopg2.extensions.cursor, accounts: list[int]) -> set[int]:
    """Lock, without waiting for anyone, the running totals of those of `accounts` that no other transaction
    holds, creating empty ones for new accounts; returns the accounts locked (lock_accounts then reads them, held
    by this transaction already). An account another transaction holds (its row locked or being updated, or being
    created and not committed yet) is left out, not waited for: the stream path retries its records later.

    SKIP LOCKED passes over a locked row; an INSERT has no NOWAIT, so creating a row that another transaction is
    creating too waits at most 1 ms (lock_timeout) before the account counts as held.
    """
    if not accounts:
        return set()
    cur.execute(
        """SELECT account_id FROM account_stats WHERE account_id = ANY(%s::bigint[])
           ORDER BY account_id FOR UPDATE SKIP LOCKED""",
        (array_literal(accounts),),
    )
    locked = {row[0] for row in cur.fetchall()}
    missing = [a for a in accounts if a not in locked]
    if missing:
        created = _create_without_waiting(cur, missing)
        if created is None:  # one of them is being created by another transaction: find which, one at a time
            created = set()
            for account in missing:
                created |= _create_without_waiting(cur, [account]) or set()
        locked |= created
    return locked


def _create_without_waiting(cur: psycopg2.extensions.cursor, accounts: list[int]) -> set[int] | None:
    """Empty running totals for those of `accounts` that have none; the accounts created, or None when another
    transaction was creating (or updating) one of them (nothing created then). A committed row, which
    lock_accounts_now found held, is not touched: inserting against it would wait for its holder."""
    cur.execute("SAVEPOINT txguard_create_accounts; SHOW lock_timeout")
    row = cur.fetchone()
    assert row is not None
    try:
        cur.execute(
            """SET LOCAL lock_timeout = 1;
               INSERT INTO account_stats (account_id)
               SELECT a FROM unnest(%s::bigint[]) AS a
               WHERE NOT EXISTS (SELECT 1 FROM account_stats s WHERE s.account_id = a)
               ON CONFLICT DO NOTHING RETURNING account_id""",
            (array_literal(accounts),),
        )
    except psycopg2.errors.LockNotAvailable:
        cur.execute("ROLLBACK TO SAVEPOINT txguard_create_accounts")  # which also restores lock_timeout
        return None
    created = {r[0] for r in cur.fetchall()}
    cur.execute("RELEASE SAVEPOINT txguard_create_accounts; SELECT set_config('lock_timeout', %s, true)", (row[0],))
    return created
