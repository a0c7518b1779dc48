"""The `transactions` table: each stored transaction with the decision taken when it was stored.

The write side COPYs decided rows in as they are decided; the read side reads decided transactions, pages of
them, and the bounded windows of history (per account and per merchant) that point-in-time features need.
Every such read is bounded by the detector's widest window (or one day) around the transactions being decided,
through the (account_id, ts) and (merchant_id, ts) indexes: never by the length of the history.
"""

from __future__ import annotations

import json
import re
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import islice
from math import ceil
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import psycopg2
import psycopg2.extensions

from txguard.domain import ATTRIBUTES, DecidedTransaction, Decision, Reason, Transaction
from txguard.features import ATTRIBUTE_FIELDS, RecentValues, Span, Timeline, spans_before
from txguard.storage import array_literal, execute_later

if TYPE_CHECKING:
    from txguard.detection import Decided

K = TypeVar("K", int, str)

SELECT_TRANSACTIONS = """SELECT transaction_id, account_id, txguard_ts_to_ms(ts), amount, currency, merchant_id,
                    fraud, score, reasons, rule_set_version, detector_version, model_version, model_score,
                    model_threshold, model_fallback, shadow_scores, outcome, channel, country, merchant_category,
                    card_id, ip_address, device_id, NULLIF(metadata, '{}'::jsonb) FROM transactions"""
# Empty metadata is no metadata (intake reads `{}` as absent); a row stored with `{}` before that reads as absent too,
# so that a retry of it is the duplicate it is.
# Where the decision's and the attributes' columns start and end in a row of SELECT_TRANSACTIONS.
_DECISION = slice(6, 17)
_ATTRIBUTES = slice(17, 24)

# The same, with the features each decision was taken on (NULL for rows stored before they were kept).
SELECT_WITH_FEATURES = SELECT_TRANSACTIONS.replace(" FROM transactions", ", features::text FROM transactions")
_FEATURES_COLUMN = 24

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
    "features",
    "detector_version",
    "model_version",
    "model_score",
    "model_threshold",
    "model_fallback",
    "shadow_scores",
    "outcome",
    *ATTRIBUTES,
)


def stored_by_id(cur: psycopg2.extensions.cursor, ids: list[int]) -> dict[int, tuple[Transaction, Decision]]:
    """The stored transactions among `ids`, each with its decision, by id (stored rows never change: no lock)."""
    cur.execute(SELECT_TRANSACTIONS + " WHERE transaction_id = ANY(%s::bigint[])", (array_literal(ids),))
    return {row[0]: (transaction_from_row(row), decision_from_row(row[_DECISION])) for row in cur.fetchall()}


def transaction_from_row(row: Sequence[Any]) -> Transaction:
    """A transaction from a row of SELECT_TRANSACTIONS (or of SELECT_WITH_FEATURES)."""
    return Transaction(*row[:6], *row[_ATTRIBUTES])


def decided_from_row(row: Sequence[Any]) -> DecidedTransaction:
    """A row of SELECT_TRANSACTIONS, or of SELECT_WITH_FEATURES (then with its features, numbers as Decimal)."""
    features = (
        json.loads(row[_FEATURES_COLUMN], parse_float=Decimal)
        if len(row) > _FEATURES_COLUMN and row[_FEATURES_COLUMN] is not None
        else None
    )
    return DecidedTransaction(transaction_from_row(row), decision_from_row(row[_DECISION]), features)


def decision_from_row(row: Sequence[Any]) -> Decision:
    """A decision from its columns (fraud, score, reasons, rule_set_version, detector_version, model_version,
    model_score, model_threshold, model_fallback, shadow_scores, outcome)."""
    fraud, score, reasons, version, detector_version, model_version, model_score, threshold, fallback, shadows = row[
        :10
    ]
    return Decision(
        fraud,
        score,
        tuple(Reason(r["rule_id"], r["mode"], Decimal(r["weight"]), r["explanation"]) for r in reasons),
        version,
        detector_version,
        model_version,
        model_score,
        threshold,
        fallback,
        None if shadows is None else {int(v): float(p) for v, p in shadows.items()},
        outcome=row[10] if len(row) > 10 else None,  # type: ignore[arg-type]  # None (stored before): from `fraud`
    )


