"""Backtesting a candidate rule set on stored history, point-in-time, before anyone applies it.

The whole stored history is replayed in time order through the same decision loop as ingest, so each
transaction is judged only on what came before it (accounts and merchants alike). Nothing is written.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg2.extensions

from txguard.detection import decide_in_time_order, empty_history, empty_timeline
from txguard.domain import Decision, Transaction
from txguard.features import DAY_MS, RISK_FEATURES, RISK_WINDOWS, AccountHistory, FeatureSettings, Timeline
from txguard.labels import GENUINE
from txguard.rule_engine import CompiledRuleSet
from txguard.scoring import Confusion
from txguard.storage import merchants as merchant_store
from txguard.storage import transactions

_CHUNK = 20_000


@dataclass
class BacktestReport:
    evaluated: int = 0
    flagged: int = 0
    stored_flagged: int = 0
    changed: int = 0  # decisions (fraud or not) that differ from the stored ones
    newly_flagged: int = 0
    no_longer_flagged: int = 0
    fired: Counter[str] = field(default_factory=Counter)  # per rule id, active and shadow alike
    labelled: int = 0
    overall: Confusion = field(default_factory=Confusion)
    per_rule: dict[str, Confusion] = field(default_factory=dict)


def replay(
    cur: psycopg2.extensions.cursor, rules: CompiledRuleSet, until_ms: int | None = None
) -> Iterator[tuple[Transaction, Decision, Decision]]:
    """(transaction, stored decision, decision with `rules`) for the stored history in time order."""
    histories: dict[int, AccountHistory] = {}
    merchants: dict[str, Timeline] = {}
    after: tuple[int, int] | None = None
    while True:
        stored = transactions.in_time_order(cur, after, until_ms, _CHUNK)
        if not stored:
            return
        chunk = [s.transaction for s in stored]
        for t in chunk:
            if t.account_id not in histories:
                histories[t.account_id] = empty_history()
            if t.merchant_id is not None and t.merchant_id not in merchants:
                merchants[t.merchant_id] = empty_timeline()
        if not rules.needed_features.isdisjoint(RISK_FEATURES):
            _attach_label_steps(cur, chunk, merchants, rules.feature_settings)
        # A chunk may end inside a group of equal timestamps; the next chunk continues after the last row,
        # and rows sharing a timestamp never see each other, so splitting a group changes nothing.
        decisions = decide_in_time_order(chunk, histories, merchants, rules)
        for s in stored:
            yield s.transaction, s.decision, decisions[s.transaction.transaction_id]
        last = chunk[-1]
        after = (last.ts, last.transaction_id)


def _attach_label_steps(
    cur: psycopg2.extensions.cursor, chunk: list[Transaction], merchants: dict[str, Timeline], settings: FeatureSettings
) -> None:
    """The label steps merchant risk reads for the chunk's transactions (the per-day counts are the replay's own)."""
    span: dict[str, tuple[int, int]] = {}
    for t in chunk:
        if t.merchant_id is not None:
            day = t.ts // DAY_MS
            first, last = span.get(t.merchant_id, (day, day))
            span[t.merchant_id] = (min(first, day), max(last, day))
    delay, widest = settings.label_delay_days, max(w for _, w in RISK_WINDOWS)
    steps = merchant_store.label_steps(
        cur, {m: (first - delay - widest, last - delay, last) for m, (first, last) in span.items()}
    )
    for merchant_id, merchant_steps in steps.items():
        merchants[merchant_id].use_label_steps(merchant_steps)


def backtest(
    cur: psycopg2.extensions.cursor,
    rules: CompiledRuleSet,
    from_ms: int | None = None,
    to_ms: int | None = None,
    labels: dict[int, str] | None = None,
) -> BacktestReport:
    """What `rules` would have decided on the stored history from `from_ms` to `to_ms` (epoch ms, exclusive),
    against the stored decisions and, given `labels` (transaction id -> pattern, read by txguard.labels), scored
    overall and per rule."""
    report = BacktestReport()
    for t, stored, candidate in replay(cur, rules, to_ms):
        if from_ms is not None and t.ts < from_ms:
            continue
        report.evaluated += 1
        report.flagged += candidate.fraud
        report.stored_flagged += stored.fraud
        if candidate.fraud != stored.fraud:
            report.changed += 1
            report.newly_flagged += candidate.fraud
            report.no_longer_flagged += stored.fraud
        fired = {reason.rule_id for reason in candidate.reasons}
        report.fired.update(fired)
        if labels is None:
            continue
        actual = labels.get(t.transaction_id, GENUINE) != GENUINE
        report.labelled += 1
        report.overall.add(candidate.fraud, actual)
        for rule_id in {r.id for r in rules.rule_set.rules}:
            report.per_rule.setdefault(rule_id, Confusion()).add(rule_id in fired, actual)
    return report
