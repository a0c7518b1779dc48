"""Storing transactions, each with the decision taken on what came before it, in one database transaction.

For a batch: lock the accounts' running totals (and the merchants), find which ids are already stored,
read only the recent tail of each account and merchant, then decide every new transaction in time order
in memory while COPY streams the decided rows in (PostgreSQL stores one chunk while the next is being
decided), and write the new totals. Nothing is written if anything conflicts.
Cost per transaction does not grow with the account's history; see features.py.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from math import ceil
from typing import Any

import psycopg2
import psycopg2.extensions

from txguard.detection import Decided, Detector, decisions_in_time_order
from txguard.domain import Decision, Reason, StoreResult, Transaction
from txguard.errors import BadInput, Conflict
from txguard.features import DAY_MS, AccountHistory, DailyTotals, Prior, Timeline, merchant_reach_ms, to_units
from txguard.history import (
    WIDE,
    Span,
    account_rows,
    add_to_daily_totals,
    array_literal,
    daily_totals,
    merchant_windows,
    spans_before,
)
from txguard.settings import DatabaseSettings


class DuplicateIdConflict(Conflict):
    """Ids already stored with different content; nothing was stored."""

    code = "transaction_id_conflict"

    def __init__(self, conflicts: list[tuple[int, int, list[str]]], in_request: bool = False) -> None:
        # (index in the request, transaction id, differing fields)
        self.conflicts = conflicts
        self.in_request = in_request
        ids = ", ".join(str(tid) for _, tid, _ in conflicts[:5])
        super().__init__(
            f"transaction ids already used with different content: {ids}",
            [
                {"index": index, "field": "transaction_id", "value": tid, "reason": f"differs in {', '.join(fields)}"}
                for index, tid, fields in conflicts
            ],
        )
        self.message = (
            f"transaction_id {', '.join(str(tid) for _, tid, _ in conflicts[:10])} is already stored with "
            "different content; nothing was stored"
        )


class DuplicateIdInRequest(BadInput, DuplicateIdConflict):
    """One request names an id twice with different content: bad input, whatever is stored; nothing was stored."""

    code = "validation_error"

    def __init__(self, conflicts: list[tuple[int, int, list[str]]]) -> None:
        super().__init__(conflicts, in_request=True)
        self.message = "the same transaction_id appears twice with different content"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_COLUMNS = (
    "transaction_id",
    "account_id",
    "ts",
    "amount",
    "currency",
    "merchant_id",
    "fraud",
    "score",
    "reasons",
    "rule_set_version",
)


def store_transactions(
    cur: psycopg2.extensions.cursor, batch: Sequence[Transaction], detector: Detector
) -> list[StoreResult]:
    """Store each transaction exactly once with the decision `detector` takes on it; results in request order."""
    first_index, repeats, in_request_conflicts = _index_request(batch)
    if in_request_conflicts:
        raise DuplicateIdInRequest(in_request_conflicts)

    # Stored transactions never change, so what this read finds needs no lock: a batch of replays is answered
    # without waiting for any writer, and a conflict is refused before taking any lock.
    stored = _already_stored(cur, list(first_index))
    _refuse_conflicts(batch, stored)
    stats: dict[int, AccountHistory] = {}
    if len(stored) < len(first_index):
        pending = [batch[i] for i in first_index.values() if batch[i].transaction_id not in stored]
        stats = _lock_accounts(cur, sorted({t.account_id for t in pending}))
        _lock_merchants(cur, {t.merchant_id for t in pending if t.merchant_id is not None})
        # Under the locks, look again for the rest: a batch for the same accounts may have stored them meanwhile.
        stored.update(_already_stored(cur, [t.transaction_id for t in pending]))
        _refuse_conflicts(batch, stored)

    new = sorted(
        (batch[i] for i in first_index.values() if batch[i].transaction_id not in stored),
        key=lambda t: (t.ts, t.transaction_id),
    )
    decisions: dict[int, Decision] = {}
    if new:
        _load_histories(cur, new, stats, detector.window_reach_ms)
        merchants = merchant_windows(cur, new, merchant_reach_ms(detector.needed_features))
        _copy_in(cur, decisions_in_time_order(new, stats, merchants, detector), len(new), decisions)
        _write_totals(cur, stats, {t.account_id for t in new})
        add_to_daily_totals(cur, new)

    results = []
    for index, t in enumerate(batch):
        if t.transaction_id in stored:
            original, decision = stored[t.transaction_id]
            results.append(StoreResult(original, "duplicate", decision))
        elif index in repeats:
            results.append(StoreResult(t, "duplicate", decisions[t.transaction_id]))
        else:
            results.append(StoreResult(t, "stored", decisions[t.transaction_id]))
    return results


def _refuse_conflicts(batch: Sequence[Transaction], stored: dict[int, tuple[Transaction, Decision]]) -> None:
    conflicts = [
        (index, t.transaction_id, differing)
        for index, t in enumerate(batch)
        if t.transaction_id in stored and (differing := t.same_content(stored[t.transaction_id][0]))
    ]
    if conflicts:
        raise DuplicateIdConflict(conflicts)


def _index_request(
    batch: Sequence[Transaction],
) -> tuple[dict[int, int], set[int], list[tuple[int, int, list[str]]]]:
    first_index: dict[int, int] = {}
    repeats: set[int] = set()
    conflicts = []
    for index, t in enumerate(batch):
        seen = first_index.get(t.transaction_id)
        if seen is None:
            first_index[t.transaction_id] = index
            continue
        differing = t.same_content(batch[seen])
        if differing:
            conflicts.append((index, t.transaction_id, differing))
        else:
            repeats.add(index)
    return first_index, repeats, conflicts


def _lock_accounts(cur: psycopg2.extensions.cursor, accounts: list[int]) -> dict[int, AccountHistory]:
    # Rows are locked in account order by every writer, so concurrent batches cannot deadlock.
    cur.execute(
        "INSERT INTO account_stats (account_id) SELECT unnest(%s::bigint[]) ON CONFLICT DO NOTHING",
        (array_literal(accounts),),
    )
    cur.execute(
        """SELECT account_id, tx_count, amount_sum, amount_sum_sq, amount_max,
                  txguard_ts_to_ms(amount_max_ts), txguard_ts_to_ms(first_ts), txguard_ts_to_ms(last_ts)
           FROM account_stats WHERE account_id = ANY(%s::bigint[]) ORDER BY account_id FOR UPDATE""",
        (array_literal(accounts),),
    )
    histories = {}
    for account_id, count, total, total_sq, max_amount, max_ts, first_ts, last_ts in cur.fetchall():
        histories[account_id] = AccountHistory(
            count=count,
            sum_units=int(total.scaleb(4, WIDE)),
            sum_sq_units=int(total_sq.scaleb(8, WIDE)),
            max_units=None if max_amount is None else to_units(max_amount),
            max_ts=max_ts,
            first_ts=first_ts,
            last_ts=last_ts,
            tail=Timeline(complete_from=0),
            stored_before=_nothing_loaded,
        )
    return histories


# Merchants share this many advisory locks: a batch holds at most this many, whatever it contains, so a batch
# naming 5,000 merchants cannot exhaust the server's lock table (shared by every database on the server).
MERCHANT_LOCK_SLOTS = 64
_MERCHANT_LOCK_SPACE = 0x7478  # the first key of the two-key advisory locks: this service's merchants


def merchant_lock_slot(merchant_id: str) -> int:
    """The lock slot (0 to MERCHANT_LOCK_SLOTS - 1) of a merchant, the same in every process."""
    return zlib.crc32(merchant_id.encode()) % MERCHANT_LOCK_SLOTS


def _lock_merchants(cur: psycopg2.extensions.cursor, merchants: set[str]) -> None:
    """Merchant windows span accounts: writers touching the same merchant take turns.

    Merchants are hashed onto a fixed set of slots, taken in slot order by every writer (no deadlock); two
    merchants sharing a slot only make their writers take turns.
    """
    if merchants:
        slots = sorted({merchant_lock_slot(m) for m in merchants})
        cur.execute(
            """SELECT pg_advisory_xact_lock(%s, slot) FROM (
                   SELECT slot FROM unnest(%s::int[]) AS slot ORDER BY slot) AS slots""",
            (_MERCHANT_LOCK_SPACE, array_literal(slots)),
        )


def _already_stored(cur: psycopg2.extensions.cursor, ids: list[int]) -> dict[int, tuple[Transaction, Decision]]:
    cur.execute(
        """SELECT transaction_id, account_id, txguard_ts_to_ms(ts), amount, currency, merchant_id,
                  fraud, score, reasons, rule_set_version
           FROM transactions WHERE transaction_id = ANY(%s::bigint[])""",
        (array_literal(ids),),
    )
    return {row[0]: (transaction_from_row(row), decision_from_row(row[6:])) for row in cur.fetchall()}


def transaction_from_row(row: Sequence[Any]) -> Transaction:
    tid, account_id, ts, amount, currency, merchant_id = row[:6]
    return Transaction(tid, account_id, ts, amount, currency, merchant_id)


def decision_from_row(row: Sequence[Any]) -> Decision:
    fraud, score, reasons, version = row
    return Decision(
        fraud,
        score,
        tuple(Reason(r["rule_id"], r["mode"], Decimal(r["weight"]), r["explanation"]) for r in reasons),
        version,
    )


def _nothing_loaded(t: int) -> Prior:
    raise ValueError("the account's history was not loaded")


def _load_histories(
    cur: psycopg2.extensions.cursor, new: list[Transaction], histories: dict[int, AccountHistory], reach_ms: int
) -> None:
    """Load what deciding each account's new transactions needs, whatever their timestamps.

    An account whose new transactions are all newer than everything stored (the usual case) is decided on its
    running totals and the stored transactions within the rules' widest window before its earliest new one. For
    an account with late or back-dated arrivals, the history before each new transaction comes from per-day
    totals plus the stored transactions from the start of that transaction's day (and within the window) up to
    it: a bounded read per new transaction, however much history lies after it.
    """
    times: dict[int, list[int]] = defaultdict(list)
    for t in new:  # sorted by time
        times[t.account_id].append(t.ts)
    spans: dict[int, list[Span]] = {}
    late: dict[int, tuple[int, int]] = {}
    for account_id, account_times in times.items():
        history, earliest = histories[account_id], account_times[0]
        if history.last_ts is not None and history.last_ts >= earliest:
            late[account_id] = (earliest // DAY_MS, account_times[-1] // DAY_MS)
            spans[account_id] = spans_before(account_times, reach_ms, from_day_start=True)
        else:
            totals = Prior(history.count, history.sum_units, history.sum_sq_units, history.max_units, history.last_ts)
            history.stored_before = _constant(totals)
            history.tail = Timeline(complete_from=earliest - reach_ms + 1)
            # Every stored transaction is older than the earliest new one: only those within reach of it matter.
            if history.last_ts is not None and history.last_ts > earliest - reach_ms:
                spans[account_id] = [(earliest - reach_ms + 1, earliest)]
    near = account_rows(cur, spans)
    days = daily_totals(cur, late)
    for account_id, timeline in near.items():
        history = histories[account_id]
        if account_id in late:
            stored = Timeline.from_sorted(timeline.complete_from, list(timeline.ts), list(timeline.units))
            history.stored_before = DailyTotals(*days[account_id], stored).before
        history.tail = timeline


def _constant(value: Prior) -> Callable[[int], Prior]:
    return lambda _t: value


_DAYS: dict[int, str] = {}


def _timestamp_text(ms: int) -> str:
    """Epoch milliseconds as an ISO timestamp PostgreSQL reads, quickly (one date per day is formatted)."""
    day, rest = divmod(ms, 86_400_000)
    date = _DAYS.get(day)
    if date is None:
        date = _DAYS[day] = (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%d")
    seconds, millis = divmod(rest, 1000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return f"{date} {hour:02d}:{minute:02d}:{second:02d}.{millis:03d}+00"


def copy_line(t: Transaction, d: Decision) -> str:
    """A new row with its decision in COPY's text format."""
    # COPY's text format: backslashes in the JSON must be doubled.
    reasons = d.reasons_text.replace("\\", "\\\\") if d.reasons else "[]"
    return (
        f"{t.transaction_id}\t{t.account_id}\t{_timestamp_text(t.ts)}\t"
        f"{t.amount}\t{t.currency}\t{t.merchant_id if t.merchant_id is not None else chr(92) + 'N'}\t"
        f"{'t' if d.fraud else 'f'}\t{d.score}\t{reasons}\t{d.rule_set_version}\n"
    )


