"""Champion against shadow on labelled outcomes, from the scores stored with the decisions (`txguard models
compare`): nothing is scored again, so the comparison is of what each model said live, on the same transactions.

A model's score on a decision is its `model_score` when it was the champion that decided, else its entry in
`shadow_scores`. Only decisions both models scored are compared; a decision with no label in force counts as
genuine (as `txguard evaluate` counts it by default). Metrics are txguard.scoring's: ROC AUC, average precision,
Card Precision@k per day (the Fraud Detection Handbook's definitions), and precision, recall and F1 at each
model's own threshold (from its artifact).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import psycopg2.extensions

from txguard.features import DAY_MS
from txguard.scoring import Confusion, average_precision, card_precision_at_k, roc_auc

_CHUNK = 20_000


@dataclass
class ModelOutcome:
    """One model's ranking and flags over the compared decisions; ratios 0–1, None where undefined."""

    version: int
    threshold: float | None  # None: the artifact could not be read, so no flag metrics
    roc_auc: float | None = None
    average_precision: float | None = None
    card_precision: float | None = None
    confusion: Confusion = field(default_factory=Confusion)

    def as_dict(self) -> dict[str, object]:
        metrics = self.confusion.metrics
        flags = self.threshold is not None
        return {
            "version": self.version,
            "threshold": self.threshold,
            "roc_auc": self.roc_auc,
            "average_precision": self.average_precision,
            "card_precision_at_k": self.card_precision,
            "precision": metrics.precision if flags else None,
            "recall": metrics.recall if flags else None,
            "f1": metrics.f1 if flags else None,
            "flagged": self.confusion.true_positive + self.confusion.false_positive if flags else None,
        }


@dataclass
class Comparison:
    compared: int
    frauds: int
    k: int
    from_ms: int | None
    to_ms: int | None
    models: tuple[ModelOutcome, ModelOutcome]

    def as_dict(self) -> dict[str, object]:
        return {
            "compared": self.compared,
            "frauds": self.frauds,
            "k": self.k,
            "from": self.from_ms,
            "to": self.to_ms,
            "champion": self.models[0].as_dict(),
            "shadow": self.models[1].as_dict(),
        }


@dataclass(frozen=True)
class ScoredByBoth:
    transaction_id: int
    account_id: int
    ts: int  # epoch ms
    first: float  # 0–1
    second: float


def scored_by_both(
    cur: psycopg2.extensions.cursor, first: int, second: int, from_ms: int | None, to_ms: int | None
) -> Iterator[list[ScoredByBoth]]:
    """The stored decisions in [from_ms, to_ms) (epoch ms, None: unbounded) that models `first` and `second` both
    scored (as champion or shadow), in (ts, transaction id) order, a chunk at a time (keyset pages)."""
    after: tuple[int, int] | None = None
    while True:
        cur.execute(
            """SELECT transaction_id, account_id, txguard_ts_to_ms(ts), a, b FROM (
                   SELECT transaction_id, account_id, ts,
                          CASE WHEN model_version = %(first)s THEN model_score
                               ELSE (shadow_scores ->> %(first_key)s)::float8 END AS a,
                          CASE WHEN model_version = %(second)s THEN model_score
                               ELSE (shadow_scores ->> %(second_key)s)::float8 END AS b
                   FROM transactions
                   WHERE (%(from)s::bigint IS NULL OR ts >= txguard_ms_to_ts(%(from)s))
                     AND (%(to)s::bigint IS NULL OR ts < txguard_ms_to_ts(%(to)s))
                     AND (%(after_ts)s::bigint IS NULL
                          OR (ts, transaction_id) > (txguard_ms_to_ts(%(after_ts)s), %(after_id)s::bigint))
                     AND (model_version IN (%(first)s, %(second)s) OR shadow_scores IS NOT NULL)
                   ORDER BY ts, transaction_id
                   LIMIT %(chunk)s) AS page""",
            {
                "first": first,
                "second": second,
                "first_key": str(first),
                "second_key": str(second),
                "from": from_ms,
                "to": to_ms,
                "after_ts": None if after is None else after[0],
                "after_id": None if after is None else after[1],
                "chunk": _CHUNK,
            },
        )
        rows = cur.fetchall()
        if not rows:
            return
        yield [ScoredByBoth(*row) for row in rows if row[3] is not None and row[4] is not None]
        after = (rows[-1][2], rows[-1][0])


def compare(
    chunks: Iterator[list[ScoredByBoth]],
    versions: tuple[int, int],
    thresholds: tuple[float | None, float | None],
    is_fraud: Callable[[list[int]], Mapping[int, bool]],
    k: int = 100,
    from_ms: int | None = None,
    to_ms: int | None = None,
) -> Comparison:
    """Both models' metrics over the decisions of `chunks`; `is_fraud(transaction ids)` gives the labels in force
    (a missing id: genuine). CP@k ranks each day's accounts by their highest score."""
    scores: tuple[list[float], list[float]] = ([], [])
    days: tuple[list[tuple[int, int, float, bool]], list[tuple[int, int, float, bool]]] = ([], [])
    truth: list[int] = []
    outcomes = (ModelOutcome(versions[0], thresholds[0]), ModelOutcome(versions[1], thresholds[1]))
    for chunk in chunks:
        labels = is_fraud([row.transaction_id for row in chunk])
        for row in chunk:
            fraud = bool(labels.get(row.transaction_id, False))
            truth.append(int(fraud))
            for i, score in enumerate((row.first, row.second)):
                scores[i].append(score)
                days[i].append((row.ts // DAY_MS, row.account_id, score, fraud))
                threshold = outcomes[i].threshold
                if threshold is not None:
                    outcomes[i].confusion.add(score >= threshold, fraud)
    positives = sum(truth)
    for i, outcome in enumerate(outcomes):
        if 0 < positives < len(truth):
            outcome.roc_auc = roc_auc(scores[i], truth)
        if positives:
            outcome.average_precision = average_precision(scores[i], truth)
        if days[i]:
            outcome.card_precision = card_precision_at_k(days[i], k).mean
    return Comparison(len(truth), positives, k, from_ms, to_ms, outcomes)
