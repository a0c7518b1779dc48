"""Known truth about transactions: the one reader of labels, from the fraud_labels table or a labels file.

A label names a transaction's fraud pattern, or "genuine". Labels never travel with the transactions and the
detector never reads them (migrations/0003_fraud_labels.sql); backtests and evaluations compare decisions
with them (scoring.py). The generator writes them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg2.extensions

GENUINE = "genuine"
LABEL_FIELDS = ("transaction_id", "pattern", "run_id")

_SELECT_LABELS = """
    SELECT transaction_id, pattern, run_id FROM fraud_labels
    WHERE cardinality(%(runs)s::bigint[]) = 0 OR run_id = ANY(%(runs)s::bigint[])
"""


@dataclass(frozen=True)
class Label:
    transaction_id: int
    pattern: str  # a fraud pattern's name, or GENUINE
    run_id: int


def load_labels(cur: psycopg2.extensions.cursor, run_ids: Sequence[int] = ()) -> dict[int, Label]:
    """The stored labels by transaction id, of the given runs (none given: of every run); {} when the
    fraud_labels table does not exist."""
    cur.execute("SELECT to_regclass('fraud_labels') IS NOT NULL")
    row = cur.fetchone()
    if not row or not row[0]:
        return {}
    cur.execute(_SELECT_LABELS, {"runs": list(run_ids)})
    return {int(tid): Label(int(tid), str(pattern), int(run_id)) for tid, pattern, run_id in cur.fetchall()}


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
            try:
                label = Label(int(str(row["transaction_id"])), str(row["pattern"]), int(str(row["run_id"])))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}: label {number} is not {{transaction_id, pattern, run_id}}: {exc}") from None
            labels[label.transaction_id] = label
    return labels
