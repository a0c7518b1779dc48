"""Backtesting a candidate rule set on stored history, point-in-time, before anyone applies it.

Two ways, the same decisions:
- **From the stored features** (`on_stored_features`): each decision stored the feature values it was taken on,
  so a candidate that reads only features those decisions stored (with the same time zone and label delay, where
  they matter) is evaluated on them directly: a window costs its own rows, wherever it lies in the history.
- **By replay** (`replay`): the whole stored history up to the window's end is replayed in time order through
  the same decision loop as ingest, each transaction judged only on what came before it. Needed when the
  candidate reads a feature the stored decisions did not.
Either way the candidate reads the champion score stored with each decision as `model_score`, and is combined
with it as serving combines them (models/serving.py): the models are not run again. The allow and block lists and
the rule snoozes are applied as they stand now (txguard.outcomes, read once per chunk), or, given `candidates`
(lists.CandidateLists: `txguard backtest --lists FILE`), with candidate lists in place of the stored ones, both
where a list decides by itself and where a rule reads it (`IN LIST`): a backtest shows what a list change, a rule
change or a snooze would have changed on stored history. Nothing is written.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg2.extensions

from txguard import outcomes
from txguard.detection import TextReads, decide_in_time_order, empty_history, empty_timeline, list_memberships
from txguard.domain import Decision, Transaction
from txguard.evaluation import Evaluation, Judged
from txguard.features import (
    DAY_MS,
    LOCAL_TIME_FEATURES,
    MODEL_SCORE,
    RISK_FEATURES,
    RISK_WINDOWS,
    AccountHistory,
    FeatureSettings,
    Timeline,
)
from txguard.labels import GENUINE
from txguard.lists import CandidateLists
from txguard.models.serving import stored_model_feature, with_stored_model
from txguard.rule_engine import CompiledRuleSet
from txguard.scoring import Confusion, ranking_score
from txguard.storage import merchants as merchant_store
from txguard.storage import rule_sets, transactions

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
    outcomes: Counter[str] = field(default_factory=Counter)  # the candidate's decisions by outcome
    stored_outcomes: Counter[str] = field(default_factory=Counter)
    outcome_changes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (stored, candidate) when they differ
    method: str = ""  # "stored features" or "replay"
    ranking: Evaluation | None = None  # the candidate's scores against the labels (ROC AUC, AP, CP@k), given labels
    stored_ranking: Evaluation | None = None  # the stored decisions against the same labels, to compare


def _memberships(
    cur: psycopg2.extensions.cursor,
    chunk: list[Transaction],
    rules: CompiledRuleSet,
    candidates: CandidateLists | None,
) -> dict[str, frozenset[str]]:
    """detection.list_memberships of the lists `rules` read, those the candidate gives read from it instead."""
    found = list_memberships(cur, chunk, rules)
    if candidates is not None:
        for name, field in rules.list_fields.items():
            if candidates.holds(name):
                found[name] = candidates.members(name, {v for t in chunk if (v := t.text_value(field)) is not None})
    return found


def replay(
    cur: psycopg2.extensions.cursor,
    rules: CompiledRuleSet,
    until_ms: int | None = None,
    candidates: CandidateLists | None = None,
) -> Iterator[tuple[Transaction, Decision, Decision]]:
    """(transaction, stored decision, decision with `rules` and the `candidates` lists, else the stored ones) for
    the stored history in time order."""
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
        model_scores = {s.transaction.transaction_id: stored_model_feature(s.decision) for s in stored}
        in_lists = _memberships(cur, chunk, rules, candidates)
        judged = outcomes.for_batch(cur, chunk, candidates=candidates)
        decisions = decide_in_time_order(chunk, histories, merchants, rules, model_scores, in_lists, judged.snoozed)
        for s in stored:
            candidate = with_stored_model(decisions[s.transaction.transaction_id], s.decision, rules)
            yield s.transaction, s.decision, judged.judge(s.transaction, candidate)
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


_SETTINGS_DEPENDENT = RISK_FEATURES | LOCAL_TIME_FEATURES


def stored_features_cover(
    cur: psycopg2.extensions.cursor, rules: CompiledRuleSet, from_ms: int | None, to_ms: int | None
) -> bool:
    """Whether every stored decision in [from_ms, to_ms) kept every feature `rules` reads, computed with the same
    feature settings where those matter (local time, merchant risk): then `on_stored_features` gives what a replay
    would. One indexed pass over the window's rows."""
    # The amount is the transaction's own, the model score the decision's.
    needed = sorted((rules.rule_features | {"count"}) - {"amount", MODEL_SCORE})
    cur.execute(
        """SELECT count(*) FILTER (WHERE features IS NULL OR NOT features::jsonb ?& %s::text[]),
                  coalesce(array_agg(DISTINCT rule_set_version), '{}')
           FROM transactions
           WHERE (%s::bigint IS NULL OR ts >= txguard_ms_to_ts(%s))
             AND (%s::bigint IS NULL OR ts < txguard_ms_to_ts(%s))""",
        (needed, from_ms, from_ms, to_ms, to_ms),
    )
    missing, versions = cur.fetchone()
    if missing:
        return False
    if rules.rule_features.isdisjoint(_SETTINGS_DEPENDENT):
        return True
    for number in versions:
        stored = rule_sets.version(cur, number)
        if stored is None or stored.rule_set.feature_settings() != rules.feature_settings:
            return False
    return True


