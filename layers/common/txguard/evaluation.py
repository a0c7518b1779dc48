"""Stored decisions against labels: how well txguard ranked and flagged what turned out to be fraud.

`txguard evaluate` reads the decisions stored at ingest (their score and fraud flag) for a period, with the label
in force for each transaction (txguard.labels), and reports, as the Fraud Detection Handbook defines them
(Le Borgne et al., "Performance metrics"; see scoring.py for each formula):
- ROC AUC and average precision of the score over transactions;
- precision, recall and F1 of the fraud flag, with the confusion matrix;
- Card Precision@k per day (default k = 100) and its mean;
- recall per label reason (a fraud pattern or scenario);
- the outcomes: how many decisions allow, review and block (and how many frauds each holds), the precision of
  `block` (frauds among the blocked: the fraud flag's precision), the recall within `block` + `review` (frauds
  blocked or reviewed among all frauds: what an analyst reviewing every review item could catch) and the share of
  decisions in review (the analysts' load).

A transaction with no label in force counts as genuine (as a card with no chargeback is), unless asked to leave
unlabelled transactions out; both counts are reported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from txguard.features import DAY_MS
from txguard.scoring import (
    CardPrecision,
    Confusion,
    Metrics,
    average_precision,
    card_precision_at_k,
    harmonic,
    ranking_score,
    recall_by_reason,
    roc_auc,
)
from txguard.storage.transactions import ScoredRow

UNLABELLED_REASON = "(no reason)"


class Truth(Protocol):
    """What an evaluation needs of the label in force for a transaction."""

    @property
    def fraud(self) -> bool: ...

    @property
    def reason(self) -> str | None: ...


@dataclass(frozen=True)
class Judged:
    """One stored decision and the truth about it: `fraud` None when no label is in force."""

    transaction_id: int
    account_id: int
    ts: int  # epoch ms
    score: float  # 0–1, the decision's score, ties broken by the model's (scoring.ranking_score)
    flagged: bool  # the decision's fraud flag
    detector_version: int
    fraud: bool | None
    reason: str | None
    outcome: str | None = None  # allow, review or block; None: from `flagged` (block or allow)


@dataclass
class Evaluation:
    """Decisions against labels, built one judged decision at a time (`add`), summarised by `report`.

    `count_unlabelled_as_genuine`: a decision with no label in force counts as genuine (True) or is left out.
    """

    source: str  # where the labels came from, for the report
    k: int = 100
    count_unlabelled_as_genuine: bool = True
    confusion: Confusion = field(default_factory=Confusion)
    scores: list[float] = field(default_factory=list)
    truth: list[int] = field(default_factory=list)
    days: list[tuple[int, int, float, bool]] = field(default_factory=list)  # (UTC day, account, score, fraud)
    frauds: list[tuple[str, bool]] = field(default_factory=list)  # (reason, flagged) of each labelled fraud
    labelled_fraud: int = 0
    labelled_genuine: int = 0
    unlabelled: int = 0
    left_out: int = 0
    not_stored: int = 0  # labels (from a file) whose transaction is not stored
    detector_versions: set[int] = field(default_factory=set)
    first_ts: int | None = None
    last_ts: int | None = None
    outcomes: dict[str, list[int]] = field(default_factory=dict)  # outcome -> [decisions, frauds among them]

    def add(self, j: Judged) -> None:
        if j.fraud is None:
            self.unlabelled += 1
            if not self.count_unlabelled_as_genuine:
                self.left_out += 1
                return
        fraud = bool(j.fraud)
        if j.fraud is True:
            self.labelled_fraud += 1
        elif j.fraud is False:
            self.labelled_genuine += 1
        self.confusion.add(j.flagged, fraud)
        counts = self.outcomes.setdefault(j.outcome or ("block" if j.flagged else "allow"), [0, 0])
        counts[0] += 1
        counts[1] += fraud
        self.scores.append(j.score)
        self.truth.append(int(fraud))
        self.days.append((j.ts // DAY_MS, j.account_id, j.score, fraud))
        if fraud:
            self.frauds.append((j.reason or UNLABELLED_REASON, j.flagged))
        self.detector_versions.add(j.detector_version)
        self.first_ts = j.ts if self.first_ts is None else min(self.first_ts, j.ts)
        self.last_ts = j.ts if self.last_ts is None else max(self.last_ts, j.ts)

    def add_all(self, judged: Iterable[Judged]) -> Evaluation:
        for j in judged:
            self.add(j)
        return self

    @property
    def evaluated(self) -> int:
        return len(self.scores)

    def report(self) -> Report:
        """The metrics; a ranking metric is None where undefined (one class only, or nothing evaluated)."""
        positives = sum(self.truth)
        both = 0 < positives < len(self.truth)
        cp = card_precision_at_k(self.days, self.k) if self.days else None
        flag = self.confusion.metrics
        reasons = {
            reason: ReasonReport(r.frauds, r.flagged, r.recall, harmonic(flag.precision, r.recall))
            for reason, r in recall_by_reason(self.frauds).items()
        }
        return Report(
            source=self.source,
            evaluated=self.evaluated,
            labelled_fraud=self.labelled_fraud,
            labelled_genuine=self.labelled_genuine,
            unlabelled=self.unlabelled,
            unlabelled_counted_as_genuine=self.count_unlabelled_as_genuine,
            left_out=self.left_out,
            not_stored=self.not_stored,
            detector_versions=sorted(self.detector_versions),
            first_ts=self.first_ts,
            last_ts=self.last_ts,
            frauds=positives,
            roc_auc=roc_auc(self.scores, self.truth) if both else None,
            average_precision=average_precision(self.scores, self.truth) if positives else None,
            confusion=self.confusion,
            flag=flag,
            card_precision=cp,
            reasons=reasons,
            outcomes=OutcomeReport.of(self.outcomes, positives),
        )


@dataclass(frozen=True)
class ReasonReport:
    """Labelled frauds of one reason: how many, how many flagged, recall 0–1, and F1 with the overall precision
    (a false alarm belongs to no reason)."""

    frauds: int
    flagged: int
    recall: float
    f1: float


@dataclass(frozen=True)
class OutcomeReport:
    """Decisions by outcome: `counts` and `frauds` per outcome (allow, review, block), the precision of block (0–1;
    None when nothing is blocked), the recall within block + review (0–1; None without frauds) and the share of
    decisions in review (0–1)."""

    counts: dict[str, int]
    frauds: dict[str, int]
    block_precision: float | None
    recall_block_review: float | None
    review_share: float

    @staticmethod
    def of(outcomes: dict[str, list[int]], frauds: int) -> OutcomeReport:
        counts = {o: outcomes.get(o, [0, 0])[0] for o in ("allow", "review", "block")}
        caught = {o: outcomes.get(o, [0, 0])[1] for o in ("allow", "review", "block")}
        total = sum(counts.values())
        return OutcomeReport(
            counts,
            caught,
            caught["block"] / counts["block"] if counts["block"] else None,
            (caught["block"] + caught["review"]) / frauds if frauds else None,
            counts["review"] / total if total else 0.0,
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "counts": self.counts,
            "frauds": self.frauds,
            "block_precision": self.block_precision,
            "recall_block_review": self.recall_block_review,
            "review_share": self.review_share,
        }


@dataclass(frozen=True)
class Report:
    source: str
    evaluated: int
    labelled_fraud: int
    labelled_genuine: int
    unlabelled: int
    unlabelled_counted_as_genuine: bool
    left_out: int
    not_stored: int
    detector_versions: list[int]
    first_ts: int | None
    last_ts: int | None
    frauds: int
    roc_auc: float | None
    average_precision: float | None
    confusion: Confusion
    flag: Metrics
    card_precision: CardPrecision[int] | None
    reasons: dict[str, ReasonReport]
    outcomes: OutcomeReport = field(default_factory=lambda: OutcomeReport.of({}, 0))

    def as_dict(self) -> dict[str, object]:
        """The report as JSON-ready data (ratios 0–1, times epoch ms, days as UTC day numbers)."""
        c, cp = self.confusion, self.card_precision
        return {
            "labels": self.source,
            "evaluated": self.evaluated,
            "frauds": self.frauds,
            "labelled_fraud": self.labelled_fraud,
            "labelled_genuine": self.labelled_genuine,
            "unlabelled": self.unlabelled,
            "unlabelled_counted_as_genuine": self.unlabelled_counted_as_genuine,
            "left_out": self.left_out,
            "labelled_not_stored": self.not_stored,
            "detector_versions": self.detector_versions,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "roc_auc": _finite(self.roc_auc),
            "average_precision": _finite(self.average_precision),
            "card_precision": None
            if cp is None
            else {
                "k": cp.k,
                "mean": cp.mean,
                "days": [
                    {"day": d.day, "precision": d.precision, "detected": len(d.detected), "compromised": d.compromised}
                    for d in cp.days
                ],
            },
            "confusion_matrix": {
                "tp": c.true_positive,
                "fp": c.false_positive,
                "fn": c.false_negative,
                "tn": c.true_negative,
            },
            "flag": {"precision": self.flag.precision, "recall": self.flag.recall, "f1": self.flag.f1},
            "outcomes": self.outcomes.as_dict(),
            "reasons": {
                reason: {"frauds": r.frauds, "flagged": r.flagged, "recall": r.recall, "f1": r.f1}
                for reason, r in self.reasons.items()
            },
        }


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def judge(
    chunks: Iterable[Iterable[ScoredRow]], labels_for: Callable[[list[int]], Mapping[int, Truth]]
) -> Iterator[Judged]:
    """Each stored decision of `chunks` (storage.transactions.scored_in_period) with the label in force for it,
    looked up one chunk at a time by `labels_for(transaction ids)`."""
    for chunk in chunks:
        rows = list(chunk)
        labels = labels_for([r.transaction_id for r in rows])
        for r in rows:
            label = labels.get(r.transaction_id)
            yield Judged(
                r.transaction_id,
                r.account_id,
                r.ts,
                ranking_score(r.score, r.model_score),
                r.fraud,
                r.detector_version,
                None if label is None else label.fraud,
                None if label is None else label.reason,
                r.outcome,
            )