# Merchants share this many advisory locks: a batch holds at most this many, whatever it contains, so a batch
# naming 5,000 merchants cannot exhaust the server's lock table (shared by every database on the server).
MERCHANT_LOCK_SLOTS = 64
_MERCHANT_LOCK_SPACE = 0x7478  # the first key of the two-key advisory locks: this service's merchants


def merchant_lock_slot(merchant_id: str) -> int:
    """The lock slot (0 to MERCHANT_LOCK_SLOTS - 1) of a merchant, the same in every process."""
    return zlib.crc32(merchant_id.encode()) % MERCHANT_LOCK_SLOTS


def lock_merchants(cur: psycopg2.extensions.cursor, merchants: set[str]) -> None:
    """Merchant windows span accounts: writers touching the same merchant take turns.

    Merchants are hashed onto a fixed set of slots, taken in slot order by every writer (no deadlock); two
    merchants sharing a slot only make their writers take turns. The locks are taken in front of the caller's next
    statement (execute_later): no round trip of their own.
    """
    if merchants:
        slots = sorted({merchant_lock_slot(m) for m in merchants})
        execute_later(
            cur,
            """SELECT pg_advisory_xact_lock(%s, slot) FROM (
                   SELECT slot FROM unnest(%s::int[]) AS slot ORDER BY slot) AS slots""",
            (_MERCHANT_LOCK_SPACE, array_literal(slots)),
        )


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


def copy_line(t: Transaction, d: Decision, features: str = "{}") -> str:
    """A new row with its decision (and the JSON object of its features) in COPY's text format: the definition of
    a row's text, which copy_lines writes for many rows at once."""
    # COPY's text format: backslashes in the JSON must be doubled.
    reasons = d.reasons_text.replace("\\", "\\\\") if d.reasons else "[]"
    return (
        f"{t.transaction_id}\t{t.account_id}\t{_timestamp_text(t.ts)}\t"
        f"{t.amount}\t{t.currency}\t{t.merchant_id if t.merchant_id is not None else _NULL}\t"
        f"{'t' if d.fraud else 'f'}\t{d.score}\t{reasons}\t{d.rule_set_version}\t{features}\t"
        f"{_NULL if d.detector_version is None else d.detector_version}\t{_model_columns(d)}\t{d.outcome}"
        f"{_NO_ATTRIBUTES if t[6:] == _NONE else _attribute_columns(t)}\n"
    )


def copy_lines(rows: Sequence[Decided]) -> str:
    """The rows (transaction, features, decision, recorded features JSON or None for {}) in COPY's text format, as
    copy_line writes each, joined.

    Built a chunk at a time: the timestamps in one vectorised conversion, and each decision's columns once per
    decision object (a detector shares one decision among the many transactions nothing was found about)."""
    stamps = _timestamp_texts([row[0][2] for row in rows])
    # A decision's columns before and after the features, by identity: `rows` keeps each decision alive meanwhile.
    around: dict[int, tuple[str, str]] = {}
    lines = []
    for (t, _, d, recorded), stamp in zip(rows, stamps, strict=True):
        columns = around.get(id(d))
        if columns is None:
            columns = around[id(d)] = _decision_columns(d)
        tid, account, _, amount, currency, merchant, *attributes = t
        lines.append(
            f"{tid}\t{account}\t{stamp}\t{amount}\t{currency}\t{_NULL if merchant is None else merchant}\t"
            f"{columns[0]}{'{}' if recorded is None else recorded}{columns[1]}"
            f"{_NO_ATTRIBUTES if attributes == _NO_ATTRIBUTE_LIST else _attribute_columns(t)}\n"
        )
    return "".join(lines)


def _decision_columns(d: Decision) -> tuple[str, str]:
    """A decision's columns in COPY's text format as copy_line writes them: those before the features column
    (each followed by a tab), and those after it (each after a tab)."""
    reasons = d.reasons_text.replace("\\", "\\\\") if d.reasons else "[]"
    return (
        f"{'t' if d.fraud else 'f'}\t{d.score}\t{reasons}\t{d.rule_set_version}\t",
        f"\t{_NULL if d.detector_version is None else d.detector_version}\t{_model_columns(d)}\t{d.outcome}",
    )


# The epoch ms from 1000-01-01 (four-digit years, which strftime and numpy write alike) to 10000-01-01.
_VECTOR_TS_FROM = -30_610_224_000_000
_VECTOR_TS_TO = 253_402_300_800_000