class _DecidedRows:
    """What COPY reads: rows decided on demand, a chunk per read, each decision also kept in `decisions`."""

    def __init__(self, decided: Iterator[Decided], decisions: dict[int, Decision]) -> None:
        self._decided = decided
        self._decisions = decisions
        self.failure: BaseException | None = None

    def read(self, size: int = -1) -> str:
        lines = []
        length = 0
        try:
            for t, _, d in self._decided:
                self._decisions[t.transaction_id] = d
                line = copy_line(t, d)
                lines.append(line)
                length += len(line)
                if 0 < size <= length:
                    break
        except BaseException as exc:
            self.failure = exc  # psycopg2 reports it as a cancelled COPY; the caller raises the original
            raise
        return "".join(lines)


def _copy_in(
    cur: psycopg2.extensions.cursor,
    decided: Iterator[Decided],
    count: int,
    decisions: dict[int, Decision],
) -> None:
    """COPY the rows in as they are decided.

    The deciding happens inside the COPY statement, and statement_timeout is there to bound the database's
    own work. So this one statement gets the configured timeout plus an allowance per row decided, and the
    timeout is set back afterwards. lock_timeout still bounds every wait on another transaction.
    """
    timeout_ms = DatabaseSettings.from_env().statement_timeout_ms
    if timeout_ms > 0:
        _set_statement_timeout(cur, timeout_ms + ceil(count * _DECIDING_ALLOWANCE_MS_PER_ROW))
    rows = _DecidedRows(decided, decisions)
    try:
        cur.copy_expert(f"COPY transactions ({', '.join(_COLUMNS)}) FROM STDIN", rows, size=_COPY_CHUNK)
    except psycopg2.Error:
        # A failure while deciding is not a database problem (which clients would be told to retry).
        if rows.failure is not None:
            raise rows.failure from None
        raise
    if timeout_ms > 0:
        _set_statement_timeout(cur, timeout_ms)


