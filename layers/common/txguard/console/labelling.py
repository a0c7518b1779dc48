"""The console's one write of truth: an analyst's verdict on a review item, through the labels store."""

from __future__ import annotations

import time

import psycopg2.extensions

from txguard.domain import FraudLabel
from txguard.storage import labels


def write_label(cur: psycopg2.extensions.cursor, transaction_id: int, fraud: bool, source: str) -> None:
    """Append the label, labelled now, with `source` (`analyst:<name>`), exactly as POST /labels stores one
    (storage.labels.write_labels: the same label again is a duplicate; merchant_label_daily kept up)."""
    labels.write_labels(cur, [FraudLabel(transaction_id, fraud, source)], int(time.time() * 1000))