def _timestamp_texts(ms: list[int]) -> list[str]:
    """_timestamp_text of each of `ms` (epoch milliseconds), converted together."""
    if not ms or min(ms) < _VECTOR_TS_FROM or max(ms) >= _VECTOR_TS_TO:
        return [_timestamp_text(m) for m in ms]
    # numpy writes "YYYY-MM-DDTHH:MM:SS.mmm"; no other character of the text is a "T".
    text = "+00\n".join(np.datetime_as_string(np.array(ms, dtype=np.int64).view("datetime64[ms]"), unit="ms").tolist())
    return (text.replace("T", " ") + "+00").split("\n")


_NULL = "\\N"
_NONE = (None,) * len(ATTRIBUTES)
_NO_ATTRIBUTE_LIST = list(_NONE)
_NO_ATTRIBUTES = f"\t{_NULL}" * len(ATTRIBUTES)


def _attribute_columns(t: Transaction) -> str:
    """The attribute columns in COPY's text format, each after a tab. Validated attributes are tokens, codes and
    addresses (nothing to escape); metadata is JSON whose string values may hold anything."""
    *plain, metadata = t.attributes()
    text = "".join(f"\t{_NULL if value is None else value}" for value in plain)
    if metadata is None:
        return f"{text}\t{_NULL}"
    return f"{text}\t{_copy_text(json.dumps(metadata, ensure_ascii=False, separators=(',', ':')))}"


_NO_MODEL = f"{_NULL}\t{_NULL}\t{_NULL}\t{_NULL}\t{_NULL}"


def _model_columns(d: Decision) -> str:
    """model_version, model_score, model_threshold, model_fallback and shadow_scores in COPY's text format. Scores
    are written with repr(): the shortest text that reads back as the same double (the stored score is the one
    computed)."""
    if d.model_version is None and d.model_fallback is None and d.shadow_scores is None:
        return _NO_MODEL
    fallback = _NULL if d.model_fallback is None else _copy_text(d.model_fallback)
    shadows = (
        _NULL
        if d.shadow_scores is None
        else "{" + ",".join(f'"{v}":{p!r}' for v, p in sorted(d.shadow_scores.items())) + "}"
    )
    return (
        f"{_NULL if d.model_version is None else d.model_version}\t"
        f"{_NULL if d.model_score is None else repr(d.model_score)}\t"
        f"{_NULL if d.model_threshold is None else repr(d.model_threshold)}\t{fallback}\t{shadows}"
    )


def _copy_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


# Rows decided and written at a time by _DecidedRows: enough for numpy's conversion of their timestamps to pay, few
# enough that COPY gets its first rows early (some 60 kB of text with the features JSON ingest stores).
_LINES_PER_BUILD = 64


class _DecidedRows:
    """What COPY reads: rows decided on demand, a chunk per read, each decision also kept in `decisions`."""

    def __init__(self, decided: Iterator[Decided], decisions: dict[int, Decision]) -> None:
        self._decided = decided
        self._decisions = decisions
        self.failure: BaseException | None = None

    def read(self, size: int = -1) -> str:
        """The next rows' text, at least `size` characters of it (all the rows when `size` is negative or 0) unless
        the rows run out; "" after the last."""
        texts = []
        length = 0
        try:
            while True:
                chunk = list(islice(self._decided, _LINES_PER_BUILD))
                if not chunk:
                    break
                self._decisions.update((t.transaction_id, d) for t, _, d, _ in chunk)
                text = copy_lines(chunk)
                texts.append(text)
                length += len(text)
                if 0 < size <= length:
                    break
        except BaseException as exc:
            self.failure = exc  # psycopg2 reports it as a cancelled COPY; the caller raises the original
            raise
        return "".join(texts)


