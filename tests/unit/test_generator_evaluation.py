"""Precision, recall and F1 from labelled decisions; labels files read back as written."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from txguard.domain import Transaction
from txguard.labels import Label, read_labels
from txguard.scoring import Evaluation
from txguard_dev.commands.evaluate import render_markdown, render_text
from txguard_generator.labels import LabelsFile
from txguard_generator.traffic import Labelled


def evaluation() -> Evaluation:
    e = Evaluation("test", [])
    e.add("burst", True, 2, 8)
    e.add("burst", False, 2, 2)
    e.add("amount_spike", True, 2, 10)
    e.add("genuine", True, 2, 2)
    e.add("genuine", False, 2, 978)
    e.add("burst", None, None, 5)  # labelled, never stored
    return e


def test_the_confusion_matrix_counts_only_stored_transactions() -> None:
    e = evaluation()
    assert (e.tp, e.fp, e.fn, e.tn) == (18, 2, 2, 978)
    assert e.evaluated == 1000 and e.not_stored == 5


def test_overall_precision_recall_and_f1() -> None:
    o = evaluation().overall
    assert o.precision == pytest.approx(0.9)
    assert o.recall == pytest.approx(0.9)
    assert o.f1 == pytest.approx(0.9)


def test_a_pattern_has_its_own_recall_and_the_overall_precision() -> None:
    burst = evaluation().pattern_metrics("burst")
    assert burst.recall == pytest.approx(0.8)
    assert burst.precision == pytest.approx(0.9)
    assert burst.f1 == pytest.approx(2 * 0.9 * 0.8 / 1.7)


def test_nothing_flagged_gives_zeros_not_a_division_error() -> None:
    e = Evaluation("test", [])
    e.add("burst", False, 1, 3)
    assert (e.overall.precision, e.overall.recall, e.overall.f1) == (0.0, 0.0, 0.0)


def test_reports_show_the_matrix_and_every_pattern() -> None:
    text = render_text(evaluation())
    assert "Evaluated 1,000 stored transactions against the labels in the file test " in text
    assert "Left out: 5" in text
    assert "amount_spike" in text and "burst" in text and "0.900" in text
    assert "| burst | 10 | 8 |" in render_markdown(evaluation())
    assert json.loads(json.dumps(evaluation().as_dict()))["confusion_matrix"] == {"tp": 18, "fp": 2, "fn": 2, "tn": 978}


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
