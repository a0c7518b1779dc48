"""Where the generator writes the truth about its traffic: the labels store or a labels file.

Every generated transaction gets a label, "genuine" included, so an evaluation covers exactly the
generated transactions and nothing else that may be stored. Stored labels go through the one labels store
(storage.labels: source "generator", fraud unless the pattern is "genuine", the pattern as reason, known now);
txguard.labels reads them back.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import psycopg2.extensions

from txguard.domain import FraudLabel
from txguard.labels import GENUINE, LABEL_FIELDS, is_csv
from txguard.storage.labels import write_labels
from txguard_generator.traffic import Labelled

GENERATOR_SOURCE = "generator"


def generated_labels(items: Sequence[Labelled]) -> list[FraudLabel]:
    """The generator's truth as labels: known now (labelled_at left to the store), the pattern as reason."""
    return [
        FraudLabel(
            item.transaction.transaction_id,
            item.pattern != GENUINE,
            GENERATOR_SOURCE,
            None,
            None if item.pattern == GENUINE else item.pattern,
        )
        for item in items
    ]


def insert_labels(cur: psycopg2.extensions.cursor, run_id: int, items: Sequence[Labelled]) -> None:
    """Idempotent: sending a run again (the same labels, sent as "now") is answered as duplicates and keeps the
    labels written the first time. `run_id` is implied by the ids (a run's ids are [run_id << 23, ...))."""
    write_labels(cur, generated_labels(items), int(time.time() * 1000))


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