def copy_in(
    cur: psycopg2.extensions.cursor,
    decided: Iterator[Decided],
    count: int,
    decisions: dict[int, Decision],
    timeout_ms: int,
) -> None:
    """COPY the `count` rows in as they are decided, keeping each decision in `decisions` (by transaction id),
    each row with its `recorded` features JSON (detection.decisions_in_time_order's `record`: the features its
    detector read; {} when none was recorded) in its `features` column.

    The deciding happens inside the COPY statement, and statement_timeout is there to bound the database's
    own work. So this one statement gets the unit of work's timeout (`timeout_ms`, 0 for none) plus an
    allowance per row decided, and the timeout is set back afterwards; on a unit of work's cursor both settings
    travel with other statements (execute_later), costing no round trip. lock_timeout still bounds every wait
    on another transaction. A failure while deciding is raised as itself, not as a database error.

    Up to INSERT_AT_MOST rows are decided first and written by one INSERT of the same rows, in the same text
    (each value read by its column's input function, as COPY reads it), sent with the unit of work's next
    statement or its COMMIT (execute_later): a transaction decided alone costs no round trip of its own to write.
    """
    rows = _DecidedRows(decided, decisions)
    if count <= INSERT_AT_MOST:
        _insert_later(cur, rows.read())
        return
    if timeout_ms > 0:
        _set_statement_timeout(cur, timeout_ms + ceil(count * DECIDING_ALLOWANCE_MS_PER_ROW))
    try:
        cur.copy_expert(f"COPY transactions ({', '.join(_COLUMNS)}) FROM STDIN", rows, size=_COPY_CHUNK)
    except psycopg2.Error:
        # A failure while deciding is not a database problem (which clients would be told to retry).
        if rows.failure is not None:
            raise rows.failure from None
        raise
    if timeout_ms > 0:
        _set_statement_timeout(cur, timeout_ms)


# The largest batch written by INSERT rather than COPY (see copy_in): COPY's own round trip matters only when its
# rows are few; past that, COPY stores the first rows while the next ones are decided.
INSERT_AT_MOST = 16

_INSERT = f"INSERT INTO transactions ({', '.join(_COLUMNS)}) VALUES "  # noqa: S608 (constants)
_ROW = "(" + ", ".join(["%s"] * len(_COLUMNS)) + ")"
_COPY_ESCAPE = re.compile(r"\\(.)")
_COPY_ESCAPES = {"t": "\t", "n": "\n", "r": "\r"}


def _insert_later(cur: psycopg2.extensions.cursor, text: str) -> None:
    """INSERT the rows of `text` (COPY's text format, as copy_line writes them), with the next statement."""
    values: list[str | None] = []
    for line in text.split("\n")[:-1]:
        for field in line.split("\t"):
            values.append(None if field == _NULL else _COPY_ESCAPE.sub(lambda m: _COPY_ESCAPES.get(m[1], m[1]), field))
    rows = len(values) // len(_COLUMNS)
    execute_later(cur, _INSERT + ", ".join([_ROW] * rows), values)


def _set_statement_timeout(cur: psycopg2.extensions.cursor, milliseconds: int) -> None:
    execute_later(cur, "SELECT set_config('statement_timeout', %s, true)", (f"{milliseconds}ms",))


# About ten times what deciding a transaction takes on one full vCPU: room for a small function's share of one.
DECIDING_ALLOWANCE_MS_PER_ROW = 0.5


# Bytes per COPY message: small enough that the server starts storing early, large enough to keep calls few.
_COPY_CHUNK = 32_768


_ROWS_IN_SPANS = """
    SELECT b.key, b.low, rows.ts, rows.units, rows.currency,
           CASE WHEN rows.currency <> rows.last_currency THEN rows.currencies END{values}
    FROM unnest(%s::{key_type}[], %s::bigint[], %s::bigint[]) AS b(key, low, high)
    CROSS JOIN LATERAL (
        SELECT array_agg(s.ms) AS ts, array_agg(s.units) AS units,
               min(s.currency) AS currency, max(s.currency) AS last_currency,
               array_agg(s.currency) AS currencies{value_arrays}
        -- Aggregated in the order the subquery gives (the index's): one ordered scan, no sort per aggregate.
        FROM (SELECT {ms} AS ms, (t.amount * 10000)::bigint AS units, t.currency{value_columns}
              FROM transactions t
              WHERE t.{key_column} = b.key AND t.ts >= txguard_ms_to_ts(b.low) AND t.ts < txguard_ms_to_ts(b.high)
                    {extra}
              ORDER BY t.ts) AS s) AS rows"""
