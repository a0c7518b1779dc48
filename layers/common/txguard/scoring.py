"""How decisions compare with known labels: one confusion matrix, and precision, recall and F1 from it.

Used by backtests (a candidate rule set replayed on stored history, overall and per rule) and by evaluations of
stored decisions against the labels of generated traffic (overall and per fraud pattern). Positive = labelled
with a fraud pattern; predicted positive = flagged.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg2.extensions

from txguard.labels import GENUINE, Label, load_labels


@dataclass(frozen=True)
class Metrics:
    """Ratios 0–1."""

    precision: float
    recall: float
    f1: float


def metrics(tp: int, fp: int, fn: int) -> Metrics:
    """0.0 where a ratio is undefined (nothing flagged, or no fraud to find)."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return Metrics(precision, recall, harmonic(precision, recall))


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


_CHUNK = 10_000
_DECISIONS = "SELECT transaction_id, fraud, rule_set_version FROM transactions WHERE transaction_id = ANY(%s::bigint[])"
TABLE_SOURCE = "fraud_labels table"


@dataclass
class Evaluation:
    """Stored decisions against labels, overall and per fraud pattern.

    Only labelled transactions that were stored count; labelled ones never stored are counted apart. Recall is
    per pattern; precision is overall (a false alarm belongs to no pattern), so a pattern's F1 is the harmonic
    mean of the overall precision and that pattern's recall.
    """

    source: str  # TABLE_SOURCE, or the labels file's name
    run_ids: list[int]
    confusion: Confusion = field(default_factory=Confusion)
    flagged: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # by pattern
    missed: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # stored, not flagged
    not_stored: int = 0
    rule_set_versions: set[int] = field(default_factory=set)

    def add(self, pattern: str, fraud: bool | None, version: int | None, count: int = 1) -> None:
        """`count` transactions labelled `pattern`, decided `fraud` (None: not stored) by rule set `version`."""
        if fraud is None:
            self.not_stored += count
            return
        self.confusion.add(fraud, pattern != GENUINE, count)
        (self.flagged if fraud else self.missed)[pattern] += count
        if version is not None:
            self.rule_set_versions.add(version)

    @property
    def patterns(self) -> list[str]:
        return sorted((set(self.flagged) | set(self.missed)) - {GENUINE})

    @property
    def evaluated(self) -> int:
        return sum(self.flagged.values()) + sum(self.missed.values())

    @property
    def tp(self) -> int:
        return self.confusion.true_positive

    @property
    def fn(self) -> int:
        return self.confusion.false_negative

    @property
    def fp(self) -> int:
        return self.confusion.false_positive

    @property
    def tn(self) -> int:
        return self.confusion.true_negative

    @property
    def overall(self) -> Metrics:
        return self.confusion.metrics

    def counts(self, pattern: str) -> tuple[int, int]:
        """The pattern's labelled transactions, and how many of them were flagged."""
        flagged = self.flagged.get(pattern, 0)
        return flagged + self.missed.get(pattern, 0), flagged

    def pattern_metrics(self, pattern: str) -> Metrics:
        total, flagged = self.counts(pattern)
        recall = flagged / total if total else 0.0
        precision = self.overall.precision
        return Metrics(precision, recall, harmonic(precision, recall))

    def as_dict(self) -> dict[str, object]:
        overall = self.overall
        return {
            "labels": self.source,
            "run_ids": self.run_ids,
            "evaluated": self.evaluated,
            "labelled_not_stored": self.not_stored,
            "rule_set_versions": sorted(self.rule_set_versions),
            "confusion_matrix": {"tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn},
            "overall": {"precision": overall.precision, "recall": overall.recall, "f1": overall.f1},
            "patterns": {
                p: {
                    "transactions": self.counts(p)[0],
                    "flagged": self.counts(p)[1],
                    "recall": self.pattern_metrics(p).recall,
                    "f1": self.pattern_metrics(p).f1,
                }
                for p in self.patterns
            },
            "genuine": {
                "transactions": self.fp + self.tn,
                "flagged": self.fp,
                "false_positive_rate": self.fp / (self.fp + self.tn) if self.fp + self.tn else 0.0,
            },
        }


def from_table(cur: psycopg2.extensions.cursor, run_ids: Sequence[int]) -> Evaluation:
    """The stored decisions against the fraud_labels table's labels of `run_ids` (none given: every run)."""
    return from_labels(cur, load_labels(cur, run_ids), run_ids, TABLE_SOURCE)


def from_labels(
    cur: psycopg2.extensions.cursor, labels: dict[int, Label], run_ids: Sequence[int], source: str
) -> Evaluation:
    """The stored decisions against `labels` of `run_ids` (none given: every label), read in chunks."""
    evaluation = Evaluation(source, list(run_ids))
    wanted = set(run_ids)
    chosen = [label for label in labels.values() if not wanted or label.run_id in wanted]
    for start in range(0, len(chosen), _CHUNK):
        chunk = chosen[start : start + _CHUNK]
        cur.execute(_DECISIONS, ([label.transaction_id for label in chunk],))
        decisions = {tid: (fraud, version) for tid, fraud, version in cur.fetchall()}
        for label in chunk:
            fraud, version = decisions.get(label.transaction_id, (None, None))
            evaluation.add(label.pattern, fraud, version)
    return evaluation
