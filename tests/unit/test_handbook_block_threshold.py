"""tools/handbook_block_threshold.py: the champion's block threshold from the month-ahead drop of precision."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location(
    "handbook_block_threshold", ROOT / "tools" / "handbook_block_threshold.py"
)
assert spec is not None and spec.loader is not None
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


def model(path: Path, precisions: dict[float, float], **fields: Any) -> str:
    document = {
        "train_from": 1,
        "train_to": 2,
        "seed": 1,
        "features_hash": "f",
        "params": {"rounds": 300},
        "thresholds": [{"score": s, "precision": p, "flagged": 10} for s, p in precisions.items()],
        **fields,
    }
    path.write_text(json.dumps(document))
    return str(path)


def test_the_lowest_level_whose_precision_less_the_drop_reaches_the_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    champion = model(tmp_path / "c.json", {0.88: 0.91, 0.89: 0.93, 0.90: 0.95})
    week = model(tmp_path / "w.json", {0.88: 0.90, 0.89: 0.90, 0.90: 0.90})
    # a month ahead: 0.02 lower at 0.88 (0.89 < 0.9), 0.02 at 0.89 (0.91), higher at 0.90 (no drop)
    ahead = model(tmp_path / "a.json", {0.88: 0.88, 0.89: 0.88, 0.90: 0.95})

    assert tool.main([champion, week, ahead]) == 0
    assert "model_block_threshold: 0.89" in capsys.readouterr().out
    assert tool.main([champion, week, ahead, "--target", "0.96"]) == 1


def test_two_models_trained_otherwise_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    champion = model(tmp_path / "c.json", {0.9: 0.95})
    week = model(tmp_path / "w.json", {0.9: 0.9})
    ahead = model(tmp_path / "a.json", {0.9: 0.9}, train_to=3)

    assert tool.main([champion, week, ahead]) == 2
    assert "train_to differ" in capsys.readouterr().err
