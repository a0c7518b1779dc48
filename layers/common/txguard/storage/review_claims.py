"""`review_claims`: which analyst is reviewing which flagged transaction, until when.

The review queue is the transactions sent to review (outcome `review`: still to be decided by an analyst), then
the blocked ones (outcome `block`: to confirm), each with no label yet and highest score first. An analyst takes an
item by
claiming it: an INSERT ... ON CONFLICT on the transaction id that takes over a claim only once it has expired
(or when it is the same analyst's), so two analysts never hold one item at once, however they race.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import psycopg2.extensions

CLAIM_SECONDS = 600  # how long an item stays with the analyst who opened it

# Each part reads its own partial index in score order (transactions_review_score, transactions_flagged_score).
_QUEUE = """
    SELECT q.*, c.analyst, c.expires_at FROM (
        (SELECT t.transaction_id, t.account_id, txguard_ts_to_ms(t.ts), t.amount, t.currency, t.merchant_id, t.score,
                t.outcome
         FROM transactions t
         WHERE t.outcome = 'review' AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.transaction_id = t.transaction_id)
         ORDER BY t.score DESC, t.transaction_id LIMIT %(limit)s)
        UNION ALL
        (SELECT t.transaction_id, t.account_id, txguard_ts_to_ms(t.ts), t.amount, t.currency, t.merchant_id, t.score,
                t.outcome
         FROM transactions t
         WHERE t.fraud AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.transaction_id = t.transaction_id)
         ORDER BY t.score DESC, t.transaction_id LIMIT %(limit)s)
    ) q
    LEFT JOIN review_claims c ON c.transaction_id = q.transaction_id AND c.expires_at > clock_timestamp()
    ORDER BY q.outcome = 'review' DESC, q.score DESC, q.transaction_id
    LIMIT %(limit)s
"""

_CLAIM = """
    INSERT INTO review_claims AS c (transaction_id, analyst, expires_at)
    VALUES (%(tid)s, %(analyst)s, clock_timestamp() + make_interval(secs => %(seconds)s))
    ON CONFLICT (transaction_id) DO UPDATE
        SET analyst = excluded.analyst, claimed_at = clock_timestamp(), expires_at = excluded.expires_at
        WHERE c.expires_at <= clock_timestamp() OR c.analyst = excluded.analyst
    RETURNING transaction_id
"""


@dataclass(frozen=True)
class QueueItem:
    transaction_id: int
    account_id: int
    ts: int  # epoch ms
    amount: Decimal
    currency: str
    merchant_id: str | None
    score: Decimal
    outcome: str  # review or block
    claimed_by: str | None  # the analyst holding an unexpired claim, if any
    claim_expires_at: datetime | None


def queue(cur: psycopg2.extensions.cursor, limit: int) -> list[QueueItem]:
    """The first `limit` unlabelled transactions sent to review, then blocked, highest score first within each,
    with any live claim on each (through the partial indexes transactions_review_score and
    transactions_flagged_score)."""
    cur.execute(_QUEUE, {"limit": limit})
    return [
        QueueItem(int(r[0]), int(r[1]), int(r[2]), r[3], r[4].strip(), r[5], r[6], r[7], r[8], r[9])
        for r in cur.fetchall()
    ]


def claim(cur: psycopg2.extensions.cursor, transaction_id: int, analyst: str, seconds: int = CLAIM_SECONDS) -> bool:
    """Claim the item for `analyst` for `seconds`: True when the analyst holds it now (new, renewed, or taken
    over from an expired claim), False when another analyst's claim is live."""
    cur.execute(_CLAIM, {"tid": transaction_id, "analyst": analyst, "seconds": seconds})
    return cur.fetchone() is not None


def holder(cur: psycopg2.extensions.cursor, transaction_id: int) -> str | None:
    """The analyst holding a live claim on the item, or None."""
    cur.execute(
        "SELECT analyst FROM review_claims WHERE transaction_id = %s AND expires_at > clock_timestamp()",
        (transaction_id,),
    )
    row = cur.fetchone()
    return str(row[0]) if row else None


def release(cur: psycopg2.extensions.cursor, transaction_id: int, analyst: str) -> None:
    """Drop the analyst's claim on the item (after it was labelled), leaving anyone else's alone."""
    cur.execute("DELETE FROM review_claims WHERE transaction_id = %s AND analyst = %s", (transaction_id, analyst))
