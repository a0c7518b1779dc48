"""What training reads: the feature vectors decisions stored (`transactions.features`), each with the label that
was in force at a cutoff.

A label counts only if it was known before the cutoff (labelled_at < cutoff); of those, the latest by
(labelled_at, label_id) is in force, as everywhere else (storage.labels). A transaction with no such label counts
as genuine, as `txguard evaluate` counts it (a card with no chargeback). Rows are read through a server-side
cursor, `chunk` at a time, so a window of a million rows never sits in memory as Python objects at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import psycopg2.extensions
from psycopg2 import sql


class WindowCounts(NamedTuple):
    """Transactions of a window: all of them, those with stored features, and how many of those were stored with
    each feature name."""

    transactions: int
    with_features: int
    feature_counts: dict[str, int]


def window_counts(cur: psycopg2.extensions.cursor, from_ms: int, to_ms: int) -> WindowCounts:
    """Counts of the transactions with from_ms <= ts < to_ms (epoch ms); see WindowCounts."""
    cur.execute(
        """SELECT count(*), count(features) FROM transactions
           WHERE ts >= txguard_ms_to_ts(%(from)s) AND ts < txguard_ms_to_ts(%(to)s)""",
        {"from": from_ms, "to": to_ms},
    )
    row = cur.fetchone()
    assert row is not None
    cur.execute(
        """SELECT name, count(*) FROM transactions, jsonb_object_keys(features::jsonb) AS name
           WHERE ts >= txguard_ms_to_ts(%(from)s) AND ts < txguard_ms_to_ts(%(to)s) AND features IS NOT NULL
           GROUP BY name ORDER BY name""",
        {"from": from_ms, "to": to_ms},
    )
    return WindowCounts(int(row[0]), int(row[1]), {str(name): int(n) for name, n in cur.fetchall()})


def first_transaction_ms(cur: psycopg2.extensions.cursor) -> int | None:
    """The earliest stored transaction's timestamp (epoch ms) that has features; None when there is none."""
    cur.execute("SELECT txguard_ts_to_ms(min(ts)) FROM transactions WHERE features IS NOT NULL")
    row = cur.fetchone()
    return None if row is None or row[0] is None else int(row[0])


class Chunk(NamedTuple):
    """Up to `chunk` rows in (ts, transaction_id) order: parallel lists. `values[i]` holds row i's features in the
    order asked for (float, or None where the feature is null), `fraud[i]` its label in force at the cutoff
    (False when unlabelled), `labelled[i]` whether it had one, `score[i]` the stored decision's score (0–1)."""

    transaction_ids: list[int]
    account_ids: list[int]
    ts: list[int]
    values: list[tuple[float | None, ...]]
    fraud: list[bool]
    labelled: list[bool]
    score: list[float]


def labelled_rows(
    conn: psycopg2.extensions.connection,
    features: Sequence[str],
    from_ms: int,
    to_ms: int,
    label_cutoff_ms: int,
    chunk: int = 50_000,
) -> Iterator[Chunk]:
    """The transactions with from_ms <= ts < to_ms that have stored features, oldest first, each with the values
    of `features` (feature names: identifiers) and its label in force among those with labelled_at <
    label_cutoff_ms (epoch ms). Runs in the connection's current transaction (a named cursor needs one); the
    caller commits or rolls back."""
    columns = sql.SQL(", ").join(sql.SQL("(f.features ->> {})::float8").format(sql.Literal(name)) for name in features)
    query = sql.SQL(
        """SELECT t.transaction_id, t.account_id, txguard_ts_to_ms(t.ts), t.score::float8, l.fraud, {columns}
           FROM transactions t
           CROSS JOIN LATERAL (SELECT t.features::jsonb AS features) f  -- stored as json: parsed once per row
           LEFT JOIN LATERAL (
               SELECT fraud FROM labels
               WHERE labels.transaction_id = t.transaction_id AND labelled_at < txguard_ms_to_ts(%(cutoff)s)
               ORDER BY labelled_at DESC, label_id DESC LIMIT 1
           ) l ON true
           WHERE t.ts >= txguard_ms_to_ts(%(from)s) AND t.ts < txguard_ms_to_ts(%(to)s) AND t.features IS NOT NULL
           ORDER BY t.ts, t.transaction_id"""
    ).format(columns=columns)
    with conn.cursor(name="txguard_training_rows") as cur:
        cur.itersize = chunk
        cur.execute(query, {"cutoff": label_cutoff_ms, "from": from_ms, "to": to_ms})
        while True:
            rows = cur.fetchmany(chunk)
            if not rows:
                return
            yield Chunk(
                [r[0] for r in rows],
                [r[1] for r in rows],
                [r[2] for r in rows],
                [r[5:] for r in rows],
                [bool(r[4]) for r in rows],
                [r[4] is not None for r in rows],
                [r[3] for r in rows],
            )
