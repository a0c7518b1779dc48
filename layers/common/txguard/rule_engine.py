"""Where rules are evaluated: a rule set compiled once into predicates, applied to a transaction's features.

score = 1 - product(1 - weight) over the active rules that fire, rounded to four places;
fraud = score >= the rule set's threshold. Shadow rules are evaluated and explained but never count.
The SQL function detect_fraud (migrations/0002_detect_fraud.sql, redefined by 0011_history_features.sql)
implements the same arithmetic: exact,
so a constant of a rule means the same number here as in SQL (rule_language bounds its digits).
Amounts in explanations are written in the transaction currency's minor units (BHD 0.125, JPY 129, EUR 41.20).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any

from txguard.currencies import money
from txguard.domain import Decision, Reason
from txguard.features import COUNT_IN_CURRENCY, MODEL_SCORE, RULE_FEATURES, Features, FeatureValue, window_reach_ms
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

# A compiled condition returns None when it does not hold, else the sentences explaining why it does;
# it is given the features, the merchant id and the currency of the transaction.
Explainer = Callable[[Features, str | None, str], list[str] | None]


@dataclass(frozen=True)
class _CompiledRule:
    id: str
    mode: str
    weight: Decimal
    explain: Explainer


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
            _CompiledRule(rule.id, rule.mode, rule.score, _compile(rule.condition))
            for rule in sorted(rule_set.rules, key=lambda r: r.id)
            if rule.enabled and rule.condition is not None
        )
        # Most transactions meet no rule: they all share this one decision (and its serialised forms).
        self._nothing_found = Decision(False, Decimal(0).quantize(_FOUR_PLACES), (), version, detector_version)

    def decide_batch(self, items: Sequence[tuple[Features, str | None, str]]) -> list[Decision]:
        """decide() for each (features, merchant id, currency), in order."""
        decide = self.decide
        return [decide(features, merchant_id, currency) for features, merchant_id, currency in items]

    def decide(self, features: Features, merchant_id: str | None, currency: str) -> Decision:
        """The decision for one transaction's features; amounts in its explanations in `currency`'s minor units."""
        reasons: list[Reason] = []
        keep = Decimal(1)  # product of (1 - weight) over the active rules that fired
        for rule in self._rules:
            sentences = rule.explain(features, merchant_id, currency)
            if sentences is None:
                continue
            reasons.append(Reason(rule.id, rule.mode, rule.weight, "; ".join(sentences)))
            if rule.mode == "active":
                keep *= 1 - rule.weight
        if not reasons:
            return self._nothing_found
        score = (1 - keep).quantize(_FOUR_PLACES, rounding=ROUND_HALF_UP)
        return Decision(score >= self.threshold, score, tuple(reasons), self.version, self.detector_version)


def _features_of(comparison: Comparison) -> set[str]:
    return {comparison.feature} | ({comparison.other} if comparison.other else set())


def list_feature(name: str) -> str:
    """The features' key of whether the transaction's value is an item of the list `name` (1 or 0)."""
    return f"in list {name}"


def _compile(condition: Condition) -> Explainer:
    if isinstance(condition, AllOf):
        parts = [_compile(c) for c in condition.all]

        def all_hold(features: Features, merchant_id: str | None, currency: str) -> list[str] | None:
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

        def any_holds(features: Features, merchant_id: str | None, currency: str) -> list[str] | None:
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

        def in_list(features: Features, merchant_id: str | None, currency: str) -> list[str] | None:
            found = features.get(key)
            if found is None or bool(found) != member:
                return None
            return [f"{field} {features.get(field)} {words}"]

        return in_list
    if comparison.values is not None:
        values, member = frozenset(comparison.values), comparison.op == "in"
        words = f"{'is in' if member else 'is not in'} {', '.join(comparison.values)}"

        def among(features: Features, merchant_id: str | None, currency: str) -> list[str] | None:
            value = features.get(field)
            if value is None or (value in values) != member:
                return None
            return [f"{field} {value} {words}"]

        return among
    text, equal = comparison.text, comparison.op == "="
    words = f"{'is' if equal else 'is not'} {text}"

    def matches(features: Features, merchant_id: str | None, currency: str) -> list[str] | None:
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

    def holds(features: Features, merchant_id: str | None, currency: str) -> list[str] | None:
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


def _describer(name: str, left: bool = True) -> Callable[[Features, str | None, str], str]:
    """How a feature and its value read: "amount 912.00" on the left, "the mean of the 48 previous
    transactions (41.20)" on either side, e.g. "amount 912.00 is more than 3 × the mean of ... (41.20)";
    amounts in the currency's minor units."""
    info = RULE_FEATURES[name]
    label = info.label
    needs_format = "{" in label
    show = _amount if info.money else _four_places if name == MODEL_SCORE else _number
    if name == "amount" and left:
        return lambda features, merchant_id, currency: f"amount {show(features.get(name), currency)}"

    def describe(features: Features, merchant_id: str | None, currency: str) -> str:
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