def on_stored_features(
    cur: psycopg2.extensions.cursor,
    rules: CompiledRuleSet,
    from_ms: int | None,
    to_ms: int | None,
    candidates: CandidateLists | None = None,
) -> Iterator[tuple[Transaction, Decision, Decision]]:
    """(transaction, stored decision, decision with `rules` on the features stored with it, and the `candidates`
    lists, else the stored ones) for [from_ms, to_ms) in time order; only valid where `stored_features_cover`
    holds."""
    after: tuple[int, int] | None = None
    while True:
        rows = transactions.decided_with_features(cur, from_ms, to_ms, after, _CHUNK)
        if not rows:
            return
        chunk = [row.transaction for row in rows]
        text_reads = TextReads(rules, _memberships(cur, chunk, rules, candidates))
        judged = outcomes.for_batch(cur, chunk, candidates=candidates)
        snoozed = judged.snoozed
        for row in rows:
            t = row.transaction
            features = dict(row.features or {})
            features["amount"] = t.amount
            features[MODEL_SCORE] = stored_model_feature(row.decision)
            text_reads.add(features, t)
            by_rules = rules.decide(features, t.merchant_id, t.currency, None if snoozed is None else snoozed(t))
            yield t, row.decision, judged.judge(t, with_stored_model(by_rules, row.decision, rules))
        after = (rows[-1].transaction.ts, rows[-1].transaction.transaction_id)


def _judged(t: Transaction, decision: Decision, actual: bool, pattern: str) -> Judged:
    return Judged(
        t.transaction_id,
        t.account_id,
        t.ts,
        ranking_score(float(decision.score), decision.model_score),
        decision.fraud,
        decision.rule_set_version,
        actual,
        pattern if actual else None,
        decision.outcome,
    )


def backtest(
    cur: psycopg2.extensions.cursor,
    rules: CompiledRuleSet,
    from_ms: int | None = None,
    to_ms: int | None = None,
    labels: dict[int, str] | None = None,
    replay_all: bool = False,
    candidates: CandidateLists | None = None,
) -> BacktestReport:
    """What `rules` would have decided on the stored history from `from_ms` to `to_ms` (epoch ms, exclusive),
    with the `candidates` lists in place of the stored ones when given (lists.check_candidates), against the
    stored decisions and, given `labels` (transaction id -> pattern, read by txguard.labels), scored overall and
    per rule, the stored decisions scored beside (`stored_ranking`). From the stored features when they cover the
    candidate (`report.method` says which), by replaying the history otherwise or when `replay_all`."""
    report = BacktestReport()
    if labels is not None:
        report.ranking = Evaluation("labels in force")
        report.stored_ranking = Evaluation("labels in force")
    if not replay_all and stored_features_cover(cur, rules, from_ms, to_ms):
        report.method = "stored features"
        judged = on_stored_features(cur, rules, from_ms, to_ms, candidates)
    else:
        report.method = "replay"
        judged = replay(cur, rules, to_ms, candidates)
    for t, stored, candidate in judged:
        if from_ms is not None and t.ts < from_ms:
            continue
        report.evaluated += 1
        report.flagged += candidate.fraud
        report.stored_flagged += stored.fraud
        report.outcomes[candidate.outcome] += 1
        report.stored_outcomes[stored.outcome] += 1
        if candidate.outcome != stored.outcome:
            report.outcome_changes[(stored.outcome, candidate.outcome)] += 1
        if candidate.fraud != stored.fraud:
            report.changed += 1
            report.newly_flagged += candidate.fraud
            report.no_longer_flagged += stored.fraud
        fired = {reason.rule_id for reason in candidate.reasons}
        report.fired.update(fired)
        if labels is None:
            continue
        pattern = labels.get(t.transaction_id, GENUINE)
        actual = pattern != GENUINE
        assert report.ranking is not None and report.stored_ranking is not None
        report.ranking.add(_judged(t, candidate, actual, pattern))
        report.stored_ranking.add(_judged(t, stored, actual, pattern))
        report.labelled += 1
        report.overall.add(candidate.fraud, actual)
        for rule_id in {r.id for r in rules.rule_set.rules}:
            report.per_rule.setdefault(rule_id, Confusion()).add(rule_id in fired, actual)
    return report
