"""How well the stored decisions match the labels of generated traffic.

Positive = labelled with a fraud pattern; predicted positive = the decision stored at ingest says fraud.
Only labelled transactions that were stored count; labelled ones never stored are reported apart.
Recall is per pattern; precision is overall (a false alarm belongs to no pattern), so a pattern's F1 is
the harmonic mean of the overall precision and that pattern's recall.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg2.extensions

from txguard.generator.labels import Label
from txguard.generator.patterns import GENUINE
from txguard.scoring import Metrics, harmonic, metrics

_CHUNK = 10_000

_COUNT_FROM_TABLE = """
    SELECT l.pattern, t.fraud, t.rule_set_version, count(*)
    FROM fraud_labels l
    LEFT JOIN transactions t ON t.transaction_id = l.transaction_id
    WHERE cardinality(%(runs)s::bigint[]) = 0 OR l.run_id = ANY(%(runs)s::bigint[])
    GROUP BY 1, 2, 3
"""
_DECISIONS = "SELECT transaction_id, fraud, rule_set_version FROM transactions WHERE transaction_id = ANY(%s::bigint[])"


@dataclass
class Evaluation:
    source: str
    run_ids: list[int]
    flagged: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # by pattern
    missed: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # stored, not flagged
    not_stored: int = 0
    rule_set_versions: set[int] = field(default_factory=set)

    def add(self, pattern: str, fraud: bool | None, version: int | None, count: int = 1) -> None:
        if fraud is None:
            self.not_stored += count
            return
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
        return sum(n for p, n in self.flagged.items() if p != GENUINE)

    @property
    def fn(self) -> int:
        return sum(n for p, n in self.missed.items() if p != GENUINE)

    @property
    def fp(self) -> int:
        return self.flagged.get(GENUINE, 0)

    @property
    def tn(self) -> int:
        return self.missed.get(GENUINE, 0)

    @property
    def overall(self) -> Metrics:
        return metrics(self.tp, self.fp, self.fn)

    def counts(self, pattern: str) -> tuple[int, int]:
        """The pattern's labelled transactions, and how many of them were flagged."""
        flagged = self.flagged.get(pattern, 0)
        return flagged + self.missed.get(pattern, 0), flagged

    def pattern_metrics(self, pattern: str) -> Metrics:
        total, flagged = self.counts(pattern)
        recall = flagged / total if total else 0.0
        precision = self.overall.precision
        return Metrics(precision, recall, harmonic(precision, recall))

    def as_dict(self) -> dict[str, Any]:
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


TABLE_SOURCE = "fraud_labels table"


def from_table(cur: psycopg2.extensions.cursor, run_ids: Sequence[int]) -> Evaluation:
    evaluation = Evaluation(TABLE_SOURCE, list(run_ids))
    cur.execute(_COUNT_FROM_TABLE, {"runs": list(run_ids)})
    for pattern, fraud, version, count in cur.fetchall():
        evaluation.add(pattern, fraud, version, count)
    return evaluation


def from_labels(
    cur: psycopg2.extensions.cursor, labels: dict[int, Label], run_ids: Sequence[int], source: str
) -> Evaluation:
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


def render_text(e: Evaluation) -> str:
    o = e.overall
    runs = ", ".join(str(r) for r in e.run_ids) or "all"
    versions = ", ".join(str(v) for v in sorted(e.rule_set_versions)) or "-"
    width = max([len(p) for p in e.patterns] + [len("compromised_merchant")])
    # A labels file may hold any labelled traffic, not only generated runs: say where the truth came from.
    where = (
        "the labels txguard generate wrote to the fraud_labels table"
        if e.source == TABLE_SOURCE
        else f"the labels in the file {e.source}"
    )
    lines = [
        f"Evaluated {e.evaluated:,} stored transactions against {where} (runs: {runs}; rule set version {versions})",
    ]
    if e.not_stored:
        lines.append(f"Left out: {e.not_stored:,} labelled transactions that are not stored")
    lines += [
        "",
        "Confusion matrix        flagged   not flagged",
        f"  fraud        {e.tp:>14,} {e.fn:>13,}",
        f"  genuine      {e.fp:>14,} {e.tn:>13,}",
        "",
        f"{'':<{width}}   precision  recall      F1",
        f"{'overall':<{width}}   {o.precision:>9.3f}  {o.recall:>6.3f}  {o.f1:>6.3f}",
        "",
        f"{'pattern':<{width}}  transactions  flagged  recall      F1",
    ]
    for pattern in e.patterns:
        m = e.pattern_metrics(pattern)
        total, flagged = e.counts(pattern)
        lines.append(f"{pattern:<{width}}  {total:>12,}  {flagged:>7,}  {m.recall:>6.3f}  {m.f1:>6.3f}")
    genuine = e.fp + e.tn
    rate = e.fp / genuine if genuine else 0.0
    lines.append(f"{GENUINE:<{width}}  {genuine:>12,}  {e.fp:>7,}  (false positive rate {rate:.2%})")
    lines.append("")
    lines.append("Per-pattern F1 uses the overall precision: a false alarm belongs to no pattern.")
    return "\n".join(lines)


def render_markdown(e: Evaluation) -> str:
    o = e.overall
    rows = [
        "| pattern | transactions | flagged | precision | recall | F1 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| **overall** | {e.tp + e.fn:,} fraud | {e.tp:,} | {o.precision:.3f} | {o.recall:.3f} | **{o.f1:.3f}** |",
    ]
    for pattern in e.patterns:
        m = e.pattern_metrics(pattern)
        total, flagged = e.counts(pattern)
        rows.append(f"| {pattern} | {total:,} | {flagged:,} | ({m.precision:.3f}) | {m.recall:.3f} | {m.f1:.3f} |")
    rows.append(f"| genuine | {e.fp + e.tn:,} | {e.fp:,} | | | |")
    rows += [
        "",
        "| | flagged | not flagged |",
        "| --- | ---: | ---: |",
        f"| fraud | {e.tp:,} | {e.fn:,} |",
        f"| genuine | {e.fp:,} | {e.tn:,} |",
    ]
    return "\n".join(rows)


def render_json(e: Evaluation) -> str:
    return json.dumps(e.as_dict(), indent=2)


RENDERERS = {"text": render_text, "markdown": render_markdown, "json": render_json}
