"""Ranking metrics against scikit-learn, the reference implementation, and Card Precision@k against a worked
example counted by hand (Handbook, "Performance metrics")."""

from __future__ import annotations

import random

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from txguard.scoring import DayPrecision, average_precision, card_precision_at_k, recall_by_reason, roc_auc

TOLERANCE = 1e-12

# Few distinct values: most scores tie with others, the case where AUC and AP conventions differ.
tied_scores = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5000000001, 0.9, 1.0])
any_scores = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
samples = st.lists(st.tuples(st.one_of(tied_scores, any_scores), st.booleans()), min_size=2, max_size=300)
tied_samples = st.lists(st.tuples(tied_scores, st.booleans()), min_size=2, max_size=300)


def split(sample: list[tuple[float, bool]]) -> tuple[list[float], list[int]]:
    return [score for score, _ in sample], [int(label) for _, label in sample]


def both_classes(labels: list[int]) -> bool:
    return 0 < sum(labels) < len(labels)


@settings(max_examples=300, deadline=None)
@given(st.one_of(samples, tied_samples))
def test_roc_auc_equals_sklearn(sample: list[tuple[float, bool]]) -> None:
    scores, labels = split(sample)
    assume(both_classes(labels))
    assert abs(roc_auc(scores, labels) - roc_auc_score(labels, scores)) <= TOLERANCE


@settings(max_examples=300, deadline=None)
@given(st.one_of(samples, tied_samples))
def test_average_precision_equals_sklearn(sample: list[tuple[float, bool]]) -> None:
    scores, labels = split(sample)
    assume(sum(labels) > 0)
    assert abs(average_precision(scores, labels) - average_precision_score(labels, scores)) <= TOLERANCE


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_large_seeded_fixture_with_heavy_ties_equals_sklearn(seed: int) -> None:
    # Given 20,000 transactions, 2 % fraud, scores rounded to 2 decimals so that nearly every score is tied
    rng = random.Random(seed)
    labels = [int(rng.random() < 0.02) for _ in range(20_000)]
    scores = [round(min(1.0, rng.random() * 0.7 + 0.3 * label * rng.random()), 2) for label in labels]
    # Then both metrics equal the reference
    assert abs(roc_auc(scores, labels) - roc_auc_score(labels, scores)) <= TOLERANCE
    assert abs(average_precision(scores, labels) - average_precision_score(labels, scores)) <= TOLERANCE


def test_all_scores_tied_is_chance() -> None:
    labels = [1, 0, 0, 1, 0]
    assert roc_auc([0.3] * 5, labels) == 0.5
    assert average_precision([0.3] * 5, labels) == pytest.approx(2 / 5, abs=TOLERANCE)


def test_roc_auc_refuses_a_single_class() -> None:
    with pytest.raises(ValueError, match="one class"):
        roc_auc([0.1, 0.9], [1, 1])
    with pytest.raises(ValueError, match="one class"):
        roc_auc([0.1, 0.9], [0, 0])


def test_average_precision_refuses_no_fraud() -> None:
    with pytest.raises(ValueError, match="without a fraud"):
        average_precision([0.1, 0.9], [0, 0])


@pytest.mark.parametrize(
    ("scores", "labels", "reason"),
    [([0.1, 0.9], [1], "2 scores but 1 labels"), ([float("nan"), 0.9], [1, 0], "NaN"), ([0.1, 0.9], [2, 0], "0")],
)
def test_bad_inputs_are_refused(scores: list[float], labels: list[int], reason: str) -> None:
    for metric in (roc_auc, average_precision):
        with pytest.raises(ValueError, match=reason):
            metric(scores, labels)


