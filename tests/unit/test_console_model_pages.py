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


def test_a_training_report_is_read_and_what_it_lacks_is_none() -> None:
    curve = [{"threshold": 0.7, "precision": 0.6, "recall": 0.5}, {"threshold": 0.1, "precision": "x", "recall": 1}]
    metrics = {
        "validation": {
            "roc_auc": 0.9,
            "f1": None,
            "card_precision_at_k": 0.31,
            "confusion_matrix": {"tp": 3, "fp": 1, "fn": 2, "tn": 90},
            "precision_recall_curve": curve,
        },
        "feature_importance": [{"feature": "count", "gain": 2.5, "share": 0.25}, {"feature": "amount", "gain": 7.5}],
    }
    assert model_pages.pr_points(metrics) == [(0.5, 0.6, 0.7)]
    assert model_pages.confusion(metrics) == (3, 1, 2, 90)
    assert model_pages.confusion({"validation": {"confusion_matrix": {"tp": "3"}}}) is None
    assert model_pages.importance(metrics) == [("amount", 7.5, None), ("count", 2.5, 0.25)]
    s = model_pages.summary(metrics)
    assert (s.roc_auc, s.cp_at_k, s.f1, s.threshold) == (0.9, 0.31, None, None)
    assert model_pages.summary({}).roc_auc is None
    assert model_pages.threshold_rows([{"score": 0.5, "flagged": 7, "precision": 1, "recall": 0.25, "fpr": 0}]) == [
        ["0.5000", "7", "1.0000", "0.2500", "0.0000"]
    ]


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
