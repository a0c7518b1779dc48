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
where a list decides by itself and where a rule reads it (`IN LIST`): a backtest shows what a list change or a
rule change (a threshold included) would have changed on stored history. Nothing is written.

A candidate's effect is isolated from what changed since the stored decisions were taken: `backtest` decides the
window twice on the same features and champion scores, once as things stand now (the **baseline**: the newest
stored rule set, the stored lists, the snoozes in force) and once with the candidate (its rule set, its lists,
the same snoozes), and counts the differences between those two (`arms_on_stored_features`, `arms_replayed`: the
rows read and the features computed once for both). How the baseline differs from the stored decisions (rule
sets applied, lists edited, snoozes set since) is reported apart, as drift: it is not the candidate's doing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import psycopg2.extensions

from txguard import outcomes
from txguard.detection import (
    TextReads,
    decisions_in_time_order,
    empty_history,
    empty_timeline,
    list_memberships,
)
from txguard.domain import Decision, Outcome, Transaction
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
    window_reach_ms,
)
from txguard.labels import GENUINE
from txguard.lists import CandidateLists
from txguard.models.serving import stored_model_feature, with_stored_model
from txguard.outcomes import LIST_REASON_PREFIX
from txguard.rule_engine import CompiledRuleSet
from txguard.rule_language import comparisons_of
from txguard.scoring import Confusion, ranking_score
from txguard.storage import merchants as merchant_store
from txguard.storage import rule_sets, transactions

_CHUNK = 20_000


@dataclass
class BacktestReport:
    """What a candidate changes on a window of stored history.

    The candidate's effect, against the baseline (the same window decided with the newest stored rule set and the
    lists as stored now): `changed`, `newly_flagged`, `no_longer_flagged` (block or not), `outcome_changes`
    ((baseline, candidate) outcome -> decisions), `fraud_changes` (the same, of labelled frauds only) and
    `list_changes` (per candidate list, the outcome changes its match or a rule reading it took part in; a change
    several lists took part in counts under each). Drift, how the baseline differs from the stored decisions
    (rule sets applied and lists edited since they were taken): `drift` ((stored, baseline) outcome ->
    decisions), `stored_versions` (rule-set version -> stored decisions in the window) and `baseline_version`.
    """

    evaluated: int = 0
    flagged: int = 0
    baseline_flagged: int = 0
    stored_flagged: int = 0
    changed: int = 0  # decisions whose block (fraud) differs between the baseline and the candidate
    newly_flagged: int = 0
    no_longer_flagged: int = 0
    fired: Counter[str] = field(default_factory=Counter)  # per rule id, active and shadow alike
    labelled: int = 0  # the decisions of the window with a label; `overall` counts the others as genuine
    overall: Confusion = field(default_factory=Confusion)
    per_rule: dict[str, Confusion] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)  # the candidate's decisions by outcome
    baseline_outcomes: Counter[str] = field(default_factory=Counter)
    stored_outcomes: Counter[str] = field(default_factory=Counter)
    # (baseline, candidate) outcomes when they differ: the candidate's effect
    outcome_changes: Counter[tuple[str, str]] = field(default_factory=Counter)
    fraud_changes: Counter[tuple[str, str]] = field(default_factory=Counter)  # of those, the labelled frauds
    list_changes: dict[str, Counter[tuple[str, str]]] = field(default_factory=dict)
    drift: Counter[tuple[str, str]] = field(default_factory=Counter)  # (stored, baseline) when they differ
    stored_versions: Counter[int] = field(default_factory=Counter)
    baseline_version: int | None = None  # None: no rule set is stored, the baseline is the candidate's rule set
    method: str = ""  # "stored features" or "replay"
    ranking: Evaluation | None = None  # the candidate's scores against the labels (ROC AUC, AP, CP@k), given labels
    baseline_ranking: Evaluation | None = None  # the baseline's against the same labels
    stored_ranking: Evaluation | None = None  # the stored decisions against the same labels, to compare


class Arm(NamedTuple):
    """One way of deciding the window: a rule set and the candidate lists in place of the stored ones (None: the
    lists as stored)."""

    rules: CompiledRuleSet
    candidates: CandidateLists | None = None


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
    for t, stored, (decision,) in _replayed_once(cur, [Arm(rules, candidates)], until_ms):
        yield t, stored, decision