# A worked example, k = 2, accounts 1-5; "F" marks a fraud transaction; an account's score for the day is its
# highest that day and it counts as compromised that day when any of its transactions that day is a fraud.
#
# Day 1: account 1: 0.9 F, 0.2 | account 2: 0.8 | account 3: 0.8 F | account 4: 0.1
#        ranking 1 (0.9 F), 2 (0.8), 3 (0.8 F; ties with 2, lower id first), 4
#        top 2 = {1, 2}: one compromised -> 1/2; account 1 is found and leaves every later ranking.
#        Still-ranked compromised accounts: 1 and 3 -> 2.
# Day 2: account 1: 0.95 F (removed) | account 3: 0.7, 0.3 F | account 4: 0.65 | account 5: 0.6 F
#        ranking 3 (0.7 F), 4 (0.65), 5 (0.6 F); without the removal account 1 would lead it.
#        top 2 = {3, 4} -> 1/2; account 3 is found and leaves. Compromised: 3 and 5 -> 2.
# Day 3: account 1: 0.99 F (removed) | account 3: 0.9 F (removed) | account 4: 0.5 F | account 5: 0.5 F |
#        account 2: 0.2
#        ranking 4 (0.5 F), 5 (0.5 F; ties with 4, lower id first), 2 -> top 2 = {4, 5} -> 2/2.
#        Compromised: 4 and 5 -> 2.
# Mean: (1/2 + 1/2 + 1) / 3 = 2/3.
WORKED = [
    (1, 1, 0.9, True),
    (1, 1, 0.2, False),
    (1, 2, 0.8, False),
    (1, 3, 0.8, True),
    (1, 4, 0.1, False),
    (2, 1, 0.95, True),
    (2, 3, 0.7, False),
    (2, 3, 0.3, True),
    (2, 4, 0.65, False),
    (2, 5, 0.6, True),
    (3, 1, 0.99, True),
    (3, 3, 0.9, True),
    (3, 4, 0.5, True),
    (3, 5, 0.5, True),
    (3, 2, 0.2, False),
]


def test_card_precision_worked_example() -> None:
    result = card_precision_at_k(WORKED, k=2)
    assert result.days == [
        DayPrecision(1, 0.5, (1,), 2),
        DayPrecision(2, 0.5, (3,), 2),
        DayPrecision(3, 1.0, (4, 5), 2),
    ]
    assert result.mean == pytest.approx(2 / 3, abs=TOLERANCE)


def test_card_precision_does_not_depend_on_row_order() -> None:
    rows = list(WORKED)
    expected = card_precision_at_k(rows, k=2)
    for seed in range(5):
        random.Random(seed).shuffle(rows)
        assert card_precision_at_k(rows, k=2) == expected


def test_card_precision_divides_by_k_when_fewer_accounts_than_k() -> None:
    # 3 accounts, 2 of them compromised, k = 10: 2 / 10
    rows = [(1, 7, 0.3, True), (1, 8, 0.2, False), (1, 9, 0.1, True)]
    result = card_precision_at_k(rows, k=10)
    assert result.days == [DayPrecision(1, 0.2, (7, 9), 2)]
    assert result.mean == pytest.approx(0.2)


def test_card_precision_day_left_without_accounts_counts_zero() -> None:
    # Day 2 has only account 1, found compromised on day 1: nothing left to rank, precision 0, still in the mean.
    rows = [(1, 1, 0.9, True), (1, 2, 0.1, False), (2, 1, 0.9, True), (3, 2, 0.8, True)]
    result = card_precision_at_k(rows, k=1)
    assert result.days == [DayPrecision(1, 1.0, (1,), 1), DayPrecision(2, 0.0, (), 0), DayPrecision(3, 1.0, (2,), 1)]
    assert result.mean == pytest.approx(2 / 3, abs=TOLERANCE)


def test_card_precision_refuses_bad_k_and_no_rows() -> None:
    with pytest.raises(ValueError, match="k must be"):
        card_precision_at_k(WORKED, k=0)
    with pytest.raises(ValueError, match="no transaction"):
        card_precision_at_k([], k=2)


def test_recall_by_reason() -> None:
    frauds = [("amount", True), ("terminal", False), ("amount", False), ("terminal", False), ("amount", True)]
    result = recall_by_reason(frauds)
    assert list(result) == ["amount", "terminal"]
    assert (result["amount"].frauds, result["amount"].flagged) == (3, 2)
    assert result["amount"].recall == pytest.approx(2 / 3)
    assert (result["terminal"].frauds, result["terminal"].flagged, result["terminal"].recall) == (2, 0, 0.0)


def test_recall_by_reason_refuses_genuine() -> None:
    with pytest.raises(ValueError, match="genuine"):
        recall_by_reason([("genuine", False)])