# A stored timestamp in epoch ms, as txguard_ts_to_ms gives it, for reads of many rows: date_part's float8 epoch
# (the µs count / 10^6, correctly rounded) times 1000, rounded to the nearest integer, is exactly the millisecond
# of a timestamp stored as whole milliseconds (txguard_ms_to_ts, COPY's text), as far as the year 70,000; the
# numeric arithmetic of extract(epoch ...) cost the server about as much as the rest of a tail read (1.5 µs a row).
_MS = "(date_part('epoch', t.ts) * 1000)::bigint"
_NO_VALUES = {"values": "", "value_arrays": "", "value_columns": "", "ms": _MS}
_ACCOUNT_ROWS = _ROWS_IN_SPANS.format(key_type="bigint", key_column="account_id", extra="", **_NO_VALUES)
# The same rows' attribute values (features.ATTRIBUTE_FIELDS) as well, in the same scan: the timestamps of the rows
# that have any, and each attribute's value (NULL when absent) in the same order.
_ACCOUNT_ROWS_AND_VALUES = _ROWS_IN_SPANS.format(
    key_type="bigint",
    key_column="account_id",
    extra="",
    ms=_MS,
    values=", rows.valued_ts, rows.card_ids, rows.countries, rows.device_ids",
    value_arrays=""",
               array_agg(s.ms) FILTER (WHERE s.valued) AS valued_ts,
               array_agg(s.card_id) FILTER (WHERE s.valued) AS card_ids,
               array_agg(s.country) FILTER (WHERE s.valued) AS countries,
               array_agg(s.device_id) FILTER (WHERE s.valued) AS device_ids""",
    value_columns=""", t.card_id, t.country, t.device_id,
                     (t.card_id IS NOT NULL OR t.country IS NOT NULL OR t.device_id IS NOT NULL) AS valued""",
)
# An account being re-decided adds its own transactions from `since` on as it goes: leave those out.
_MERCHANT_ROWS = _ROWS_IN_SPANS.format(
    key_type="text",
    key_column="merchant_id",
    extra="AND (t.account_id <> %s OR t.ts < txguard_ms_to_ts(%s))",
    **_NO_VALUES,
)


def account_rows(cur: psycopg2.extensions.cursor, spans: dict[int, list[Span]]) -> dict[int, Timeline]:
    """Each account's stored transactions inside its spans, as one sorted Timeline per account (split per currency
    when they are in several)."""
    keys, lows, highs = _flatten(spans)
    if not keys:
        return {}
    cur.execute(_ACCOUNT_ROWS, (array_literal(keys), array_literal(lows), array_literal(highs)))
    return _timelines(cur.fetchall(), spans)


def account_rows_and_values(
    cur: psycopg2.extensions.cursor, spans: dict[int, list[Span]]
) -> tuple[dict[int, Timeline], dict[int, dict[str, RecentValues]]]:
    """account_rows and account_values of the same spans, read in one scan of the rows (one statement): the
    attribute features read the same stored transactions as the windows."""
    values: dict[int, dict[str, RecentValues]] = {
        account: {name: RecentValues() for name in ATTRIBUTE_FIELDS} for account in spans
    }
    keys, lows, highs = _flatten(spans)
    if not keys:
        return {}, values
    cur.execute(_ACCOUNT_ROWS_AND_VALUES, (array_literal(keys), array_literal(lows), array_literal(highs)))
    rows = cur.fetchall()
    # Spans are disjoint: taken in order of their start, each one's rows in time order are the account's.
    for row in sorted((row for row in rows if row[6]), key=lambda row: (row[0], row[1])):
        _add_values(values[row[0]], zip(row[7], row[8], row[9], row[6], strict=True))
    return _timelines((row[:6] for row in rows), spans), values


def _add_values(
    recent: dict[str, RecentValues], rows: Iterable[tuple[str | None, str | None, str | None, int]]
) -> None:
    """Rows of (card_id, country, device_id, ms) in time order, added to each attribute's RecentValues."""
    for *found, ts in rows:
        for name, value in zip(ATTRIBUTE_FIELDS, found, strict=True):
            if value is not None:
                values = recent[name]
                values.ts.append(ts)
                values.values.append(value)


_ACCOUNT_VALUES = f"""
    SELECT b.key, t.card_id, t.country, t.device_id, {_MS}
    FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[]) AS b(key, low, high)
    JOIN transactions t ON t.account_id = b.key AND t.ts >= txguard_ms_to_ts(b.low) AND t.ts < txguard_ms_to_ts(b.high)
    WHERE t.card_id IS NOT NULL OR t.country IS NOT NULL OR t.device_id IS NOT NULL
    ORDER BY t.ts"""  # noqa: S608 (constants)


