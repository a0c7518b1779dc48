"""Labels files of generated runs read back as written (the evaluation itself: test_evaluation.py)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from txguard.domain import Transaction
from txguard.labels import Label, read_labels
from txguard_generator.labels import LabelsFile
from txguard_generator.traffic import Labelled


@pytest.mark.parametrize("name", ["labels.csv", "labels.jsonl"])
def test_a_labels_file_reads_back_what_was_appended(tmp_path: Path, name: str) -> None:
    items = [
        Labelled(Transaction(tid, 1, 0, Decimal("1.00"), "EUR"), pattern)
        for tid, pattern in ((11, "genuine"), (12, "burst"))
    ]
    path = tmp_path / name
    for run_id, chunk in ((5, items[:1]), (5, items[1:])):
        labels = LabelsFile(path)
        labels.write(run_id, chunk)
        labels.close()
    assert read_labels(path) == {11: Label(11, "genuine", 5), 12: Label(12, "burst", 5)}


def test_a_broken_labels_file_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    path.write_text('{"transaction_id": 1, "pattern": "burst", "run_id": 2}\n{"transaction_id": 1}\n')
    with pytest.raises(ValueError, match="label 2"):
        read_labels(path)
