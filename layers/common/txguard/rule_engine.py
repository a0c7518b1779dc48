"""Where rules are evaluated: a rule set compiled once into predicates, applied to a transaction's features.
A chunk of COLUMN_ROWS transactions or more is first read by the same rules compiled into vectorised predicates
(rule_columns): the transactions where no rule may fire share the decision where nothing fires; the others are
explained a rule at a time over all the rows where it may fire (decide_columns): the predicates' sure answers,
the exact comparison of the Decimal values where one is too close to call, each rule's sentences written for
all its rows at once, the score and outcome computed once per set of active rules that fired. `decide`, one
transaction at a time, is the reference those decisions equal, bit for bit (tests/unit/test_rule_engine.py).

score = 1 - product(1 - weight) over the active rules of action `score` that fire, rounded to four places.
Shadow rules are evaluated and explained but never count, and never change the outcome.

Each decision has an outcome, `allow`, `review` or `block`; `fraud` means exactly `block`. The first of these
that applies gives it (ingest applies 1-2, lists being read once per batch; the rest is `outcome` here, with the
champion's probability p when a champion scored: models/serving.py):
1. an item of an `allow` list matches the transaction (its account, merchant, card, ... : attributes.LIST_KINDS)
   -> allow, explained "allowed by list vip_accounts: ...; without it: block (score 0.9700)", with any block-list
   match it overrode as a further reason;
2. an item of a `block` list matches -> block ("card_id tok_1 is in block list stolen_cards, until ...");
3. an active rule of action `allow` fires -> allow;
4. an active rule of action `block` fires, or score >= `threshold`, or p >= the champion's block threshold (the
   rule set's `model_block_threshold`, else its artifact's) -> block;
5. an active rule of action `review` fires, or score >= `review_threshold`, or p >= `model_review_threshold`
   -> review;
6. allow.
Without lists, rule actions and review thresholds, every decision is what it was before outcomes: block exactly
when flagged. A rule snoozed for one of the transaction's entities (storage.rule_snoozes) does not fire for it:
the decision records a `snoozed` reason instead, naming the snooze and what the rule would have found.
The SQL function detect_fraud (migrations/0002_detect_fraud.sql, redefined by 0011_history_features.sql)
implements the same arithmetic: exact,
so a constant of a rule means the same number here as in SQL (rule_language bounds its digits).
Amounts in explanations are written in the transaction currency's minor units (BHD 0.125, JPY 129, EUR 41.20).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal
from functools import cache, partial
from itertools import compress, repeat
from typing import Any

import numpy as np
import numpy.typing as npt

from txguard.currencies import money
from txguard.domain import Decision, Outcome, Reason
from txguard.feature_columns import RowColumns
from txguard.features import (
    COUNT_IN_CURRENCY,
    MODEL_SCORE,
    RULE_FEATURES,
    FeatureReader,
    Features,
    FeatureValue,
    list_feature,
    window_reach_ms,
)
from txguard.rule_columns import ColumnSource, Leaves, RulePredicates
from txguard.rule_language import (
    MAX_DECIMAL_PLACES,
    MAX_INTEGER_DIGITS,
    AllOf,
    AnyOf,
    Comparison,
    Condition,
    RuleSet,
    comparisons_of,
)

_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "=": operator.eq,
    "!=": operator.ne,
}
_OPERATOR_WORDS = {
    "<": "is less than",
    "<=": "is at most",
    ">": "is more than",
    ">=": "is at least",
    "=": "equals",
    "!=": "differs from",
}
_FOUR_PLACES = Decimal("0.0001")
# factor × feature, exactly as PostgreSQL's numeric computes it: a factor has at most 58 significant digits
# (rule_language's limits) and a feature far fewer than 40 (amounts up to 10^12 with four places, sums of
# them, six-place means), so their product always fits; the default 28 digits would round it.
_EXACT = Context(prec=MAX_INTEGER_DIGITS + MAX_DECIMAL_PLACES + 40)

# From this many transactions on, a chunk is decided through the rule predicates (rule_columns); fewer are decided
# one by one (the predicates' fixed cost, a few µs per comparison, outweighs their gain on a handful of rows).
COLUMN_ROWS = 8

# A compiled condition returns None when it does not hold, else the sentences explaining why it does;
# it is given the features, the merchant id and the currency of the transaction.
Explainer = Callable[[FeatureReader, str | None, str], list[str] | None]


# What an explanation of a rule of each action starts with (a rule of action `score` explains its finding only).
_ACTION_WORDS = {"score": "", "block": "blocks: ", "review": "sends to review: ", "allow": "allows: "}

# Which rules a snooze suppresses for one transaction: rule id -> the snooze in words ("snoozed for account 42
# until 2026-12-01T00:00:00+00:00 by alice: known traveller").
Snoozed = Mapping[str, str]


@dataclass(frozen=True)
class _CompiledRule:
    id: str
    mode: str
    weight: Decimal
    explain: Explainer
    action: str = "score"


class CompiledRuleSet:
    """A rule set ready to evaluate; built once per version and cached by the detector cache.

    `rule_features` are the features its enabled rules read (`model_score` included when one does);
    `needed_features` what deciding computes and stores: those, the rule set's recorded features
    (`features.record`) and `count` (explanations read it), never `model_score` (the champion's output).
    `detector_version` (None: none) is recorded with each decision.
    `text_fields` are the transaction's text fields its enabled rules compare (attributes.is_text_field), which the
    feature step puts among the features as they are; `list_fields` the lists they read by name, each with the
    field whose value is looked up in it (the feature step adds `list_feature(name)`: 1 when the value is a current
    item, 0 when not, missing when the transaction has no value). `list_names` are every list the rule set names.
    """

    def __init__(self, version: int, rule_set: RuleSet, detector_version: int | None = None) -> None:
        self.version = version
        self.detector_version = detector_version
        self.rule_set = rule_set
        self.threshold = rule_set.threshold
        self.review_threshold = rule_set.review_threshold
        self.model_block_threshold = (
            None if rule_set.model_block_threshold is None else float(rule_set.model_block_threshold)
        )
        self.model_review_threshold = (
            None if rule_set.model_review_threshold is None else float(rule_set.model_review_threshold)
        )
        enabled = [rule for rule in rule_set.rules if rule.enabled and rule.condition is not None]
        read = [c for rule in enabled for c in comparisons_of(rule.condition)]
        self.rule_features = frozenset(set().union(*(_features_of(c) for c in read if not c.on_text)))
        self.text_fields = frozenset(c.feature for c in read if c.on_text and c.list_name is None)
        # A list is read for one field: check_lists refuses a list compared with fields of two kinds.
        self.list_fields = {c.list_name: c.feature for c in read if c.list_name is not None}
        self.list_names = frozenset(rule_set.list_fields())
        # Only these are computed per transaction; "count" also appears in the explanations.
        self.needed_features = (self.rule_features | rule_set.recorded_features() | {"count"}) - {MODEL_SCORE}
        # Ingest reads only this much of each account's and merchant's recent history.
        self.window_reach_ms = window_reach_ms(self.needed_features)
        self.feature_settings = rule_set.feature_settings()
        self._rules = tuple(
            _CompiledRule(rule.id, rule.mode, rule.weight, _compile(rule.condition), rule.action)
            for rule in sorted(rule_set.rules, key=lambda r: r.id)
            if rule.enabled and rule.condition is not None
        )
        # The rules that decide an outcome by themselves, by id (an active one's reason names it).
        self._actions = {rule.id: rule.action for rule in self._rules if rule.action != "score"}
        # Most transactions meet no rule: they all share this one decision (and its serialised forms).
        self._nothing_found = Decision(False, Decimal(0).quantize(_FOUR_PLACES), (), version, detector_version)
        # The same rules as vectorised predicates, which find the rows of a chunk where some rule may fire.
        # Both are compiled from the same condition objects: the explainers read the predicates' results by id().
        enabled_sorted: list[Condition] = [
            rule.condition
            for rule in sorted(rule_set.rules, key=lambda r: r.id)
            if rule.enabled and rule.condition is not None
        ]
        self.predicates = RulePredicates(enabled_sorted)
        # The same rules explaining the rows where they may fire, a rule at a time (decide_columns).
        self._column_explainers = tuple(_compile_columns(condition) for condition in enabled_sorted)

    @property
    def nothing_found(self) -> Decision:
        """The decision on a transaction where no rule fires (shared by all of them)."""
        return self._nothing_found

    def decide_batch(
        self, items: Sequence[tuple[Features, str | None, str]], snoozed: Sequence[Snoozed | None] | None = None
    ) -> list[Decision]:
        """decide() for each (features, merchant id, currency), in order; `snoozed`: each one's snoozed rules.

        From COLUMN_ROWS transactions on, the rule predicates (rule_columns) first find those where some rule may
        fire; only those are explained (column-wise: decide_columns), the others share the decision where nothing
        fires."""
        return self.decide_columns(RowColumns([f for f, _, _ in items]), items, snoozed)

    def decide_columns(
        self,
        columns: ColumnSource,
        items: Sequence[tuple[FeatureReader, str | None, str]],
        snoozed: Sequence[Snoozed | None] | None = None,
    ) -> list[Decision]:
        """decide_batch for a chunk whose features are also given as `columns` (the same rows, in order): each
        rule explains the rows where it may fire at once, reading their values through the columns' `values_at`
        (else through the items' features, which items may make when read: feature_columns.ColumnItems). The
        decisions equal decide()'s, bit for bit; a row where nothing fires gets `nothing_found` itself."""
        if len(items) < COLUMN_ROWS:
            decide_one = self.decide
            if snoozed is None:
                return [decide_one(features, merchant_id, currency) for features, merchant_id, currency in items]
            return [decide_one(f, m, c, s) for (f, m, c), s in zip(items, snoozed, strict=True)]
        decisions = [self._nothing_found] * len(items)
        leaves: Leaves = {}
        rows, masks = self.predicates.rules_to_explain(columns, leaves)
        if not rows.size:
            return decisions
        chunk = _Chunk(columns, items, leaves)
        # Each rule explains its candidate rows at once, in the rule set's order; the reasons are then grouped by
        # row, keeping that order (a stable sort).
        explained: list[IndexArray] = []
        every_reason: list[Reason] = []
        counted = np.zeros(len(items), dtype=np.int64)  # per row: the bits of the active rules that fired
        for j, (rule, explain) in enumerate(zip(self._rules, self._column_explainers, strict=True)):
            candidates = rows[(masks >> j) & 1 == 1]
            if not candidates.size:
                continue
            fired, texts = explain(chunk, candidates)
            if not texts:
                continue
            rule_id, mode, weight, prefix = rule.id, rule.mode, rule.weight, _ACTION_WORDS[rule.action]
            explanations = [prefix + text for text in texts] if prefix else texts
            reasons = list(map(_new_reason, zip(repeat(rule_id), repeat(mode), repeat(weight), explanations)))
            counts = fired if mode == "active" else None
            if snoozed is not None:
                # A snoozed rule does not fire for the row: it is recorded as a `snoozed` reason instead.
                kept = np.ones(fired.size, dtype=bool)
                for k, i in enumerate(fired.tolist()):
                    row_snoozed = snoozed[i]
                    if row_snoozed and rule_id in row_snoozed:
                        found = f"{row_snoozed[rule_id]}; it would have fired: {texts[k]}"
                        reasons[k] = Reason(rule_id, "snoozed", weight, found)
                        kept[k] = False
                counts = None if counts is None else fired[kept]
            if counts is not None:
                counted[counts] |= 1 << j
            explained.append(fired)
            every_reason.extend(reasons)
        if not explained:
            return decisions
        every = np.concatenate(explained)
        order = np.argsort(every, kind="stable")
        every = every[order]
        in_order = [every_reason[k] for k in order.tolist()]
        starts = np.flatnonzero(np.concatenate(([True], every[1:] != every[:-1])))
        ends = np.append(starts[1:], every.size)
        at = every[starts]
        # The score and outcome of each distinct set of active rules that fired, computed once, as a decision
        # without reasons whose fields each row's decision copies (the constructor's checks were made on it).
        verdicts: dict[int, dict[str, Any]] = {}
        new = object.__new__
        for i, start, end, bits in zip(at.tolist(), starts.tolist(), ends.tolist(), counted[at].tolist(), strict=True):
            fields = verdicts.get(bits)
            if fields is None:
                fields = verdicts[bits] = vars(self._verdict(bits))
            decision = new(Decision)
            state = vars(decision)
            state.update(fields)
            state["reasons"] = tuple(in_order[start:end])
            decisions[i] = decision
        return decisions

    def _verdict(self, bits: int) -> Decision:
        """The decision, without reasons, where the active rules at the positions of `bits` (in `_rules`) fire,
        its score and outcome as _decide computes them (the product in the rule set's order)."""
        keep = Decimal(1)
        actions = set()
        for j, rule in enumerate(self._rules):
            if bits >> j & 1:
                if rule.action == "score":
                    keep *= 1 - rule.weight
                else:
                    actions.add(rule.action)
        score = (1 - keep).quantize(_FOUR_PLACES, rounding=ROUND_HALF_UP)
        outcome = self.outcome(score, frozenset(actions))
        return Decision(outcome == "block", score, (), self.version, self.detector_version, outcome=outcome)

    def decide(
        self, features: FeatureReader, merchant_id: str | None, currency: str, snoozed: Snoozed | None = None
    ) -> Decision:
        """The decision for one transaction's features (steps 3-6 of the precedence, without a champion); amounts
        in its explanations in `currency`'s minor units. A rule in `snoozed` (rule id -> the snooze in words)
        does not fire: it is recorded as a `snoozed` reason when it would have."""
        return self._decide(self._rules, features, merchant_id, currency, snoozed)

    def _decide(
        self,
        rules: Sequence[_CompiledRule],
        features: FeatureReader,
        merchant_id: str | None,
        currency: str,
        snoozed: Snoozed | None = None,
    ) -> Decision:
        """decide() knowing that no rule but `rules` (in the rule set's order) can fire."""
        reasons: list[Reason] = []
        keep = Decimal(1)  # product of (1 - weight) over the active rules of action `score` that fired
        for rule in rules:
            sentences = rule.explain(features, merchant_id, currency)
            if sentences is None:
                continue
            if snoozed and rule.id in snoozed:
                found = "; ".join(sentences)
                reasons.append(
                    Reason(rule.id, "snoozed", rule.weight, f"{snoozed[rule.id]}; it would have fired: {found}")
                )
                continue
            reasons.append(Reason(rule.id, rule.mode, rule.weight, _ACTION_WORDS[rule.action] + "; ".join(sentences)))
            if rule.mode == "active" and rule.action == "score":
                keep *= 1 - rule.weight
        if not reasons:
            return self._nothing_found
        score = (1 - keep).quantize(_FOUR_PLACES, rounding=ROUND_HALF_UP)
        outcome = self.outcome(score, self.actions_fired(reasons))
        return Decision(outcome == "block", score, tuple(reasons), self.version, self.detector_version, outcome=outcome)

    def actions_fired(self, reasons: Sequence[Reason]) -> frozenset[str]:
        """The actions (block, review, allow) of the active rules among `reasons` that decide by themselves."""
        actions = self._actions
        if not actions:
            return frozenset()
        return frozenset(actions[r.rule_id] for r in reasons if r.mode == "active" and r.rule_id in actions)

    def model_block_threshold_for(self, artifact_threshold: float) -> float:
        """The champion's probability (0-1) at or above which it blocks: the rule set's `model_block_threshold`,
        else the threshold of the champion's artifact."""
        return artifact_threshold if self.model_block_threshold is None else self.model_block_threshold

    def outcome(
        self,
        rules_score: Decimal,
        actions: Collection[str],
        model_score: float | None = None,
        model_threshold: float | None = None,
    ) -> Outcome:
        """Steps 3-6 of the precedence (module docstring) for the rules' four-place score, the actions of the
        active rules that fired, and the champion's probability with its block threshold (None: no champion)."""
        if "allow" in actions:
            return "allow"
        scored = model_score is not None and model_threshold is not None
        if "block" in actions or rules_score >= self.threshold or (scored and model_score >= model_threshold):  # type: ignore[operator]
            return "block"
        if (
            "review" in actions
            or (self.review_threshold is not None and rules_score >= self.review_threshold)
            or (scored and self.model_review_threshold is not None and model_score >= self.model_review_threshold)  # type: ignore[operator]
        ):
            return "review"
        return "allow"


def _features_of(comparison: Comparison) -> set[str]:
    return {comparison.feature} | ({comparison.other} if comparison.other else set())


def _compile(condition: Condition) -> Explainer:
    if isinstance(condition, AllOf):
        parts = [_compile(c) for c in condition.all]

        def all_hold(features: FeatureReader, merchant_id: str | None, currency: str) -> list[str] | None:
            sentences: list[str] = []
            for part in parts:
                found = part(features, merchant_id, currency)
                if found is None:
                    return None
                sentences.extend(found)
            return sentences

        return all_hold
    if isinstance(condition, AnyOf):
        choices = [_compile(c) for c in condition.any]

        def any_holds(features: FeatureReader, merchant_id: str | None, currency: str) -> list[str] | None:
            for choice in choices:
                found = choice(features, merchant_id, currency)
                if found is not None:
                    return found
            return None

        return any_holds
    return _compile_comparison(condition)


def _compile_text(comparison: Comparison) -> Explainer:
    """A comparison of a text field: false when the transaction has no value for it (whatever the operator)."""
    field = comparison.feature
    if comparison.list_name is not None:
        key, member = list_feature(comparison.list_name), comparison.op == "in list"
        words = f"is in list {comparison.list_name}" if member else f"is not in list {comparison.list_name}"

        def in_list(features: FeatureReader, merchant_id: str | None, currency: str) -> list[str] | None:
            found = features.get(key)
            if found is None or bool(found) != member:
                return None
            return [f"{field} {features.get(field)} {words}"]

        return in_list
    if comparison.values is not None:
        values, member = frozenset(comparison.values), comparison.op == "in"
        words = f"{'is in' if member else 'is not in'} {', '.join(comparison.values)}"

        def among(features: FeatureReader, merchant_id: str | None, currency: str) -> list[str] | None:
            value = features.get(field)
            if value is None or (value in values) != member:
                return None
            return [f"{field} {value} {words}"]

        return among
    text, equal = comparison.text, comparison.op == "="
    words = f"{'is' if equal else 'is not'} {text}"

    def matches(features: FeatureReader, merchant_id: str | None, currency: str) -> list[str] | None:
        value = features.get(field)
        if value is None or (value == text) != equal:
            return None
        return [f"{field} {value} {words}"]

    return matches


def _compile_comparison(comparison: Comparison) -> Explainer:
    if comparison.on_text:
        return _compile_text(comparison)
    compare = _OPERATORS[comparison.op]
    multiply = _EXACT.multiply
    feature, other, constant = comparison.feature, comparison.other, comparison.value
    factor = comparison.factor if comparison.factor is not None else Decimal(1)
    # Everything in the explanation that does not depend on the transaction is prepared here, once.
    describe_left = _describer(feature)
    if other is None:
        tail = f" {_OPERATOR_WORDS[comparison.op]} {_plain(constant)}"
    else:
        times = "" if factor == 1 else f"{_plain(factor)} × "
        tail = f" {_OPERATOR_WORDS[comparison.op]} {times}"
        describe_right = _describer(other, left=False)

    def holds(features: FeatureReader, merchant_id: str | None, currency: str) -> list[str] | None:
        left = features.get(feature)
        if left is None:
            return None
        right: Decimal | int | None
        if other is not None:
            other_value = features.get(other)
            if other_value is None or isinstance(other_value, str):  # no feature is text: rule_language sees to it
                return None
            right = multiply(factor, other_value)
        else:
            right = constant
        if right is None or not compare(left, right):
            return None
        sentence = describe_left(features, merchant_id, currency) + tail
        if other is not None:
            sentence += describe_right(features, merchant_id, currency)
        return [sentence]

    return holds


def _describer(name: str, left: bool = True) -> Callable[[FeatureReader, str | None, str], str]:
    """How a feature and its value read: "amount 912.00" on the left, "the mean of the 48 previous
    transactions (41.20)" on either side, e.g. "amount 912.00 is more than 3 × the mean of ... (41.20)";
    amounts in the currency's minor units."""
    info = RULE_FEATURES[name]
    label = info.label
    needs_format = "{" in label
    show = _amount if info.money else _four_places if name == MODEL_SCORE else _number
    if name == "amount" and left:
        return lambda features, merchant_id, currency: f"amount {show(features.get(name), currency)}"

    def describe(features: FeatureReader, merchant_id: str | None, currency: str) -> str:
        if needs_format:
            count = features.get(COUNT_IN_CURRENCY, features.get("count")) if info.money else features.get("count")
            text = label.format(count=count, merchant_id=merchant_id)
        else:
            text = label
        return f"{text} ({show(features.get(name), currency)})"

    return describe


def _amount(value: FeatureValue, currency: str) -> str:
    if isinstance(value, Decimal):
        return money(value, currency)
    return _plain(value)


def _four_places(value: FeatureValue, currency: str) -> str:
    if isinstance(value, Decimal):
        return str(value.quantize(_FOUR_PLACES, rounding=ROUND_HALF_UP))
    return _plain(value)


def _number(value: FeatureValue, currency: str) -> str:
    return _plain(value)


def _plain(value: FeatureValue) -> str:
    if value is None:
        return "none"
    if isinstance(value, int | str):
        return str(value)
    return format(value.normalize(_EXACT), "f")  # the default context would round a long constant


# ------------------------------------------------------------------------------- explaining column-wise --
IndexArray = npt.NDArray[np.intp]  # positions in a chunk, ascending
_ABSENT = object()  # a row without the key (a value None is another thing: get's default is not taken)


class _Chunk:
    """What the column explainers read of a chunk: its features at given rows, through the columns' `values_at`
    (feature_columns) when they have it, else through the items; merchant ids and currencies per row (the items'
    `merchant_ids` and `currency` when they have them, as feature_columns.ColumnItems); and each comparison's
    predicate result (rule_columns.Leaves)."""

    def __init__(self, columns: ColumnSource, items: Sequence[tuple[FeatureReader, str | None, str]], leaves: Leaves):
        self.items = items
        self.leaves = leaves
        self._values_at: Callable[[str, Sequence[int], Any], list[Any]] | None = getattr(columns, "values_at", None)
        # Items of one currency say so, with their merchant ids (feature_columns.ColumnItems): read at once.
        currency = getattr(items, "currency", None)
        self.currency: str | None = currency if isinstance(currency, str) else None
        self._merchant_ids: Sequence[str | None] | None = getattr(items, "merchant_ids", None)

    def values(self, name: str, rows: list[int], default: Any = None) -> list[Any]:
        """Each row's features.get(name, default)."""
        if self._values_at is not None:
            return self._values_at(name, rows, default)
        items = self.items
        return [items[i][0].get(name, default) for i in rows]

    def currencies(self, rows: list[int]) -> list[str]:
        if self.currency is not None:
            return [self.currency] * len(rows)
        items = self.items
        return [items[i][2] for i in rows]

    def merchant_ids(self, rows: list[int]) -> list[str | None]:
        merchant_ids = self._merchant_ids
        if merchant_ids is not None:
            return [merchant_ids[i] for i in rows]
        items = self.items
        return [items[i][1] for i in rows]


# A column explainer is given candidate rows of a chunk (ascending positions) and returns those where the
# condition holds (ascending) with, for each, its sentences joined by "; " (what an Explainer returns, joined).
ColumnExplainer = Callable[[_Chunk, IndexArray], tuple[IndexArray, list[str]]]
_NONE: IndexArray = np.empty(0, dtype=np.intp)
# Reason(*fields) without NamedTuple's Python-level __new__: the same tuple subclass, built in C.
_new_reason: Callable[[tuple[str, str, Decimal, str]], Reason] = partial(tuple.__new__, Reason)


@cache
def _quantum(currency: str) -> Decimal:
    """The Decimal whose exponent currencies.money quantizes an amount in `currency` to."""
    return Decimal(money(Decimal(0), currency))


def _compile_columns(condition: Condition) -> ColumnExplainer:
    """`condition` as _compile explains it, for many rows at once: the same rows, the same sentences."""
    if isinstance(condition, AllOf):
        parts = [_compile_columns(c) for c in condition.all]

        def all_hold(chunk: _Chunk, rows: IndexArray) -> tuple[IndexArray, list[str]]:
            fired, texts = parts[0](chunk, rows)
            for part in parts[1:]:
                if not texts:
                    break
                still, more = part(chunk, fired)
                kept = compress(texts, np.isin(fired, still).tolist())
                texts = [f"{a}; {b}" for a, b in zip(kept, more, strict=True)]
                fired = still
            return fired, texts

        return all_hold
    if isinstance(condition, AnyOf):
        choices = [_compile_columns(c) for c in condition.any]

        def any_holds(chunk: _Chunk, rows: IndexArray) -> tuple[IndexArray, list[str]]:
            # A row is explained by the first choice that holds on it.
            found: list[IndexArray] = []
            texts: list[str] = []
            left = rows
            for choice in choices:
                fired, more = choice(chunk, left)
                if more:
                    found.append(fired)
                    texts.extend(more)
                    left = left[~np.isin(left, fired)]
                    if not left.size:
                        break
            if len(found) <= 1:
                return (found[0] if found else _NONE), texts
            every = np.concatenate(found)
            order = np.argsort(every, kind="stable")
            return every[order], [texts[k] for k in order.tolist()]

        return any_holds
    if condition.on_text:
        return _compile_text_columns(condition)
    return _compile_comparison_columns(condition)


def _compile_text_columns(comparison: Comparison) -> ColumnExplainer:
    """_compile_text for many rows: false without a value, whatever the operator."""
    field = comparison.feature
    if comparison.list_name is not None:
        key, member = list_feature(comparison.list_name), comparison.op == "in list"
        words = f"is in list {comparison.list_name}" if member else f"is not in list {comparison.list_name}"

        def in_list(chunk: _Chunk, rows: IndexArray) -> tuple[IndexArray, list[str]]:
            at = rows.tolist()
            fired = [i for i, v in zip(at, chunk.values(key, at), strict=True) if v is not None and bool(v) == member]
            return _rows(fired), [f"{field} {v} {words}" for v in chunk.values(field, fired)]

        return in_list
    if comparison.values is not None:
        values, member = frozenset(comparison.values), comparison.op == "in"
        words = f"{'is in' if member else 'is not in'} {', '.join(comparison.values)}"

        def among(chunk: _Chunk, rows: IndexArray) -> tuple[IndexArray, list[str]]:
            at = rows.tolist()
            found = [
                (i, v)
                for i, v in zip(at, chunk.values(field, at), strict=True)
                if v is not None and (v in values) == member
            ]
            return _rows([i for i, _ in found]), [f"{field} {v} {words}" for _, v in found]

        return among
    text, equal = comparison.text, comparison.op == "="
    words = f"{'is' if equal else 'is not'} {text}"

    def matches(chunk: _Chunk, rows: IndexArray) -> tuple[IndexArray, list[str]]:
        at = rows.tolist()
        found = [
            (i, v) for i, v in zip(at, chunk.values(field, at), strict=True) if v is not None and (v == text) == equal
        ]
        return _rows([i for i, _ in found]), [f"{field} {v} {words}" for _, v in found]

    return matches


def _rows(positions: list[int]) -> IndexArray:
    return np.array(positions, dtype=np.intp) if positions else _NONE


def _compile_comparison_columns(comparison: Comparison) -> ColumnExplainer:
    """_compile_comparison for many rows: where the predicate is sure (rule_columns: exact then), its answer;
    where it is too close to call, the exact comparison of the Decimal values, as the row engine makes it."""
    compare = _OPERATORS[comparison.op]
    multiply = _EXACT.multiply
    key = id(comparison)
    feature, other, constant = comparison.feature, comparison.other, comparison.value
    factor = comparison.factor if comparison.factor is not None else Decimal(1)
    describe_left = _column_describer(feature)
    if other is None:
        tail = f" {_OPERATOR_WORDS[comparison.op]} {_plain(constant)}"
    else:
        times = "" if factor == 1 else f"{_plain(factor)} × "
        tail = f" {_OPERATOR_WORDS[comparison.op]} {times}"
        describe_right = _column_describer(other, left=False)

    def exactly(left: FeatureValue, other_value: FeatureValue) -> bool:
        if left is None:
            return False
        right: Decimal | int | None
        if other is not None:
            if other_value is None or isinstance(other_value, str):
                return False
            right = multiply(factor, other_value)
        else:
            right = constant
        return right is not None and compare(left, right)

    def holds(chunk: _Chunk, rows: IndexArray) -> tuple[IndexArray, list[str]]:
        found = chunk.leaves.get(key)
        if found is None:
            fired, unsure = _NONE, rows
        else:
            sure, fails = found
            surely = sure[rows]
            fired, unsure = rows[surely], rows[~(surely | fails[rows])]
        if unsure.size:
            at = unsure.tolist()
            lefts = chunk.values(feature, at)
            rights = chunk.values(other, at) if other is not None else [None] * len(at)
            also = [i for i, a, b in zip(at, lefts, rights, strict=True) if exactly(a, b)]
            if also:
                fired = np.sort(np.concatenate([fired, np.array(also, dtype=np.intp)]))
        if not fired.size:
            return fired, []
        at = fired.tolist()
        texts = [left + tail for left in describe_left(chunk, at)]
        if other is not None:
            texts = [a + b for a, b in zip(texts, describe_right(chunk, at), strict=True)]
        return fired, texts

    return holds


def _column_describer(name: str, left: bool = True) -> Callable[[_Chunk, list[int]], list[str]]:
    """_describer for many rows: each row's description of the feature `name` and its value."""
    info = RULE_FEATURES[name]
    label = info.label
    needs_format = "{" in label
    show = _amount if info.money else _four_places if name == MODEL_SCORE else _number

    def shown(chunk: _Chunk, rows: list[int]) -> list[str]:
        values = chunk.values(name, rows)
        if show is _number:
            return [_plain(v) for v in values]
        if show is _amount:
            if chunk.currency is not None:
                # money(v, currency) for every v: the currency's quantum (the exponent of its zero) found once.
                quantum, half_up = _quantum(chunk.currency), ROUND_HALF_UP
                return [
                    str(v.quantize(quantum, rounding=half_up)) if isinstance(v, Decimal) else _plain(v) for v in values
                ]
            return [
                money(v, currency) if isinstance(v, Decimal) else _plain(v)
                for v, currency in zip(values, chunk.currencies(rows), strict=True)
            ]
        return [show(v, currency) for v, currency in zip(values, chunk.currencies(rows), strict=True)]

    if name == "amount" and left:
        return lambda chunk, rows: ["amount " + text for text in shown(chunk, rows)]

    def describe(chunk: _Chunk, rows: list[int]) -> list[str]:
        if not needs_format:
            return [f"{label} ({text})" for text in shown(chunk, rows)]
        counts = chunk.values("count", rows)
        if info.money:
            in_currency = chunk.values(COUNT_IN_CURRENCY, rows, _ABSENT)
            counts = [c if n is _ABSENT else n for c, n in zip(counts, in_currency, strict=True)]
        merchant_ids = chunk.merchant_ids(rows) if "{merchant_id}" in label else [None] * len(rows)
        labels: dict[tuple[Any, str | None], str] = {}
        texts = []
        for count, merchant_id, text in zip(counts, merchant_ids, shown(chunk, rows), strict=True):
            filled = labels.get((count, merchant_id))
            if filled is None:
                filled = labels[count, merchant_id] = label.format(count=count, merchant_id=merchant_id)
            texts.append(f"{filled} ({text})")
        return texts

    return describe
