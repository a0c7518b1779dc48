"""The `labels` table (append-only, migration 0009) and `merchant_label_daily`, the per-day sums of the view
`merchant_label_steps` that this module keeps equal to it.

Writing labels and ingesting transactions meet on one advisory lock, `LABELS_LOCK_KEY`: label writes take it
exclusive, ingest takes it shared before it looks for labels of its new transactions. Either the label write sees
the transaction stored (ingest committed first: the write adds its steps), or ingest sees the label (the write
committed first: ingest adds its steps); never neither, never both.

Steps (the view's definition, computed here in Python from a transaction's label history): the labels of one
UTC day (of labelled_at) are reduced to that day's last one by (labelled_at, label_id); walking the days in order,
the step on a day is fraud (0/1) minus the previous day's, 0 before the first. A non-zero step counts for the
transaction's merchant, on (its tx day, the label's known day).
"""

from __future__ import annotations

import base64
import binascii
from collections import defaultdict
from collections.abc import Iterable, Sequence

import psycopg2.extensions

from txguard import literals
from txguard.domain import FraudLabel, LabelResult, StoredLabel, Transaction
from txguard.errors import Malformed

# Any fixed number, distinct from migrate's key (a single bigint key never meets the two-key merchant slots).
LABELS_LOCK_KEY = 0x7478_6775_6172_6409
DAY_MS = 86_400_000
_PLACEHOLDER_IDS = 2**62  # label ids of a batch's new labels before the insert numbers them

History = list[tuple[int, int, bool]]  # (labelled_at ms, label_id, fraud), any order
Steps = dict[int, int]  # known day -> +1 / -1

# Every query below returns a StoredLabel's columns in its order (label_id ... received_at).


class InvalidLabelCursor(Malformed, ValueError):
    """A cursor GET /labels did not issue."""

    code = "invalid_cursor"

    def __init__(self, cursor: str) -> None:
        message = f"cursor {cursor[:100]!r} is not one this API returned"
        super().__init__(message, [{"index": None, "field": "cursor", "value": cursor[:200], "reason": message}])


