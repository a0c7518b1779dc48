"""Labels files of generated runs read back as written (the evaluation itself: test_evaluation.py)."""

from __future__ import annotations

import gzip
import json
import re
from decimal import Decimal
from pathlib import Path

import pytest

from txguard.domain import Transaction
from txguard.labels import Label, LabelInForce, read_labels
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


# --- `txguard evaluate --labels FILE`: either form, one reader ------------------------------------------

NOW_MS = 1_800_000_000_000


@pytest.mark.parametrize("name", ["labels.csv", "labels.jsonl", "labels.csv.gz"])
def test_the_generators_labels_file_is_read_for_evaluation(tmp_path: Path, name: str) -> None:
    from txguard_dev.commands.labels import labels_in_file

    rows = [(11, "genuine", 5), (12, "burst", 5), (12, "card_testing", 5)]  # a repeat: the last line wins
    path = tmp_path / name
    if ".csv" in name:
        text = "transaction_id,pattern,run_id\n" + "".join(f"{t},{p},{r}\n" for t, p, r in rows)
    else:
        text = "".join(json.dumps({"transaction_id": t, "pattern": p, "run_id": r}) + "\n" for t, p, r in rows)
    _write(path, text)
    assert labels_in_file(path, NOW_MS) == {
        11: LabelInForce(False, "file", None, 0),
        12: LabelInForce(True, "file", "card_testing", 0),
    }


@pytest.mark.parametrize("name", ["chargebacks.csv", "chargebacks.jsonl", "chargebacks.csv.gz"])
def test_the_labels_import_form_is_read_for_evaluation_with_the_latest_label_in_force(
    tmp_path: Path, name: str
) -> None:
    from txguard_dev.commands.labels import labels_in_file

    rows = [
        (21, True, "chargeback", 1_700_000_000_000, "card_testing"),
        (21, False, "analyst", 1_700_000_000_001, None),  # later: in force
        (22, False, "analyst", 1_700_000_000_005, None),
        (22, True, "chargeback", 1_700_000_000_001, "burst"),  # earlier, though on a later line
        (23, True, "chargeback", None, None),  # no labelled_at: known now
    ]
    path = tmp_path / name
    if ".csv" in name:
        text = "transaction_id,fraud,source,labelled_at,reason\n" + "".join(
            f"{t},{str(f).lower()},{s},{'' if at is None else at},{r or ''}\n" for t, f, s, at, r in rows
        )
    else:
        text = "".join(
            json.dumps(
                {"transaction_id": t, "fraud": f, "source": s}
                | ({} if at is None else {"labelled_at": at})
                | ({} if r is None else {"reason": r})
            )
            + "\n"
            for t, f, s, at, r in rows
        )
    _write(path, text)
    assert labels_in_file(path, NOW_MS) == {
        21: LabelInForce(False, "analyst", None, 1_700_000_000_001),
        22: LabelInForce(False, "analyst", None, 1_700_000_000_005),
        23: LabelInForce(True, "chargeback", None, NOW_MS),
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("transaction_id,fraud,source\n1,maybe,x\n", "line 2: fraud = 'maybe'"),
        ('{"transaction_id": 1, "fraud": true}\n', "line 1: source"),
        ('{"transaction_id": 1, "pattern": "burst", "run_id": 2}\n{"transaction_id": 1}\n', "line 2 is not"),
    ],
)
def test_a_bad_labels_file_for_evaluation_is_refused_naming_the_line(tmp_path: Path, text: str, expected: str) -> None:
    from txguard_dev.commands.labels import labels_in_file

    path = tmp_path / ("labels.csv" if text.startswith("transaction_id,") else "labels.jsonl")
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(expected)):
        labels_in_file(path, NOW_MS)


def _write(path: Path, text: str) -> None:
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