def account_values(cur: psycopg2.extensions.cursor, spans: dict[int, list[Span]]) -> dict[int, dict[str, RecentValues]]:
    """Each account's attribute values (features.ATTRIBUTE_FIELDS) of its stored transactions inside its spans,
    as RecentValues per attribute (every account of `spans` is a key; one read through (account_id, ts))."""
    result: dict[int, dict[str, RecentValues]] = {
        account: {name: RecentValues() for name in ATTRIBUTE_FIELDS} for account in spans
    }
    keys, lows, highs = _flatten(spans)
    if not keys:
        return result
    cur.execute(_ACCOUNT_VALUES, (array_literal(keys), array_literal(lows), array_literal(highs)))
    for account, card_id, country, device_id, ts in cur.fetchall():
        _add_values(result[account], [(card_id, country, device_id, ts)])
    return result


def merchant_windows(
    cur: psycopg2.extensions.cursor,
    transactions: Iterable[Transaction],
    reach_ms: int,
    skip_account_from: tuple[int, int] = (0, 0),
    from_day_start: bool = False,
) -> dict[str, Timeline]:
    """For the merchants of these transactions (sorted by time), their stored transactions (every account's)
    within reach_ms before each one (and from the start of its UTC day, if asked), as one sorted Timeline per
    merchant; empty ones, read from nowhere, when no rule looks at merchants' recent transactions (reach_ms 0).

    skip_account_from = (account, ms) leaves out that account's transactions from ms on (0: none left out).
    """
    times: dict[str, list[int]] = defaultdict(list)
    for t in transactions:
        if t.merchant_id is not None:
            times[t.merchant_id].append(t.ts)
    if reach_ms <= 0 and not from_day_start:
        return {m: Timeline(complete_from=0) for m in times}
    spans = {m: spans_before(ts, max(reach_ms, 1), from_day_start) for m, ts in times.items()}
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


_Piece = tuple[int, list[int], list[int], str | None, list[str] | None]


def _timelines(
    rows: Iterable[tuple[K, int, list[int] | None, list[int] | None, str | None, list[str] | None]],
    spans: dict[K, list[Span]],
) -> dict[K, Timeline]:
    # Each span's rows come with their one currency, or (only when they mix currencies) each row's.
    pieces: dict[K, list[_Piece]] = defaultdict(list)
    for key, low, ts, units, currency, currencies in rows:
        pieces[key].append((low, ts or [], units or [], currency, currencies))
    timelines = {}
    for key, key_spans in spans.items():
        ordered = sorted(pieces.get(key, []), key=lambda piece: piece[0])  # spans are disjoint: concatenating sorts
        ts = [t for piece in ordered for t in piece[1]]
        units = [u for piece in ordered for u in piece[2]]
        present = {piece[3] for piece in ordered if piece[3] is not None}
        if len(present) <= 1 and all(piece[4] is None for piece in ordered):
            timelines[key] = Timeline.from_sorted(key_spans[0][0], ts, units, next(iter(present), None))
        else:
            currencies = [c for p in ordered for c in (p[4] if p[4] is not None else [p[3] or ""] * len(p[1]))]
            timelines[key] = Timeline.mixed(key_spans[0][0], ts, units, currencies)
    return timelines


def account_exists(cur: psycopg2.extensions.cursor, account_id: int) -> bool:
    cur.execute("SELECT EXISTS (SELECT 1 FROM transactions WHERE account_id = %s)", (account_id,))
    row = cur.fetchone()
    return bool(row and row[0])


def any_flagged(cur: psycopg2.extensions.cursor, account_id: int) -> bool:
    cur.execute("SELECT EXISTS (SELECT 1 FROM transactions WHERE account_id = %s AND fraud)", (account_id,))
    row = cur.fetchone()
    return bool(row and row[0])


# How each outcome is found among an account's transactions: block through the partial index on `fraud` (the
# same rows), review through its own partial index, allow through (account_id, ts).
# (An outcome NULL is a row stored before outcomes: block when flagged, else allow.)
_OUTCOME_FILTER = {
    "block": " AND fraud",
    "review": " AND outcome = 'review'",
    "allow": " AND NOT fraud AND outcome IS DISTINCT FROM 'review'",
}


