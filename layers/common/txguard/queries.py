"""Reading stored transactions and decisions: the account view of GET /is_fraud, the listing of
GET /store_data, and the point-in-time recomputation of an account's history with the current rules."""

from __future__ import annotations

import base64
import binascii
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2.extensions

from txguard import literals
from txguard.detection import Transaction, decide_in_time_order, empty_history
from txguard.features import LONGEST_WINDOW_MS, Timeline, to_units
from txguard.ingest import decision_from_row, transaction_from_row
from txguard.rule_engine import CompiledRuleSet, Decision


class InvalidCursor(ValueError):
    pass


@dataclass(frozen=True)
class Judged:
    transaction: Transaction
    decision: Decision


@dataclass(frozen=True)
class Page:
    items: list[Judged]
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
        raise InvalidCursor(f"cursor {cursor[:100]!r} is not one this API returned") from None
    return ts, tid


SELECT_TRANSACTIONS = """SELECT transaction_id, account_id, txguard_ts_to_ms(ts), amount, currency, merchant_id,
                    fraud, score, reasons, rule_set_version FROM transactions"""


def _judged(row: Sequence[Any]) -> Judged:
    return Judged(transaction_from_row(row), decision_from_row(row[6:]))


def account_exists(cur: psycopg2.extensions.cursor, account_id: int) -> bool:
    cur.execute("SELECT EXISTS (SELECT 1 FROM transactions WHERE account_id = %s)", (account_id,))
    row = cur.fetchone()
    return bool(row and row[0])


def any_flagged(cur: psycopg2.extensions.cursor, account_id: int) -> bool:
    cur.execute("SELECT EXISTS (SELECT 1 FROM transactions WHERE account_id = %s AND fraud)", (account_id,))
    row = cur.fetchone()
    return bool(row and row[0])


def flagged_transactions(cur: psycopg2.extensions.cursor, account_id: int, limit: int, cursor: str | None) -> Page:
    """The account's stored decisions that flagged fraud, newest first."""
    condition, params = "", [account_id]
    if cursor:
        condition = " AND (ts, transaction_id) < (txguard_ms_to_ts(%s), %s)"
        params.extend(decode_cursor(cursor))
    cur.execute(
        SELECT_TRANSACTIONS
        + " WHERE account_id = %s AND fraud"
        + condition
        + " ORDER BY ts DESC, transaction_id DESC LIMIT %s",
        (*params, limit + 1),
    )
    return _page([_judged(row) for row in cur.fetchall()], limit)


def list_transactions(
    cur: psycopg2.extensions.cursor,
    account_id: int | None,
    from_ms: int | None,
    to_ms: int | None,
    limit: int,
    cursor: str | None,
) -> Page:
    """Stored transactions with their decisions, oldest first, [from, to) in epoch milliseconds."""
    conditions, params = [], []
    if account_id is not None:
        conditions.append("account_id = %s")
        params.append(account_id)
    if from_ms is not None:
        conditions.append("ts >= txguard_ms_to_ts(%s)")
        params.append(from_ms)
    if to_ms is not None:
        conditions.append("ts < txguard_ms_to_ts(%s)")
        params.append(to_ms)
    if cursor:
        after = decode_cursor(cursor)
        conditions.append("(ts, transaction_id) > (txguard_ms_to_ts(%s), %s)")
        params.extend(after)
    where = (" WHERE " + " AND ".join(conditions)) if conditions else ""
    cur.execute(SELECT_TRANSACTIONS + where + " ORDER BY ts, transaction_id LIMIT %s", (*params, limit + 1))
    return _page([_judged(row) for row in cur.fetchall()], limit)


def _page(items: list[Judged], limit: int) -> Page:
    if len(items) <= limit:
        return Page(items, None)
    last = items[limit - 1].transaction
    return Page(items[:limit], encode_cursor(last.ts, last.transaction_id))


def newest_first_page(judged: list[Judged], limit: int, cursor: str | None) -> Page:
    """A page of already-sorted (newest first) decisions, the same cursor as flagged_transactions."""
    if cursor:
        before = decode_cursor(cursor)
        judged = [j for j in judged if (j.transaction.ts, j.transaction.transaction_id) < before]
    return _page(judged, limit)


def recompute_account(cur: psycopg2.extensions.cursor, account_id: int, rules: CompiledRuleSet) -> list[Judged]:
    """Every transaction of the account re-decided with `rules`, each on what came before it; nothing is written."""
    cur.execute(SELECT_TRANSACTIONS + " WHERE account_id = %s ORDER BY ts, transaction_id", (account_id,))
    history = [transaction_from_row(row) for row in cur.fetchall()]
    if not history:
        return []
    merchants = _other_accounts_at_merchants(cur, account_id, history)
    decisions = decide_in_time_order(history, {account_id: empty_history()}, merchants, rules)
    return [Judged(t, decisions[t.transaction_id]) for t in history]


def _other_accounts_at_merchants(
    cur: psycopg2.extensions.cursor, account_id: int, history: list[Transaction]
) -> dict[str, Timeline]:
    """Other accounts' transactions at this account's merchants, over the span the windows can see."""
    spans: dict[str, tuple[int, int]] = {}
    for t in history:
        if t.merchant_id is not None:
            low, high = spans.get(t.merchant_id, (t.ts, t.ts))
            spans[t.merchant_id] = (min(low, t.ts), max(high, t.ts))
    if not spans:
        return {}
    names = list(spans)
    cur.execute(
        """SELECT b.merchant_id, txguard_ts_to_ms(t.ts), t.amount
           FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) AS b(merchant_id, since, until)
           JOIN transactions t ON t.merchant_id = b.merchant_id
                AND t.ts >= txguard_ms_to_ts(b.since) AND t.ts < txguard_ms_to_ts(b.until)
           WHERE t.account_id <> %s""",
        (names, [spans[m][0] - LONGEST_WINDOW_MS for m in names], [spans[m][1] for m in names], account_id),
    )
    rows: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for merchant_id, ts, amount in cur.fetchall():
        rows[merchant_id].append((ts, to_units(amount)))
    return {m: Timeline.of(-(2**62), rows[m]) for m in names}
