"""Known truth about transactions: the one reader of labels, from the labels table or a labels file.

Stored labels (migrations/0009_labels.sql) are written through storage.labels (POST /labels, `txguard labels
import`, `txguard replay`, the generator); the one in force for a transaction is its latest by (labelled_at,
label_id). For backtests and evaluations (scoring.py) a label names a transaction's fraud pattern (the label's
reason, "fraud" when it gives none), or "genuine". A labels file holds {transaction_id, pattern, run_id} rows.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import psycopg2.extensions

from txguard.storage import labels as storage_labels

GENUINE = "genuine"
LABEL_FIELDS = ("transaction_id", "pattern", "run_id")

UNSPECIFIED_FRAUD = "fraud"  # the pattern of a fraud label that gives no reason
RUN_ID_SHIFT = 23  # a generated run's transaction ids are [run_id << 23, (run_id + 1) << 23)


class LabelInForce(NamedTuple):
    """A transaction's label in force: its latest by (labelled_at, label_id); `labelled_at_ms` in epoch ms."""

    fraud: bool
    source: str
    reason: str | None
    labelled_at_ms: int


def labels_in_force(
    cur: psycopg2.extensions.cursor,
    transaction_ids: Sequence[int] | None = None,
    from_ms: int | None = None,
    to_ms: int | None = None,
) -> dict[int, LabelInForce]:
    """{transaction_id: LabelInForce} for every stored transaction with a label, its timestamp in [from_ms, to_ms)
    (epoch ms, either open), optionally only of `transaction_ids`. Labels of transactions not stored are left
    out."""
    return {
        s.transaction_id: LabelInForce(s.fraud, s.source, s.reason, s.labelled_at_ms)
        for s in storage_labels.in_force(cur, transaction_ids, from_ms, to_ms)
    }


@dataclass(frozen=True)
class Label:
    transaction_id: int
    pattern: str  # a fraud pattern's name, or GENUINE
    run_id: int


def is_csv(path: str | Path) -> bool:
    """Labels files are CSV when their name ends in .csv, else JSON lines."""
    return str(path).lower().endswith(".csv")


def read_labels(path: str | Path) -> dict[int, Label]:
    """Labels by transaction id from a file (CSV or JSON lines of LABEL_FIELDS); a transaction labelled twice
    keeps its last label. Raises OSError when the file cannot be read, ValueError naming the first bad label."""
    labels: dict[int, Label] = {}
    with Path(path).open(encoding="utf-8", newline="") as file:
        if is_csv(path):
            rows: Iterable[dict[str, object]] = csv.DictReader(file)
        else:
            rows = (json.loads(line) for line in file if line.strip())
        for number, row in enumerate(rows, start=1):
            label = label_of(row, f"{path}: label {number}")
            labels[label.transaction_id] = label
    return labels


def label_of(row: Any, where: str) -> Label:
    """A labels file's row (a dict of LABEL_FIELDS: CSV text cells or JSON values) as a Label. Raises ValueError
    starting with `where` (the file and the row) when it is not one."""
    try:
        return Label(int(str(row["transaction_id"])), str(row["pattern"]), int(str(row["run_id"])))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where} is not {{transaction_id, pattern, run_id}}: {exc}") from None