def _set_statement_timeout(cur: psycopg2.extensions.cursor, milliseconds: int) -> None:
    cur.execute("SELECT set_config('statement_timeout', %s, true)", (f"{milliseconds}ms",))


# About ten times what deciding a transaction takes on one full vCPU: room for a small function's share of one.
_DECIDING_ALLOWANCE_MS_PER_ROW = 0.5


# Bytes per COPY message: small enough that the server starts storing early, large enough to keep calls few.
_COPY_CHUNK = 32_768


def _write_totals(cur: psycopg2.extensions.cursor, histories: dict[int, AccountHistory], changed: set[int]) -> None:
    accounts = sorted(changed)
    h = [histories[a] for a in accounts]
    cur.execute(
        """UPDATE account_stats AS a SET
               tx_count = v.tx_count, amount_sum = v.sum_units * 0.0001, amount_sum_sq = v.sum_sq_units * 0.00000001,
               amount_max = v.max_units * 0.0001, amount_max_ts = txguard_ms_to_ts(v.amount_max_ts),
               first_ts = txguard_ms_to_ts(v.first_ts), last_ts = txguard_ms_to_ts(v.last_ts)
           FROM unnest(%s::bigint[], %s::bigint[], %s::numeric[], %s::numeric[], %s::numeric[],
                       %s::bigint[], %s::bigint[], %s::bigint[])
                AS v(account_id, tx_count, sum_units, sum_sq_units, max_units, amount_max_ts, first_ts, last_ts)
           WHERE a.account_id = v.account_id""",
        (
            array_literal(accounts),
            array_literal(x.count for x in h),
            array_literal(x.sum_units for x in h),
            array_literal(x.sum_sq_units for x in h),
            array_literal(x.max_units for x in h),
            array_literal(x.max_ts for x in h),
            array_literal(x.first_ts for x in h),
            array_literal(x.last_ts for x in h),
        ),
    )
