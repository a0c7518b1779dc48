"""How decisions compare with known labels: one confusion matrix, and precision, recall and F1 from it; and how
well scores rank frauds first: ROC AUC, average precision, Card Precision@k and recall per label reason.

The ranking metrics are pure Python (the layer carries no numpy) and follow Le Borgne, Siblini, Lebichot,
Bontempi, *Reproducible Machine Learning for Credit Card Fraud Detection — Practical Handbook* (ULB MLG and
Worldline), chapter "Performance metrics"; ROC AUC and average precision equal scikit-learn's
`roc_auc_score` and `average_precision_score` (tests/unit/test_scoring_metrics.py checks them against it).

Used by backtests (a candidate rule set replayed on stored history, overall and per rule) and by evaluations of
stored decisions against the labels in force (txguard.evaluation, `txguard evaluate`). Positive = labelled
fraud; predicted positive = flagged.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Generic, TypeVar

from txguard.labels import GENUINE

# A model score moves a decision within its four-place score group only: at most this much, under the 0.0001
# between two groups.
_TIE_BREAK_SCALE = 1e-5


def ranking_score(score: float, model_score: float | None) -> float:
    """What rankings (ROC AUC, AP, CP@k of evaluations, backtests and model comparisons) order decisions by: the
    decision's four-place score, its ties broken by the champion's full-precision probability (None: 0), so that
    rounding never hides the model's ranking. score + model_score × 1e-5: the groups stay in score order, and model
    scores differing by more than about 2e-11 stay apart (a double's resolution near 1)."""
    return score if model_score is None else score + model_score * _TIE_BREAK_SCALE


@dataclass(frozen=True)
class Metrics:
    """Ratios 0–1."""

    precision: float
    recall: float
    f1: float


def metrics(tp: int, fp: int, fn: int) -> Metrics:
    """0.0 where a ratio is undefined (nothing flagged, or no fraud to find)."""
    precision = ratio(tp, tp + fp)
    recall = ratio(tp, tp + fn)
    return Metrics(precision, recall, harmonic(precision, recall))


def ratio(part: int, whole: int) -> float:
    """part / whole, 0.0 when whole is 0."""
    return part / whole if whole else 0.0


def harmonic(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b else 0.0


@dataclass
class Confusion:
    """Counts of transactions by (flagged, labelled fraud)."""

    true_positive: int = 0
    false_positive: int = 0
    false_negative: int = 0
    true_negative: int = 0

    def add(self, predicted: bool, actual: bool, count: int = 1) -> None:
        if predicted and actual:
            self.true_positive += count
        elif predicted:
            self.false_positive += count
        elif actual:
            self.false_negative += count
        else:
            self.true_negative += count

    @property
    def metrics(self) -> Metrics:
        return metrics(self.true_positive, self.false_positive, self.false_negative)


def _checked(scores: Sequence[float], labels: Sequence[int]) -> tuple[int, int]:
    """The numbers of positive and negative labels; raises ValueError on mismatched lengths, NaN scores or
    labels other than 0 and 1."""
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    if any(math.isnan(score) for score in scores):
        raise ValueError("a score is NaN")
    if any(label not in (0, 1) for label in labels):
        raise ValueError("labels must be 0 (genuine) or 1 (fraud)")
    positives = sum(labels)
    return positives, len(labels) - positives


def _tie_groups(scores: Sequence[float], labels: Sequence[int], descending: bool) -> list[tuple[int, int]]:
    """(positives, negatives) per group of equal scores, groups in score order. O(n log n)."""
    order = sorted(range(len(scores)), key=scores.__getitem__, reverse=descending)
    groups: list[tuple[int, int]] = []
    previous: float | None = None
    for index in order:
        label = labels[index]
        if groups and scores[index] == previous:
            pos, neg = groups[-1]
            groups[-1] = (pos + label, neg + 1 - label)
        else:
            groups.append((label, 1 - label))
        previous = scores[index]
    return groups


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve, 0–1: the probability that a random fraud scores above a random genuine
    transaction, a tie counting one half.

    `scores` (n floats, higher = more suspicious, any scale) and `labels` (n ints, 1 = fraud, 0 = genuine; bools
    do) are aligned by transaction. Computed as the Mann–Whitney U statistic over mid-ranks (tied scores share
    the mean of their ranks), U / (positives × negatives), in integer arithmetic up to the one division: equal to
    scikit-learn's `roc_auc_score` (trapezoids under the ROC curve). Handbook, "Performance metrics", threshold-free
    metrics. O(n log n).

    Raises ValueError when only one class is present (the area is undefined), on mismatched lengths, NaN scores
    or labels other than 0/1.
    """
    positives, negatives = _checked(scores, labels)
    if not positives or not negatives:
        raise ValueError("ROC AUC is undefined when only one class is present")
    # Twice the positives' rank sum, so that mid-ranks (halves) stay integers.
    twice_rank_sum = 0
    below = 0
    for pos, neg in _tie_groups(scores, labels, descending=False):
        size = pos + neg
        twice_rank_sum += pos * (2 * below + size + 1)  # mid-rank of ranks below+1 .. below+size
        below += size
    twice_u = twice_rank_sum - positives * (positives + 1)
    return twice_u / (2 * positives * negatives)


def average_precision(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Average precision, 0–1: the step-wise area under the precision–recall curve, sum over thresholds of
    (R_n − R_(n−1)) × P_n, as scikit-learn's `average_precision_score` (no interpolation).

    `scores` (n floats, higher = more suspicious) and `labels` (n ints, 1 = fraud, 0 = genuine) are aligned by
    transaction. Each distinct score is a threshold; tied scores enter together, so a tie group's precision is
    that of the whole group. Handbook, "Performance metrics", precision–recall curve. O(n log n).

    Raises ValueError when no label is a fraud (recall is undefined), on mismatched lengths, NaN scores or
    labels other than 0/1.
    """
    positives, _ = _checked(scores, labels)
    if not positives:
        raise ValueError("average precision is undefined without a fraud")
    total = 0.0
    true_pos = flagged = 0
    for pos, neg in _tie_groups(scores, labels, descending=True):
        true_pos += pos
        flagged += pos + neg
        if pos:
            total += pos * true_pos / flagged
    return total / positives


Day = TypeVar("Day", date, int)


@dataclass(frozen=True)
class DayPrecision(Generic[Day]):
    """One day of Card Precision@k."""

    day: Day
    precision: float  # 0–1: compromised accounts in the top k, divided by k
    detected: tuple[int, ...]  # the compromised accounts in the top k, in rank order
    compromised: int  # accounts with a fraud that day still in the ranking (not removed earlier)


@dataclass(frozen=True)
class CardPrecision(Generic[Day]):
    """Card Precision@k per day, in day order, and its mean over those days (0–1)."""

    k: int
    days: list[DayPrecision[Day]]
    mean: float


def card_precision_at_k(rows: Iterable[tuple[Day, int, float, bool]], k: int = 100) -> CardPrecision[Day]:
    """Card Precision@k per day, as the Handbook defines it ("Performance metrics", precision top-k metrics).

    `rows` are transactions as (day, account_id, score, fraud): day a date or an int day number (one kind
    throughout), score higher = more suspicious, fraud the transaction's label. For each day that has a row,
    in day order:
    1. each account's highest score that day and whether it had at least one fraud that day;
    2. accounts found compromised on an earlier day (a fraud account within that day's top k) are left out;
    3. the accounts are ranked by score descending, then by account id ascending, so that ties are broken the
       same way every time (the Handbook's pandas sort leaves them in no defined order);
    4. the day's precision is the number of accounts with a fraud among the first k, divided by k (not by the
       number ranked: a day with fewer than k accounts, or none left, scores at most that share);
    5. those fraud accounts are removed from every later day's ranking.
    The mean is over the days that have rows. O(n log n).

    Raises ValueError when k < 1 or there is no row.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    by_day: dict[Day, dict[int, tuple[float, bool]]] = defaultdict(dict)
    for day, account_id, score, fraud in rows:
        if math.isnan(score):
            raise ValueError(f"a score of account {account_id} on {day} is NaN")
        accounts = by_day[day]
        best, any_fraud = accounts.get(account_id, (score, False))
        accounts[account_id] = (max(best, score), any_fraud or bool(fraud))
    if not by_day:
        raise ValueError("no transaction to rank")
    removed: set[int] = set()
    days: list[DayPrecision[Day]] = []
    for day in sorted(by_day):
        ranking = [(score, account, fraud) for account, (score, fraud) in by_day[day].items() if account not in removed]
        ranking.sort(key=lambda item: (-item[0], item[1]))
        detected = tuple(account for _, account, fraud in ranking[:k] if fraud)
        compromised = sum(1 for _, _, fraud in ranking if fraud)
        days.append(DayPrecision(day, len(detected) / k, detected, compromised))
        removed.update(detected)
    return CardPrecision(k, days, math.fsum(d.precision for d in days) / len(days))


@dataclass(frozen=True)
class ReasonRecall:
    """Labelled frauds of one reason, how many were flagged, and recall 0–1."""

    frauds: int
    flagged: int
    recall: float


def recall_by_reason(frauds: Iterable[tuple[str, bool]]) -> dict[str, ReasonRecall]:
    """Recall per label reason: `frauds` are labelled frauds as (reason, flagged), reason a fraud pattern's
    name; the result maps each reason present, in name order, to its counts and recall (flagged / frauds).

    Precision has no per-reason form (a false alarm has no reason): see `Evaluation` for the overall one.
    Raises ValueError when a reason is "genuine" (not a fraud).
    """
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for reason, flagged in frauds:
        if reason == GENUINE:
            raise ValueError("a genuine label has no fraud reason")
        count = counts[reason]
        count[0] += 1
        count[1] += bool(flagged)
    return {
        reason: ReasonRecall(total, found, ratio(found, total)) for reason, (total, found) in sorted(counts.items())
    }
