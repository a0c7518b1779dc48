"""The Models pages' pure parts: the training form's validation, reading a stored training report, and the
plots drawn from it (escaped, on the right scale)."""

from __future__ import annotations

import re
from datetime import date

import pytest

from txguard.console import charts, model_pages
from txguard.errors import BadInput


def test_the_training_form_takes_valid_fields_and_defaults() -> None:
    form = model_pages.read_train_form({"name": "july-1", "until": "2018-07-01", "seed": "42", "gap_days": ""})
    assert form == model_pages.TrainForm("july-1", date(2018, 7, 1), 42, 7)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", ""),
        ("name", "<b>x</b>"),
        ("name", "x" * 65),
        ("until", "2018-13-01"),
        ("until", "1999-12-31"),
        ("until", ""),
        ("seed", "-1"),
        ("seed", "abc"),
        ("gap_days", "91"),
        ("gap_days", "1.5"),
    ],
)
def test_a_bad_training_field_is_refused_by_name(field: str, value: str) -> None:
    form = {"name": "ok", "until": "2018-07-01", "seed": "1", "gap_days": "7"} | {field: value}
    with pytest.raises(BadInput) as caught:
        model_pages.read_train_form(form)
    assert f"'{field}'" in caught.value.message


def test_a_report_is_read_in_either_stored_shape() -> None:
    as_lists = {"pr_curve": {"recall": [1.0, 0.5, 0.0], "precision": [0.1, 0.6, 1.0], "thresholds": [0.1, 0.7]}}
    as_points = {"pr_curve": [{"recall": 1.0, "precision": 0.1, "threshold": 0.1}, {"recall": 0.5, "precision": 0.6}]}
    assert model_pages.pr_points(as_lists) == [(1.0, 0.1, 0.1), (0.5, 0.6, 0.7), (0.0, 1.0, None)]
    assert model_pages.pr_points(as_points) == [(1.0, 0.1, 0.1), (0.5, 0.6, None)]
    assert model_pages.confusion({"confusion_matrix": {"tp": 3, "fp": 1, "fn": 2, "tn": 90}}) == (3, 1, 2, 90)
    assert model_pages.confusion({"confusion_matrix": [[90, 1], [2, 3]]}) == (3, 1, 2, 90)
    assert model_pages.confusion({"confusion_matrix": {"tp": "3"}}) is None
    ranked = model_pages.importance({"feature_importance": {"amount": 2.5, "count": 7.0, "hour": 0}})
    assert ranked == [("count", 7.0), ("amount", 2.5), ("hour", 0.0)]
    assert model_pages.summary({"roc_auc": 0.9, "f1": "x"}).roc_auc == 0.9
    assert model_pages.summary({"roc_auc": 0.9, "f1": "x"}).f1 is None


def test_the_plots_escape_names_and_put_points_on_scale() -> None:
    bars = str(charts.horizontal_bars("importance", ["<script>x</script>", "b"], [2.0, 1.0]))
    assert "<script>" not in bars and "&lt;script&gt;" in bars
    widths = [float(w) for w in re.findall(r'<rect x="\d+" y="[\d.]+" width="([\d.]+)"', bars)]
    assert widths[0] == pytest.approx(2 * widths[1], rel=0.01)
    curve = str(charts.pr_curve("pr", [(0.0, 1.0), (1.0, 0.0)], marked=(0.5, 0.5)))
    left, right = charts._PAD_LEFT, charts.WIDTH - charts._PAD_RIGHT
    assert f'points="{left:.1f},{charts._PAD_TOP:.1f} {right:.1f},{charts.HEIGHT - charts._PAD_BOTTOM:.1f}"' in curve
    assert "recall 0.500, precision 0.500" in curve
    grid = str(charts.confusion_matrix("cm", 3, 1, 2, 90))
    assert all(f">{n}<" in grid for n in ("3", "1", "2", "90"))
