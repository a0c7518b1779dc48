"""Reading stored transactions and decisions: the account view of GET /is_fraud, the listing of
GET /store_data, and the point-in-time recomputation of an account's history with the current rules."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import psycopg2.extensions

from txguard import literals, outcomes
from txguard.detection import Detector, decisions_in_time_order, empty_history, list_memberships
from txguard.domain import DecidedTransaction
from txguard.errors import Malformed
from txguard.features import (
    ATTRIBUTE_FEATURES,
    DAY_MS,
    LONGEST_DAY_WINDOW,
    MERCHANT_DAY_FEATURES,
    AccountHistory,
    Amounts,
    CurrencyDailyTotals,
    constant_totals,
    merchant_reach_ms,
    needs_account_days,
)
from txguard.storage import account_stats, merchants, transactions


class InvalidCursor(Malformed, ValueError):
    """A cursor this API did not issue."""

    code = "invalid_cursor"

    def __init__(self, message: str, cursor: str | None = None) -> None:
        super().__init__(message, [{"index": None, "field": "cursor", "value": cursor, "reason": message}])


@dataclass(frozen=True)
class Page:
    items: list[DecidedTransaction]
    next_cursor: str | None


def encode_cursor(ts: int, transaction_id: int) -> str:
    return base64.urlsafe_b64encode(f"{ts}:{transaction_id}".encode()).decode().rstrip("=")


# Bounds of what a cursor may carry: stored timestamps (ms) and transaction ids are within these.
_CURSOR_TS = range(0, 10**14)
_CURSOR_ID = range(-(2**63), 2**63)


def decode_cursor(cursor: str) -> tuple[int, int]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ts_text, tid_text = text.split(":")
        ts = literals.integer_from_text(ts_text, _CURSOR_TS.start, _CURSOR_TS.stop - 1)
        tid = literals.integer_from_text(tid_text, _CURSOR_ID.start, _CURSOR_ID.stop - 1)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor(f"cursor {cursor[:100]!r} is not one this API returned", cursor) from None
    return ts, tid


def flagged_transactions(
    cur: psycopg2.extensions.cursor,
    account_id: int,
    limit: int,
    cursor: str | None,
    with_features: bool = False,
    outcome: str = "block",
) -> Page:
    """The account's stored decisions of `outcome` (block: flagged as fraud), newest first (each with its stored
    features, if asked)."""
    before = decode_cursor(cursor) if cursor else None
    return _page(transactions.flagged(cur, account_id, before, limit + 1, with_features, outcome), limit)


def list_transactions(
    cur: psycopg2.extensions.cursor,
    account_id: int | None,
    from_ms: int | None,
    to_ms: int | None,
    limit: int,
    cursor: str | None,
) -> Page:
    """Stored transactions with their decisions, oldest first, [from, to) in epoch milliseconds."""
    after = decode_cursor(cursor) if cursor else None
    return _page(transactions.listed(cur, account_id, from_ms, to_ms, after, limit + 1), limit)


def _page(items: list[DecidedTransaction], limit: int) -> Page:
    if len(items) <= limit:
        return Page(items, None)
    return Page(items[:limit], cursor_after(items[limit - 1]))


def cursor_after(item: DecidedTransaction) -> str:
    """The cursor of the page that continues after `item` (in the page's own order, either way in time)."""
    return encode_cursor(item.transaction.ts, item.transaction.transaction_id)


# GET /is_fraud?recompute=true re-decides at most this many of the account's transactions per request (plus any
# sharing the oldest one's timestamp): time and memory stay bounded however long the history; next_cursor
# continues further back.
RECOMPUTE_WINDOW = 5_000


def recomputed_flagged(
    cur: psycopg2.extensions.cursor,
    account_id: int,
    detector: Detector,
    limit: int,
    cursor: str | None,
    outcome: str = "block",
) -> Page:
    """A page of the account's transactions to which `detector` gives `outcome` (block: flags), newest first,
    each re-decided point-in-time.

    One request re-decides at most RECOMPUTE_WINDOW transactions before the cursor, so a page can hold fewer
    than `limit` items (even none) while next_cursor is set: the client follows it until it is null.
    Raises InvalidCursor for a cursor this API did not issue.
    """
    before = decode_cursor(cursor) if cursor else None
    judged, continue_at = recompute_window(cur, account_id, detector, before, RECOMPUTE_WINDOW)
    flagged = [j for j in reversed(judged) if j.decision.outcome == outcome]
    if len(flagged) > limit:
        return _page(flagged, limit)
    return Page(flagged, encode_cursor(*continue_at) if continue_at else None)


def recompute_window(
    cur: psycopg2.extensions.cursor,
    account_id: int,
    detector: Detector,
    before: tuple[int, int] | None,
    size: int,
) -> tuple[list[DecidedTransaction], tuple[int, int] | None]:
    """The account's newest `size` transactions before `before` ((ms, transaction id), exclusive; None: from the
    newest), re-decided by `detector`, each on what came before it; nothing is written.

    Returns them in time order, each with the features it was decided on, and the (ms, transaction id) to
    continue from, or None when the window reached the account's first transaction. The history before the
    window comes from per-day totals and the stored transactions within a day of its start: reads are bounded
    by `size`, not by the history's length.
    """
    since, window = transactions.newest_window(cur, account_id, before, size)
    if not window:
        return [], None
    needed = detector.needed_features
    history = (
        empty_history()
        if since is None
        else _history_before(cur, account_id, since, detector.window_reach_ms, needs_account_days(needed))
    )
    start = window[0].ts
    if "merchant_used_before" in needed:
        # Only what came before the window: the window's own transactions are added again as they are decided.
        used = account_stats.merchants_first_used(cur, {(account_id, t.merchant_id) for t in window if t.merchant_id})
        history.merchant_first = {m: first for m, first in used.get(account_id, {}).items() if first < start}
    if not needed.isdisjoint(ATTRIBUTE_FEATURES):
        if since is not None:
            low = since - detector.window_reach_ms + 1
            history.recent_values = transactions.account_values(cur, {account_id: [(low, since)]})[account_id]
        used_values = account_stats.values_first_used(cur, account_stats.first_use_wanted(window))
        history.first_use = {
            attribute: {value: first for value, first in firsts.items() if first < start}
            for attribute, firsts in used_values.get(account_id, {}).items()
        }
    reach = merchant_reach_ms(needed)
    at_merchants = transactions.merchant_windows(
        cur, window, reach, (account_id, start), from_day_start=not needed.isdisjoint(MERCHANT_DAY_FEATURES)
    )
    merchants.attach_history(cur, window, at_merchants, needed, detector.feature_settings)
    for t in window:  # the stored per-day counts hold the window's transactions, which are added again
        if t.merchant_id is not None and (days := at_merchants[t.merchant_id].days) and t.ts // DAY_MS in days:
            days[t.ts // DAY_MS][0] -= 1
    # As ingest decides now: with the lists as they stand and the snoozes in force.
    in_lists = list_memberships(cur, window, detector)
    judged_now = outcomes.for_batch(cur, window)
    decided = decisions_in_time_order(
        window, {account_id: history}, at_merchants, detector, None, in_lists, judged_now.snoozed
    )
    by_id = {
        d.transaction.transaction_id: DecidedTransaction(
            d.transaction, judged_now.judge(d.transaction, d.decision), d.features
        )
        for d in decided
    }
    judged = [by_id[t.transaction_id] for t in window]
    return judged, (None if since is None else (window[0].ts, window[0].transaction_id))


def _history_before(
    cur: psycopg2.extensions.cursor, account_id: int, since: int, reach_ms: int, with_days: bool = False
) -> AccountHistory:
    """The account as it stood just before `since`: per-day totals (per currency), plus the transactions within
    reach of it (and, `with_days`, the per-day totals of the 29 days before since's day and of its part before
    since)."""
    low = min(since - reach_ms + 1, since - since % DAY_MS)
    near = transactions.account_rows(cur, {account_id: [(low, since)]})[account_id]
    day = since // DAY_MS
    in_near = near.by_currency or ({} if near.currency is None else {near.currency: near})
    if with_days:
        first = day - LONGEST_DAY_WINDOW + 1
        by_currency = account_stats.day_totals_for_windows(cur, {account_id: (first, day)})[account_id]
        for currency, part in in_near.items():  # the part of since's day before since
            n, s = part.window(since, since - day * DAY_MS + 1)
            if n:
                by_currency.setdefault(currency, {})[day] = [n, s]
        near.use_days(first, by_currency)
    before, days = account_stats.daily_totals(cur, {account_id: (day, day)})[account_id]
    stored = CurrencyDailyTotals(before, days, near)
    currencies = sorted(set(before) | set(days) | set(in_near))
    whole = stored.before(since, currencies[0] if currencies else "")[0]
    by_currency_before = {c: stored.before(since, c)[1] for c in currencies}
    return AccountHistory(
        count=whole.count,
        first_ts=account_stats.first_ts(cur, account_id),
        last_ts=whole.last_ts,
        amounts={c: Amounts(p.count, p.sum_units, p.sum_sq_units, p.max_units) for c, p in by_currency_before.items()},
        tail=near,
        stored_before=constant_totals(whole, by_currency_before),
    )