def encode_cursor(label_id: int) -> str:
    return base64.urlsafe_b64encode(f"l{label_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not text.startswith("l"):
            raise ValueError(text)
        return literals.integer_from_text(text[1:], 0, 2**63 - 1)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidLabelCursor(cursor) from None


def steps(history: Iterable[tuple[int, int, bool]]) -> Steps:
    """A transaction's label history as day-by-day steps (see the module docstring): {known day: +1 or -1}."""
    last_of_day: dict[int, tuple[int, int, bool]] = {}
    for labelled_at, label_id, fraud in history:
        day = labelled_at // DAY_MS
        if day not in last_of_day or (labelled_at, label_id) > last_of_day[day][:2]:
            last_of_day[day] = (labelled_at, label_id, fraud)
    result: Steps = {}
    previous = 0
    for day in sorted(last_of_day):
        value = int(last_of_day[day][2])
        if value != previous:
            result[day] = value - previous
        previous = value
    return result


def _histories(cur: psycopg2.extensions.cursor, transaction_ids: Sequence[int]) -> dict[int, list[StoredLabel]]:
    cur.execute(
        """SELECT l.label_id, l.transaction_id, l.fraud, l.source, txguard_ts_to_ms(l.labelled_at), l.reason,
                  txguard_ts_to_ms(l.received_at)
           FROM labels l WHERE l.transaction_id = ANY(%s::bigint[]) ORDER BY l.label_id""",
        (list(transaction_ids),),
    )
    found: dict[int, list[StoredLabel]] = defaultdict(list)
    for row in cur.fetchall():
        found[row[1]].append(StoredLabel(*row))
    return found


def _identity(label: FraudLabel | StoredLabel) -> tuple[int, int | None, bool, str, str | None]:
    return (label.transaction_id, label.labelled_at_ms, label.fraud, label.source, label.reason)


def _latest(history: Sequence[StoredLabel]) -> StoredLabel | None:
    return max(history, key=lambda s: (s.labelled_at_ms, s.label_id), default=None)


def write_labels(cur: psycopg2.extensions.cursor, batch: Sequence[FraudLabel], now_ms: int) -> list[LabelResult]:
    """Store each label exactly once; results in request order, each `stored` or `duplicate` (with the label
    already stored). A label is a duplicate when the same (transaction_id, labelled_at, fraud, source, reason) is
    stored, or, without labelled_at, when the transaction's latest label has the same fraud, source and reason
    (a retry of a label sent as "now"). New labels without labelled_at get `now_ms` (epoch ms).
    Keeps merchant_label_daily equal to merchant_label_steps. Takes LABELS_LOCK_KEY exclusive."""
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (LABELS_LOCK_KEY,))
    ids = sorted({label.transaction_id for label in batch})
    histories = _histories(cur, ids)
    before = {tid: list(history) for tid, history in histories.items()}
    by_identity = {_identity(s): s for history in histories.values() for s in history}

    pending: list[FraudLabel] = []
    outcome: list[tuple[str, tuple[int, int | None, bool, str, str | None]]] = []
    for label in batch:
        if label.labelled_at_ms is None:
            latest = _latest(histories.get(label.transaction_id, []))
            if latest is not None and (latest.fraud, latest.source, latest.reason) == (
                label.fraud,
                label.source,
                label.reason,
            ):
                outcome.append(("duplicate", _identity(latest)))
                continue
            label = label._replace(labelled_at_ms=now_ms)
        key = _identity(label)
        if key in by_identity:
            outcome.append(("duplicate", key))
            continue
        pending.append(label)
        # Stands in for the stored row until the insert gives it an id (above every stored one, in batch order):
        # a repeat later in the batch is a duplicate, and a later "now" label compares with the latest.
        labelled_at_ms = label.labelled_at_ms
        assert labelled_at_ms is not None
        placeholder = StoredLabel(
            _PLACEHOLDER_IDS + len(pending),
            label.transaction_id,
            label.fraud,
            label.source,
            labelled_at_ms,
            label.reason,
            now_ms,
        )
        by_identity[key] = placeholder
        histories.setdefault(label.transaction_id, []).append(placeholder)
        outcome.append(("stored", key))

    if pending:
        cur.execute(
            """INSERT INTO labels AS l (transaction_id, fraud, source, labelled_at, reason)
                SELECT tid, fraud, source, txguard_ms_to_ts(at), reason
                FROM unnest(%s::bigint[], %s::boolean[], %s::text[], %s::bigint[], %s::text[])
                     WITH ORDINALITY AS item(tid, fraud, source, at, reason, n)
                ORDER BY n
                RETURNING l.label_id, l.transaction_id, l.fraud, l.source, txguard_ts_to_ms(l.labelled_at),
                          l.reason, txguard_ts_to_ms(l.received_at)""",
            (
                [p.transaction_id for p in pending],
                [p.fraud for p in pending],
                [p.source for p in pending],
                [p.labelled_at_ms for p in pending],
                [p.reason for p in pending],
            ),
        )
        for row in cur.fetchall():
            stored = StoredLabel(*row)
            by_identity[_identity(stored)] = stored
        after: dict[int, list[StoredLabel]] = defaultdict(list)
        for s in by_identity.values():
            after[s.transaction_id].append(s)
        changed = sorted({p.transaction_id for p in pending})
        _apply_differences(
            cur,
            changed,
            {tid: _history(before.get(tid, [])) for tid in changed},
            {tid: _history(after[tid]) for tid in changed},
        )

    in_force = {tid: _latest(history) for tid, history in _group(by_identity.values()).items()}
    results = []
    for status, key in outcome:
        stored = by_identity[key]
        latest = in_force[stored.transaction_id]
        current = latest is not None and latest.label_id == stored.label_id
        results.append(LabelResult(stored._replace(in_force=current), "stored" if status == "stored" else "duplicate"))
    return results


def _group(labels: Iterable[StoredLabel]) -> dict[int, list[StoredLabel]]:
    grouped: dict[int, list[StoredLabel]] = defaultdict(list)
    for s in labels:
        grouped[s.transaction_id].append(s)
    return grouped


def _history(labels: Iterable[StoredLabel]) -> History:
    return [(s.labelled_at_ms, s.label_id, s.fraud) for s in labels]


def _apply_differences(
    cur: psycopg2.extensions.cursor, transaction_ids: Sequence[int], old: dict[int, History], new: dict[int, History]
) -> None:
    """Apply each stored transaction's change of steps (new minus old) to merchant_label_daily."""
    cur.execute(
        """SELECT transaction_id, merchant_id, txguard_day(ts) FROM transactions
           WHERE transaction_id = ANY(%s::bigint[]) AND merchant_id IS NOT NULL""",
        (list(transaction_ids),),
    )
    changes: dict[tuple[str, int, int], int] = defaultdict(int)
    for tid, merchant_id, tx_day in cur.fetchall():
        before, after = steps(old[tid]), steps(new[tid])
        for day in before.keys() | after.keys():
            changes[(merchant_id, tx_day, day)] += after.get(day, 0) - before.get(day, 0)
    _add_to_daily(cur, changes)


def _add_to_daily(cur: psycopg2.extensions.cursor, changes: dict[tuple[str, int, int], int]) -> None:
    keys = sorted(key for key, value in changes.items() if value)  # a fixed order: concurrent writers never deadlock
    if not keys:
        return
    arrays = (
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        [changes[k] for k in keys],
    )
    cur.execute(
        """INSERT INTO merchant_label_daily AS m (merchant_id, tx_day, known_day, frauds)
           SELECT * FROM unnest(%s::text[], %s::int[], %s::int[], %s::int[])
           ON CONFLICT (merchant_id, tx_day, known_day) DO UPDATE SET frauds = m.frauds + excluded.frauds""",
        arrays,
    )
    # The view holds no zero sums: neither does the table.
    cur.execute(
        """DELETE FROM merchant_label_daily m USING unnest(%s::text[], %s::int[], %s::int[]) AS k(merchant, tx, known)
           WHERE m.merchant_id = k.merchant AND m.tx_day = k.tx AND m.known_day = k.known AND m.frauds = 0""",
        arrays[:3],
    )