def _replayed_once(
    cur: psycopg2.extensions.cursor, arms: Sequence[Arm], until_ms: int | None
) -> Iterator[tuple[Transaction, Decision, tuple[Decision, ...]]]:
    """(transaction, stored decision, each arm's decision) for the stored history in time order, the arms' rule
    sets sharing their feature settings: the history is replayed once, with the features every arm reads, decided
    by the first arm; an arm with other rules, or whose lists give other items to a list its rules read, is decided
    again on the same features with its own text reads and memberships."""
    rules = arms[0].rules
    detector = _FeaturesForAll(rules, [arm.rules for arm in arms])
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
        if not detector.needed_features.isdisjoint(RISK_FEATURES):
            _attach_label_steps(cur, chunk, merchants, rules.feature_settings)
        # A chunk may end inside a group of equal timestamps; the next chunk continues after the last row,
        # and rows sharing a timestamp never see each other, so splitting a group changes nothing.
        model_scores = {s.transaction.transaction_id: stored_model_feature(s.decision) for s in stored}
        in_lists = _memberships(cur, chunk, rules, arms[0].candidates)
        reads = [
            None
            if arm.rules is rules and _same_memberships(arm, arms[0])
            else TextReads(arm.rules, _memberships(cur, chunk, arm.rules, arm.candidates))
            for arm in arms[1:]
        ]
        judged = [outcomes.for_batch(cur, chunk, candidates=arm.candidates) for arm in arms]
        snoozed = judged[0].snoozed  # snoozes do not depend on the lists
        decided = {
            d.transaction.transaction_id: d
            for d in decisions_in_time_order(chunk, histories, merchants, detector, model_scores, in_lists, snoozed)
        }
        for s in stored:
            t = s.transaction
            first = decided[t.transaction_id]
            by_rules = [first.decision]
            for arm, text_reads in zip(arms[1:], reads, strict=True):
                if text_reads is None:
                    by_rules.append(first.decision)
                    continue
                assert first.features is not None  # decided with keep_features (the default)
                features = dict(first.features)
                text_reads.add(features, t)
                snooze = None if snoozed is None else snoozed(t)
                by_rules.append(arm.rules.decide(features, t.merchant_id, t.currency, snooze))
            yield (
                t,
                s.decision,
                tuple(
                    judge.judge(t, with_stored_model(decision, s.decision, arm.rules))
                    for arm, decision, judge in zip(arms, by_rules, judged, strict=True)
                ),
            )
        last = chunk[-1]
        after = (last.ts, last.transaction_id)


class _FeaturesForAll:
    """A detector computing the features every one of `all_rules` reads (sharing `rules`' feature settings) and
    deciding with `rules`: the one feature pass of a replay that decides by several rule sets."""

    def __init__(self, rules: CompiledRuleSet, all_rules: Sequence[CompiledRuleSet]) -> None:
        self.version = rules.version
        self.needed_features: frozenset[str] = frozenset().union(*(r.needed_features for r in all_rules))
        self.window_reach_ms = window_reach_ms(self.needed_features)
        self.feature_settings = rules.feature_settings
        self.text_fields = rules.text_fields
        self.list_fields = rules.list_fields
        self.decide = rules.decide
        self.decide_batch = rules.decide_batch
        self.decide_columns = rules.decide_columns


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
    for t, stored, (decision,) in arms_on_stored_features(cur, [Arm(rules, candidates)], from_ms, to_ms):
        yield t, stored, decision


