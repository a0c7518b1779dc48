"""Where the generator writes the truth about its traffic: the fraud_labels table or a labels file.

Every generated transaction gets a label, "genuine" included, so an evaluation covers exactly the
generated transactions and nothing else that may be stored. txguard.labels reads them back.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import psycopg2.extensions

from txguard.labels import LABEL_FIELDS, is_csv
from txguard_generator.traffic import Labelled

_INSERT_LABELS = """
    INSERT INTO fraud_labels (transaction_id, pattern, run_id)
    SELECT unnest(%s::bigint[]), unnest(%s::text[]), %s
    ON CONFLICT (transaction_id) DO NOTHING
"""


def insert_labels(cur: psycopg2.extensions.cursor, run_id: int, items: Sequence[Labelled]) -> None:
    """Idempotent: sending a run again (same run id) keeps the labels written the first time."""
    cur.execute(
        _INSERT_LABELS,
        ([item.transaction.transaction_id for item in items], [item.pattern for item in items], run_id),
    )


class LabelsFile:
    """Appends labels to a file: CSV when its name ends in .csv, else JSON lines."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._csv = is_csv(self.path)
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        self._file = self.path.open("a", encoding="utf-8", newline="")
        self._writer = csv.writer(self._file) if self._csv else None
        if self._writer is not None and fresh:
            self._writer.writerow(LABEL_FIELDS)

    def write(self, run_id: int, items: Iterable[Labelled]) -> None:
        if self._writer is not None:
            self._writer.writerows((item.transaction.transaction_id, item.pattern, run_id) for item in items)
        else:
            self._file.writelines(
                f'{{"transaction_id": {item.transaction.transaction_id}, '
                f'"pattern": {json.dumps(item.pattern)}, "run_id": {run_id}}}\n'
                for item in items
            )

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