def apply_pending_labels(cur: psycopg2.extensions.cursor, new: Sequence[Transaction]) -> None:
    """At ingest, after the new transactions are written: add the steps of labels that arrived before them.
    Takes LABELS_LOCK_KEY shared (see the module docstring); reads labels only for new transactions with a
    merchant (only they count in merchant_label_daily)."""
    merchants = {t.transaction_id: t for t in new if t.merchant_id is not None}
    if not merchants:
        return
    cur.execute("SELECT pg_advisory_xact_lock_shared(%s)", (LABELS_LOCK_KEY,))
    cur.execute(
        """SELECT transaction_id, txguard_ts_to_ms(labelled_at), label_id, fraud FROM labels
           WHERE transaction_id = ANY(%s::bigint[])""",
        (list(merchants),),
    )
    histories: dict[int, History] = defaultdict(list)
    for tid, labelled_at, label_id, fraud in cur.fetchall():
        histories[tid].append((labelled_at, label_id, fraud))
    changes: dict[tuple[str, int, int], int] = defaultdict(int)
    for tid, history in histories.items():
        t = merchants[tid]
        assert t.merchant_id is not None
        for day, step in steps(history).items():
            changes[(t.merchant_id, t.ts // DAY_MS, day)] += step
    _add_to_daily(cur, changes)


_LISTED_BY_TRANSACTION = """
    SELECT l.label_id, l.transaction_id, l.fraud, l.source, txguard_ts_to_ms(l.labelled_at), l.reason,
           txguard_ts_to_ms(l.received_at),
           l.label_id = (SELECT f.label_id FROM labels f WHERE f.transaction_id = l.transaction_id
                         ORDER BY f.labelled_at DESC, f.label_id DESC LIMIT 1)
    FROM labels l
    WHERE l.label_id > %(after)s AND l.transaction_id = %(tid)s
    ORDER BY l.label_id LIMIT %(limit)s
"""
# An account's labels: those of its stored transactions (a label waiting for its transaction has no account yet).
_LISTED_BY_ACCOUNT = """
    SELECT l.label_id, l.transaction_id, l.fraud, l.source, txguard_ts_to_ms(l.labelled_at), l.reason,
           txguard_ts_to_ms(l.received_at),
           l.label_id = (SELECT f.label_id FROM labels f WHERE f.transaction_id = l.transaction_id
                         ORDER BY f.labelled_at DESC, f.label_id DESC LIMIT 1)
    FROM labels l
    WHERE l.label_id > %(after)s
      AND l.transaction_id IN (SELECT transaction_id FROM transactions WHERE account_id = %(account)s)
    ORDER BY l.label_id LIMIT %(limit)s
"""


def listed(
    cur: psycopg2.extensions.cursor,
    transaction_id: int | None,
    account_id: int | None,
    after_label_id: int | None,
    limit: int,
) -> list[StoredLabel]:
    """Labels of one transaction, or of one account's stored transactions, in order of receipt (label_id), after
    `after_label_id`; each says whether it is the one in force (its transaction's latest by labelled_at, label_id)."""
    cur.execute(
        _LISTED_BY_TRANSACTION if transaction_id is not None else _LISTED_BY_ACCOUNT,
        {"tid": transaction_id, "account": account_id, "after": after_label_id or 0, "limit": limit},
    )
    return [StoredLabel(*row) for row in cur.fetchall()]


def in_force(
    cur: psycopg2.extensions.cursor,
    transaction_ids: Sequence[int] | None,
    from_ms: int | None,
    to_ms: int | None,
) -> list[StoredLabel]:
    """The label in force (latest by labelled_at, label_id) of each stored transaction, [from, to) by the
    transaction's timestamp (epoch ms), optionally only of `transaction_ids`."""
    cur.execute(
        """SELECT DISTINCT ON (l.transaction_id) l.label_id, l.transaction_id, l.fraud, l.source,
                   txguard_ts_to_ms(l.labelled_at), l.reason, txguard_ts_to_ms(l.received_at)
            FROM labels l JOIN transactions t USING (transaction_id)
            WHERE (%(ids)s::bigint[] IS NULL OR l.transaction_id = ANY(%(ids)s::bigint[]))
              AND (%(from)s::bigint IS NULL OR t.ts >= txguard_ms_to_ts(%(from)s::bigint))
              AND (%(to)s::bigint IS NULL OR t.ts < txguard_ms_to_ts(%(to)s::bigint))
            ORDER BY l.transaction_id, l.labelled_at DESC, l.label_id DESC""",
        {"ids": None if transaction_ids is None else list(transaction_ids), "from": from_ms, "to": to_ms},
    )
    return [StoredLabel(*row) for row in cur.fetchall()]