def arms_on_stored_features(
    cur: psycopg2.extensions.cursor, arms: Sequence[Arm], from_ms: int | None, to_ms: int | None
) -> Iterator[tuple[Transaction, Decision, tuple[Decision, ...]]]:
    """(transaction, stored decision, each arm's decision on the features stored with it) for [from_ms, to_ms) in
    time order, the window's rows read once; only valid where `stored_features_cover` holds for every arm's rules.
    An arm with the rules of the one before it and the same list memberships for them takes its rules' decision
    (the lists it decides by are its own)."""
    after: tuple[int, int] | None = None
    while True:
        rows = transactions.decided_with_features(cur, from_ms, to_ms, after, _CHUNK)
        if not rows:
            return
        chunk = [row.transaction for row in rows]
        # Per arm: its text reads (None: the previous arm's rules decision serves), and its lists' verdicts.
        reads: list[TextReads | None] = []
        for i, arm in enumerate(arms):
            shared = i > 0 and arm.rules is arms[i - 1].rules and _same_memberships(arm, arms[i - 1])
            reads.append(None if shared else TextReads(arm.rules, _memberships(cur, chunk, arm.rules, arm.candidates)))
        judged = [outcomes.for_batch(cur, chunk, candidates=arm.candidates) for arm in arms]
        snoozed = judged[0].snoozed  # snoozes do not depend on the lists
        for row in rows:
            t = row.transaction
            base = dict(row.features or {})
            base["amount"] = t.amount
            base[MODEL_SCORE] = stored_model_feature(row.decision)
            snooze = None if snoozed is None else snoozed(t)
            decided: list[Decision] = []
            by_rules: Decision | None = None
            for arm, text_reads, judge in zip(arms, reads, judged, strict=True):
                if text_reads is not None or by_rules is None:
                    features = dict(base) if len(arms) > 1 else base
                    if text_reads is not None:
                        text_reads.add(features, t)
                    by_rules = arm.rules.decide(features, t.merchant_id, t.currency, snooze)
                decided.append(judge.judge(t, with_stored_model(by_rules, row.decision, arm.rules)))
            yield t, row.decision, tuple(decided)
        after = (rows[-1].transaction.ts, rows[-1].transaction.transaction_id)


def _same_memberships(arm: Arm, previous: Arm) -> bool:
    """Whether the lists `arm`'s rules read hold the same items for it as for `previous` (neither's candidate
    lists give the items of any of them)."""
    return not any(
        c is not None and c.holds(name) for name in arm.rules.list_fields for c in (arm.candidates, previous.candidates)
    )


def arms_replayed(
    cur: psycopg2.extensions.cursor, arms: Sequence[Arm], until_ms: int | None
) -> Iterator[tuple[Transaction, Decision, tuple[Decision, ...]]]:
    """(transaction, stored decision, each arm's decision) for the stored history in time order: replayed once when
    the arms' rule sets share their feature settings (time zone, label delay), else each arm on its own, in step."""
    if all(arm.rules.feature_settings == arms[0].rules.feature_settings for arm in arms):
        yield from _replayed_once(cur, arms, until_ms)
        return
    replays = [replay(cur, arm.rules, until_ms, arm.candidates) for arm in arms]
    for found in zip(*replays, strict=True):
        t, stored, _ = found[0]
        assert all(other[0].transaction_id == t.transaction_id for other in found)
        yield t, stored, tuple(decision for _, _, decision in found)


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


def baseline_rules(cur: psycopg2.extensions.cursor) -> CompiledRuleSet | None:
    """The rules the baseline decides with: the newest stored rule set (None when none is stored)."""
    newest = rule_sets.latest(cur)
    return None if newest is None else CompiledRuleSet(newest.version, newest.rule_set)


def _rule_lists(rules: CompiledRuleSet) -> dict[str, frozenset[str]]:
    """Per enabled rule id, the lists its condition reads (`IN LIST`)."""
    return {
        rule.id: frozenset(c.list_name for c in comparisons_of(rule.condition) if c.list_name is not None)
        for rule in rules.rule_set.rules
        if rule.enabled and rule.condition is not None
    }


def _lists_involved(before: Decision, after: Decision, rule_lists: dict[str, frozenset[str]]) -> set[str]:
    """The lists that took part in a change from `before` to `after`: a list whose match (or the way it matched)
    differs, and the lists read by a rule that fired in one and not the other."""
    list_reasons = [
        {(r.rule_id, r.explanation) for r in d.reasons if r.rule_id.startswith(LIST_REASON_PREFIX)}
        for d in (before, after)
    ]
    involved = {rule_id.removeprefix(LIST_REASON_PREFIX) for rule_id, _ in list_reasons[0] ^ list_reasons[1]}
    fired = [{r.rule_id for r in d.reasons if not r.rule_id.startswith(LIST_REASON_PREFIX)} for d in (before, after)]
    for rule_id in fired[0] ^ fired[1]:
        involved |= rule_lists.get(rule_id, frozenset())
    return involved


