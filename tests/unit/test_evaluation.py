"""The evaluation report: every metric from the same judged decisions, checked against scikit-learn and against
the Card Precision@k example counted by hand in test_scoring_metrics.py."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

from tests.unit.test_scoring_metrics import WORKED
from txguard.evaluation import UNLABELLED_REASON, Evaluation, Judged, judge
from txguard.features import DAY_MS
from txguard.storage.transactions import ScoredRow
from txguard_dev.commands.evaluate import render_json, render_markdown, render_text


def fixture(seed: int, n: int = 3_000) -> list[Judged]:
    rng = random.Random(seed)
    judged = []
    for i in range(n):
        fraud = rng.random() < 0.05
        score = round(min(1.0, rng.random() * 0.6 + (0.4 * rng.random() if fraud else 0.0)), 2)
        label: bool | None = fraud if rng.random() < 0.9 else None  # a tenth unlabelled
        reason = rng.choice(["burst", "amount_spike", None]) if fraud else None
        judged.append(
            Judged(i, 1 + rng.randrange(200), rng.randrange(5) * DAY_MS, score, score >= 0.7, 3, label, reason)
        )
    return judged


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("unlabelled_genuine", [True, False])
def test_metrics_equal_sklearn_on_the_same_decisions(seed: int, unlabelled_genuine: bool) -> None:
    judged = fixture(seed)
    report = Evaluation("test", count_unlabelled_as_genuine=unlabelled_genuine).add_all(judged).report()
    kept = [j for j in judged if unlabelled_genuine or j.fraud is not None]
    truth = [int(bool(j.fraud)) for j in kept]
    scores = [j.score for j in kept]
    flags = [int(j.flagged) for j in kept]
    assert report.evaluated == len(kept)
    assert report.unlabelled == sum(j.fraud is None for j in judged)
    assert report.roc_auc == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
    assert report.average_precision == pytest.approx(average_precision_score(truth, scores), abs=1e-12)
    assert report.flag.precision == pytest.approx(precision_score(truth, flags))
    assert report.flag.recall == pytest.approx(recall_score(truth, flags))
    assert report.flag.f1 == pytest.approx(f1_score(truth, flags))
    frauds = [j for j in kept if j.fraud]
    for reason in {j.reason or UNLABELLED_REASON for j in frauds}:
        mine = [j for j in frauds if (j.reason or UNLABELLED_REASON) == reason]
        assert report.reasons[reason].frauds == len(mine)
        assert report.reasons[reason].flagged == sum(j.flagged for j in mine)


def test_card_precision_is_the_worked_example_per_day() -> None:
    judged = [
        Judged(i, account, day * DAY_MS + i, score, False, 1, fraud, None)
        for i, (day, account, score, fraud) in enumerate(WORKED)
    ]
    report = Evaluation("test", k=2).add_all(judged).report()
    assert report.card_precision is not None
    assert [d.precision for d in report.card_precision.days] == [0.5, 0.5, 1.0]
    assert report.card_precision.mean == pytest.approx(2 / 3)


def test_one_class_leaves_ranking_metrics_undefined_not_an_error() -> None:
    judged = [Judged(i, 1, 0, 0.5, False, 1, False, None) for i in range(3)]
    report = Evaluation("test").add_all(judged).report()
    assert report.roc_auc is None and report.average_precision is None
    assert json.loads(render_json(report))["roc_auc"] is None
    assert "undefined" in render_text(report)


def test_judge_pairs_each_decision_with_its_label_chunk_by_chunk() -> None:
    class Label:
        def __init__(self, fraud: bool, reason: str | None) -> None:
            self.fraud, self.reason = fraud, reason

    rows = [
        [ScoredRow(1, 10, 0, 0.9, True, 2), ScoredRow(2, 11, 5, 0.1, False, 2)],
        [ScoredRow(3, 10, 9, 0.5, False, 2)],
    ]
    asked: list[list[int]] = []

    def labels_for(ids: list[int]) -> dict[int, Label]:
        asked.append(ids)
        return {1: Label(True, "burst")} if 1 in ids else {}

    judged = list(judge(rows, labels_for))
    assert asked == [[1, 2], [3]]
    assert [(j.transaction_id, j.fraud, j.reason) for j in judged] == [
        (1, True, "burst"),
        (2, None, None),
        (3, None, None),
    ]


def test_reports_render_every_metric() -> None:
    report = Evaluation("the labels store").add_all(fixture(3)).report()
    text = render_text(report)
    for part in ("ROC AUC", "average precision", "Card Precision@100", "precision", "burst", "amount_spike"):
        assert part in text
    data = json.loads(render_json(report))
    assert data["confusion_matrix"]["tp"] == report.confusion.true_positive
    assert data["card_precision"]["days"][0]["date"] == "1970-01-01"
    assert "| ROC AUC |" in render_markdown(report)


def test_ties_of_the_four_place_score_are_broken_by_the_model_score_and_groups_keep_their_order() -> None:
    from txguard.labels import LabelInForce

    # Four decisions share the score 0.9000; the model ranks the fraud first among them. A decision at 0.9001
    # without a model score still ranks above all four, one at 0.8999 with p = 1 below them.
    rows = [
        ScoredRow(1, 1, 0, 0.9, True, 2, 0.42),
        ScoredRow(2, 2, 0, 0.9, True, 2, 0.97),
        ScoredRow(3, 3, 0, 0.9, True, 2, 0.41),
        ScoredRow(4, 4, 0, 0.9, True, 2, 0.40),
        ScoredRow(5, 5, 0, 0.9001, True, 2, None),
        ScoredRow(6, 6, 0, 0.8999, False, 2, 1.0),
    ]
    labels = {2: LabelInForce(True, "analyst", None, 0), 5: LabelInForce(True, "analyst", None, 0)}
    judged = list(judge([rows], lambda ids: {i: labels[i] for i in ids if i in labels}))
    order = [j.transaction_id for j in sorted(judged, key=lambda j: -j.score)]
    assert order == [5, 2, 1, 3, 4, 6]
    report = Evaluation("test").add_all(judged).report()
    assert report.average_precision == 1.0  # both frauds first: no tie with the genuine decisions left
    untied = Evaluation("test").add_all([replace(j, score=round(j.score, 4)) for j in judged]).report()
    assert untied.average_precision is not None and untied.average_precision < 1.0


def test_outcomes_are_counted_with_the_precision_of_block_the_recall_within_block_and_review_and_the_review_share() -> (
    None
):
    # (outcome, fraud): 2 blocked (1 fraud), 2 reviewed (1 fraud), 6 allowed (1 fraud)
    decided = [("block", True), ("block", False), ("review", True), ("review", False)]
    decided += [("allow", True)] + [("allow", False)] * 5
    evaluation = Evaluation("test").add_all(
        Judged(i, 1, 0, 0.5, outcome == "block", 1, fraud, None, outcome) for i, (outcome, fraud) in enumerate(decided)
    )
    report = evaluation.report()
    assert report.outcomes.counts == {"allow": 6, "review": 2, "block": 2}
    assert report.outcomes.frauds == {"allow": 1, "review": 1, "block": 1}
    assert report.outcomes.block_precision == 0.5 == report.flag.precision
    assert report.outcomes.recall_block_review == pytest.approx(2 / 3)
    assert report.outcomes.review_share == pytest.approx(0.2)
    assert json.loads(render_json(report))["outcomes"]["review_share"] == pytest.approx(0.2)
    assert "share in review 20.00%" in render_text(report)
    assert "| share in review | 20.00% |" in render_markdown(report)
    # Without outcomes recorded, the flag gives them: block or allow
    legacy = Evaluation("test").add_all(Judged(i, 1, 0, 0.5, i < 2, 1, i < 3, None) for i in range(10)).report()
    assert legacy.outcomes.counts == {"allow": 8, "review": 0, "block": 2}
