"""The console's one write of truth: an analyst's verdict on a review item, as a label in the labels store."""

from __future__ import annotations

import psycopg2.extensions


def write_label(cur: psycopg2.extensions.cursor, transaction_id: int, fraud: bool, source: str) -> None:
    """Append the label (labelled now, by `source`); the same label twice is stored once."""
    cur.execute(
        """INSERT INTO labels (transaction_id, fraud, source, labelled_at)
           VALUES (%s, %s, %s, date_trunc('milliseconds', clock_timestamp()))
           ON CONFLICT DO NOTHING""",
        (transaction_id, fraud, source),
    )