def backtest(
    cur: psycopg2.extensions.cursor,
    rules: CompiledRuleSet,
    from_ms: int | None = None,
    to_ms: int | None = None,
    labels: dict[int, str] | None = None,
    replay_all: bool = False,
    candidates: CandidateLists | None = None,
    baseline: CompiledRuleSet | None = None,
) -> BacktestReport:
    """What the candidate, `rules` with the `candidates` lists in place of the stored ones when given
    (lists.check_candidates), changes on the stored history from `from_ms` to `to_ms` (epoch ms, exclusive):
    the window decided by the candidate against the same window decided by the `baseline` rules (default: the
    newest stored rule set, else `rules`) with the lists as stored, and apart, how that baseline differs from the
    stored decisions (drift). Given `labels` (transaction id -> pattern, read by txguard.labels), the candidate
    is scored overall and per rule, and the baseline and the stored decisions beside it (`baseline_ranking`,
    `stored_ranking`). From the stored features when they cover both rule sets (`report.method` says which), by
    replaying the history otherwise or when `replay_all`."""
    report = BacktestReport()
    if baseline is None:
        baseline = baseline_rules(cur)
        report.baseline_version = None if baseline is None else baseline.version
    else:
        report.baseline_version = baseline.version
    if baseline is None or baseline.rule_set == rules.rule_set:
        baseline = rules if baseline is None else baseline
        rules = baseline  # one rule set: its decisions are shared where the lists do not differ
    arms = [Arm(baseline), Arm(rules, candidates)]
    if labels is not None:
        report.ranking = Evaluation("labels in force")
        report.baseline_ranking = Evaluation("labels in force")
        report.stored_ranking = Evaluation("labels in force")
    if not replay_all and all(stored_features_cover(cur, arm.rules, from_ms, to_ms) for arm in arms):
        report.method = "stored features"
        judged = arms_on_stored_features(cur, arms, from_ms, to_ms)
    else:
        report.method = "replay"
        judged = arms_replayed(cur, arms, to_ms)
    rule_ids = {r.id for r in rules.rule_set.rules}
    rule_lists: dict[str, frozenset[str]] = {}
    for arm in arms:
        for rule_id, read in _rule_lists(arm.rules).items():
            rule_lists[rule_id] = rule_lists.get(rule_id, frozenset()) | read
    candidate_lists = set() if candidates is None else set(candidates.definitions)
    for t, stored, (now, candidate) in judged:
        if from_ms is not None and t.ts < from_ms:
            continue
        report.evaluated += 1
        report.flagged += candidate.fraud
        report.baseline_flagged += now.fraud
        report.stored_flagged += stored.fraud
        report.outcomes[candidate.outcome] += 1
        report.baseline_outcomes[now.outcome] += 1
        report.stored_outcomes[stored.outcome] += 1
        report.stored_versions[stored.rule_set_version] += 1
        if now.outcome != stored.outcome:
            report.drift[(stored.outcome, now.outcome)] += 1
        pattern = GENUINE if labels is None else labels.get(t.transaction_id, GENUINE)
        actual = pattern != GENUINE
        if candidate.outcome != now.outcome:
            change: tuple[Outcome, Outcome] = (now.outcome, candidate.outcome)
            report.outcome_changes[change] += 1
            if actual:
                report.fraud_changes[change] += 1
            for name in _lists_involved(now, candidate, rule_lists) & candidate_lists:
                report.list_changes.setdefault(name, Counter())[change] += 1
        if candidate.fraud != now.fraud:
            report.changed += 1
            report.newly_flagged += candidate.fraud
            report.no_longer_flagged += now.fraud
        fired = {reason.rule_id for reason in candidate.reasons}
        report.fired.update(fired)
        if labels is None:
            continue
        assert report.ranking is not None and report.baseline_ranking is not None
        assert report.stored_ranking is not None
        report.ranking.add(_judged(t, candidate, actual, pattern))
        report.baseline_ranking.add(_judged(t, now, actual, pattern))
        report.stored_ranking.add(_judged(t, stored, actual, pattern))
        report.labelled += t.transaction_id in labels
        report.overall.add(candidate.fraud, actual)
        for rule_id in rule_ids:
            report.per_rule.setdefault(rule_id, Confusion()).add(rule_id in fired, actual)
    return report
