"""Sending a generated run in batches: labels first (to the table or a file), then the transactions."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from txguard.labels import GENUINE
from txguard.settings import DatabaseSettings
from txguard_generator.labels import LabelsFile, insert_labels
from txguard_generator.sinks import HttpSink, Outcome, Progress, Sink
from txguard_generator.traffic import GeneratedRun, Labelled


class LabelDestination(Protocol):
    description: str

    def write(self, run_id: int, items: Sequence[Labelled]) -> None: ...

    def close(self) -> None: ...


class DatabaseLabels:
    """The labels store, through the service's own connection."""

    description = "labels table"

    def write(self, run_id: int, items: Sequence[Labelled]) -> None:
        from txguard.db import run_in_transaction

        run_in_transaction(lambda cur: insert_labels(cur, run_id, items))

    def close(self) -> None:
        pass


class FileLabels:
    def __init__(self, path: str | Path) -> None:
        self.description = str(path)
        self._file = LabelsFile(path)

    def write(self, run_id: int, items: Sequence[Labelled]) -> None:
        self._file.write(run_id, items)

    def close(self) -> None:
        self._file.close()


def database_configured() -> bool:
    settings = DatabaseSettings.from_env()
    return bool(settings.url or (settings.host and settings.secret_arn))


@dataclass
class RunSummary:
    run_id: int
    seed: int
    first_ts: int | None
    last_ts: int | None
    generated: int
    patterns: dict[str, int]
    destinations: list[str]
    labels: list[str]
    outcomes: list[Outcome] = field(default_factory=list)  # one per destination
    sent: int = 0
    retries: int = 0
    elapsed_s: float = 0.0

    @property
    def fraud(self) -> int:
        return sum(n for pattern, n in self.patterns.items() if pattern != GENUINE)

    @property
    def outcome(self) -> Outcome:
        total = Outcome()
        for outcome in self.outcomes:
            total += outcome
        return total

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "seed": self.seed,
            "first_timestamp": self.first_ts,
            "last_timestamp": self.last_ts,
            "generated": self.generated,
            "fraud": self.fraud,
            "patterns": self.patterns,
            "destinations": self.destinations,
            "labels": self.labels,
            "stored": self.outcome.stored,
            "duplicates": self.outcome.duplicates,
            "flagged": self.outcome.flagged,
            "written": self.outcome.written,
            "retries": self.retries,
            "seconds": round(self.elapsed_s, 3),
        }

    def lines(self) -> list[str]:
        def when(ms: int | None) -> str:
            return "-" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")

        fraud = ", ".join(f"{p} {n:,}" for p, n in sorted(self.patterns.items()) if p != GENUINE)
        lines = [
            f"run {self.run_id} (seed {self.seed}): {self.generated:,} transactions "
            f"from {when(self.first_ts)} to {when(self.last_ts)}, {self.fraud:,} fraud ({fraud or 'none'})",
        ]
        for destination, o in zip(self.destinations, self.outcomes, strict=True):
            lines.append(
                f"{destination}: {o.written:,} written"
                if o.written
                else f"{destination}: {o.stored:,} stored, {o.duplicates:,} duplicates, {o.flagged:,} flagged"
            )
        lines.append(f"{self.sent:,} transactions in {self.elapsed_s:.2f} s ({self.rate:,.0f} tx/s)")
        if self.retries:
            lines.append(f"{self.retries} batch attempts retried")
        lines.append(f"labels: {', '.join(self.labels) if self.labels else 'not kept'}")
        return lines


def deliver(
    run: GeneratedRun,
    sinks: Sequence[Sink],
    label_destinations: Sequence[LabelDestination],
    batch_size: int,
    progress: Progress | None = None,
) -> RunSummary:
    """Labels of each batch are written before the batch is sent: a label may exist without its
    transaction (a failed run), never a generated transaction without its label."""
    items = run.items
    summary = RunSummary(
        run_id=run.run_id,
        seed=run.seed,
        first_ts=items[0].transaction.ts if items else None,
        last_ts=items[-1].transaction.ts if items else None,
        generated=len(items),
        patterns=dict(Counter(item.pattern for item in items)),
        destinations=[sink.description for sink in sinks],
        labels=[labels.description for labels in label_destinations],
        outcomes=[Outcome() for _ in sinks],
    )
    started = time.monotonic()
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            for labels in label_destinations:
                labels.write(run.run_id, chunk)
            batch = [item.transaction for item in chunk]
            for sink, outcome in zip(sinks, summary.outcomes, strict=True):
                outcome += sink.send(batch)
            summary.sent += len(chunk)
            if progress is not None:
                progress.advance(len(chunk))
    finally:
        summary.elapsed_s = time.monotonic() - started
        summary.retries = sum(sink.retries for sink in sinks if isinstance(sink, HttpSink))
        if progress is not None:
            progress.finish()
        for sink in sinks:
            sink.close()
        for labels in label_destinations:
            labels.close()
    return summary
