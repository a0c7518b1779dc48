"""The `alert_outbox` table: FraudDetected event details written with their transactions, claimed under a
lease by a publisher, deleted once published (the delivery logic is outbox.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

import psycopg2.extensions


class Claimed(NamedTuple):
    """An outbox row held by this publisher until its lease ends: its id and the event's detail."""

    id: int
    detail: dict[str, Any]


# One statement: insert the new alerts and claim up to %(claim)s due ones. With %(claim)s > 0 the new rows
# are claimed by this caller too (attempts 1, leased) and returned; with 0 they are due at once for the
# scheduled drain and not returned. Data-modifying CTEs share one snapshot: `due` never sees `new`'s rows.
_ENQUEUE_AND_CLAIM = """
WITH new AS (
    INSERT INTO alert_outbox (transaction_id, detail, attempts, next_attempt_at)
    SELECT tid, detail, %(attempts)s,
           clock_timestamp() + make_interval(secs => CASE WHEN %(attempts)s > 0 THEN %(lease_base)s ELSE 0 END)
    FROM unnest(%(ids)s::bigint[], %(details)s::jsonb[]) AS e(tid, detail)
    ON CONFLICT (transaction_id) DO NOTHING
    RETURNING id, detail
), due AS (
    UPDATE alert_outbox o SET
        attempts = o.attempts + 1,
        next_attempt_at = clock_timestamp()
            + make_interval(secs => least(%(lease_max)s, %(lease_base)s * 2 ^ least(o.attempts, 12)))
    WHERE o.id IN (
        SELECT id FROM alert_outbox WHERE next_attempt_at <= clock_timestamp()
        ORDER BY next_attempt_at LIMIT %(claim)s FOR UPDATE SKIP LOCKED
    )
    RETURNING o.id, o.detail
)
SELECT id, detail FROM new WHERE %(attempts)s > 0 UNION ALL SELECT id, detail FROM due
"""


def claim(
    cur: psycopg2.extensions.cursor,
    details: Sequence[dict[str, Any]],
    claim_due: int,
    lease_base_s: int,
    lease_max_s: int,
) -> list[Claimed]:
    """Insert one row per event detail (a transaction already in the outbox is skipped) and claim up to
    `claim_due` due rows, leasing each for lease_base_s doubled per earlier attempt (at most lease_max_s)."""
    cur.execute(
        _ENQUEUE_AND_CLAIM,
        {
            "ids": [int(d["transaction_id"]) for d in details],
            "details": [json.dumps(d, default=str) for d in details],
            "attempts": 1 if claim_due > 0 else 0,
            "lease_base": lease_base_s,
            "lease_max": lease_max_s,
            "claim": claim_due,
        },
    )
    return [Claimed(int(row[0]), row[1]) for row in cur.fetchall()]


def delete(cur: psycopg2.extensions.cursor, ids: list[int]) -> None:
    """Remove published rows."""
    cur.execute("DELETE FROM alert_outbox WHERE id = ANY(%s)", (ids,))