def flagged(
    cur: psycopg2.extensions.cursor,
    account_id: int,
    before: tuple[int, int] | None,
    limit: int,
    with_features: bool = False,
    outcome: str = "block",
) -> list[DecidedTransaction]:
    """Up to `limit` of the account's transactions stored with `outcome` (block: flagged as fraud), newest first,
    before (ms, transaction id); `with_features`: each with the features its decision was taken on."""
    condition, params = "", [account_id]
    if before is not None:
        condition = " AND (ts, transaction_id) < (txguard_ms_to_ts(%s), %s)"
        params.extend(before)
    cur.execute(
        (SELECT_WITH_FEATURES if with_features else SELECT_TRANSACTIONS)
        + " WHERE account_id = %s"
        + _OUTCOME_FILTER[outcome]
        + condition
        + " ORDER BY ts DESC, transaction_id DESC LIMIT %s",
        (*params, limit),
    )
    return [decided_from_row(row) for row in cur.fetchall()]


def listed(
    cur: psycopg2.extensions.cursor,
    account_id: int | None,
    from_ms: int | None,
    to_ms: int | None,
    after: tuple[int, int] | None,
    limit: int,
) -> list[DecidedTransaction]:
    """Up to `limit` stored transactions, oldest first, in [from, to) (epoch ms), after (ms, transaction id)."""
    filters = (
        ("account_id = %s", account_id),
        ("ts >= txguard_ms_to_ts(%s)", from_ms),
        ("ts < txguard_ms_to_ts(%s)", to_ms),
    )
    conditions = [condition for condition, value in filters if value is not None]
    params = [value for _, value in filters if value is not None]
    if after is not None:
        conditions.append("(ts, transaction_id) > (txguard_ms_to_ts(%s), %s)")
        params.extend(after)
    where = (" WHERE " + " AND ".join(conditions)) if conditions else ""
    cur.execute(SELECT_TRANSACTIONS + where + " ORDER BY ts, transaction_id LIMIT %s", (*params, limit))
    return [decided_from_row(row) for row in cur.fetchall()]


def newest_window(
    cur: psycopg2.extensions.cursor, account_id: int, before: tuple[int, int] | None, size: int
) -> tuple[int | None, list[Transaction]]:
    """The account's newest `size` transactions before (ms, transaction id) (None: from the newest), plus any
    sharing the oldest one's timestamp, in time order; and that timestamp (None when the window reaches the
    account's first transaction)."""
    # Constant statements: a NULL bound folds away when the planner sees the parameters. The window starts at
    # the timestamp of the size-th newest transaction, found in the (account_id, ts) index order; all of the
    # transactions sharing that timestamp are in the window.
    bound = (None, None) if before is None else before
    cur.execute(
        """SELECT txguard_ts_to_ms(ts) FROM transactions
           WHERE account_id = %s AND (%s::bigint IS NULL OR (ts, transaction_id) < (txguard_ms_to_ts(%s), %s))
           ORDER BY ts DESC OFFSET %s LIMIT 1""",
        (account_id, bound[0], bound[0], bound[1], size - 1),
    )
    oldest = cur.fetchone()
    since: int | None = oldest[0] if oldest else None
    cur.execute(
        SELECT_TRANSACTIONS
        + """ WHERE account_id = %s AND (%s::bigint IS NULL OR (ts, transaction_id) < (txguard_ms_to_ts(%s), %s))
              AND ts >= txguard_ms_to_ts(%s) ORDER BY ts, transaction_id""",
        (account_id, bound[0], bound[0], bound[1], 0 if since is None else since),
    )
    return since, [transaction_from_row(row) for row in cur.fetchall()]


def in_time_order(
    cur: psycopg2.extensions.cursor, after: tuple[int, int] | None, until_ms: int | None, limit: int
) -> list[DecidedTransaction]:
    """Up to `limit` stored transactions of every account, oldest first, after (ms, transaction id), before
    `until_ms` (None: no bound)."""
    condition, params = "", list[int]()
    if after is not None:
        condition = " WHERE (ts, transaction_id) > (txguard_ms_to_ts(%s), %s)"
        params.extend(after)
    if until_ms is not None:
        condition += (" AND" if condition else " WHERE") + " ts < txguard_ms_to_ts(%s)"
        params.append(until_ms)
    cur.execute(SELECT_TRANSACTIONS + condition + " ORDER BY ts, transaction_id LIMIT %s", (*params, limit))
    return [decided_from_row(row) for row in cur.fetchall()]


@dataclass(frozen=True, slots=True)
class ScoredRow:
    """What an evaluation reads of a stored decision: ids, time (epoch ms), score 0–1, flag, detector version (the
    rule set's version for a decision stored before detector versions), the champion's probability 0–1 (None
    when no model scored it), which breaks ties of the four-place score in rankings, and the outcome."""

    transaction_id: int
    account_id: int
    ts: int
    score: float
    fraud: bool
    detector_version: int
    model_score: float | None = None
    outcome: str = "allow"  # allow, review or block


def scored_in_period(
    cur: psycopg2.extensions.cursor,
    from_ms: int | None,
    to_ms: int | None,
    id_ranges: Sequence[tuple[int, int]],
    chunk: int = 20_000,
) -> Iterator[list[ScoredRow]]:
    """The stored decisions with from_ms <= ts < to_ms (None: unbounded) and, when `id_ranges` are given, a
    transaction id in one of the [low, high) ranges; in (ts, transaction id) order, `chunk` rows at a time
    (keyset pages: no long-held cursor, no OFFSET)."""
    lows = [low for low, _ in id_ranges]
    highs = [high for _, high in id_ranges]
    after: tuple[int, int] | None = None
    while True:
        cur.execute(
            """SELECT transaction_id, account_id, txguard_ts_to_ms(ts), score::float8, fraud,
                      coalesce(detector_version, rule_set_version), model_score,
                      coalesce(outcome, CASE WHEN fraud THEN 'block' ELSE 'allow' END)
               FROM transactions
               WHERE (%(from)s::bigint IS NULL OR ts >= txguard_ms_to_ts(%(from)s))
                 AND (%(to)s::bigint IS NULL OR ts < txguard_ms_to_ts(%(to)s))
                 AND (%(after_ts)s::bigint IS NULL
                      OR (ts, transaction_id) > (txguard_ms_to_ts(%(after_ts)s), %(after_id)s::bigint))
                 AND (cardinality(%(lows)s::bigint[]) = 0 OR EXISTS (
                      SELECT FROM unnest(%(lows)s::bigint[], %(highs)s::bigint[]) AS r(low, high)
                      WHERE transaction_id >= r.low AND transaction_id < r.high))
               ORDER BY ts, transaction_id
               LIMIT %(chunk)s""",
            {
                "from": from_ms,
                "to": to_ms,
                "after_ts": None if after is None else after[0],
                "after_id": None if after is None else after[1],
                "lows": lows,
                "highs": highs,
                "chunk": chunk,
            },
        )
        rows = [ScoredRow(*row) for row in cur.fetchall()]
        if not rows:
            return
        yield rows
        after = (rows[-1].ts, rows[-1].transaction_id)


def decided_with_features(
    cur: psycopg2.extensions.cursor,
    from_ms: int | None,
    to_ms: int | None,
    after: tuple[int, int] | None,
    limit: int,
) -> list[DecidedTransaction]:
    """Up to `limit` stored transactions of every account in [from_ms, to_ms) (epoch ms; None: unbounded), oldest
    first, after (ms, transaction id): each with the decision taken at ingest and the features it was taken on
    (`features`: name -> Decimal, int or None; None for rows stored before features were kept). What training and
    windowed evaluation read: exactly what serving saw. Reads through the (ts, transaction_id) index."""
    conditions, params = [], list[int]()
    if from_ms is not None:
        conditions.append("ts >= txguard_ms_to_ts(%s)")
        params.append(from_ms)
    if to_ms is not None:
        conditions.append("ts < txguard_ms_to_ts(%s)")
        params.append(to_ms)
    if after is not None:
        conditions.append("(ts, transaction_id) > (txguard_ms_to_ts(%s), %s)")
        params.extend(after)
    where = (" WHERE " + " AND ".join(conditions)) if conditions else ""
    cur.execute(SELECT_WITH_FEATURES + where + " ORDER BY ts, transaction_id LIMIT %s", (*params, limit))
    return [decided_from_row(row) for row in cur.fetchall()]
