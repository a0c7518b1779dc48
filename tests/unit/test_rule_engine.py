"""Evaluating a compiled rule set: scores, thresholds, shadow rules, missing features, explanations."""

from decimal import Decimal

from txguard.features import Features
from txguard.rule_engine import CompiledRuleSet
from txguard.rule_language import validate_rule_set


def compiled(*rules: dict[str, object], threshold: str = "0.5") -> CompiledRuleSet:
    return CompiledRuleSet(3, validate_rule_set({"threshold": threshold, "rules": list(rules)}))


def rule(rule_id: str, when: str, score: str = "1", **extra: object) -> dict[str, object]:
    return {"id": rule_id, "description": rule_id, "when": when, "score": score, **extra}


def features(**values: object) -> Features:
    base: Features = {"amount": Decimal("912.00"), "count": 48, "mean_amount": Decimal("41.2"), "count_1m": 0}
    base.update(values)  # type: ignore[arg-type]
    return base


def test_a_firing_rule_flags_and_explains_with_the_values_compared() -> None:
    decision = compiled(rule("spike", "amount > 3 * mean_amount AND count >= 5")).decide(features())
    assert decision.fraud and decision.score == Decimal("1.0000")
    assert decision.rule_set_version == 3
    (reason,) = decision.reasons
    assert reason.rule_id == "spike"
    assert reason.explanation == (
        "amount 912.00 is more than 3 × the mean of the 48 previous transactions (41.20); "
        "the number of previous transactions (48) is at least 5"
    )


def test_scores_combine_as_independent_evidence_and_the_threshold_decides() -> None:
    rules = compiled(rule("a", "amount > 100", "0.3"), rule("b", "count > 10", "0.4"), threshold="0.55")
    decision = rules.decide(features())
    assert decision.score == Decimal("0.5800")  # 1 - 0.7 * 0.6
    assert decision.fraud
    only_a = rules.decide(features(count=3))
    assert only_a.score == Decimal("0.3000") and not only_a.fraud


def test_shadow_rules_are_explained_but_never_count() -> None:
    decision = compiled(rule("watch", "amount > 100", mode="shadow")).decide(features())
    assert not decision.fraud and decision.score == Decimal("0.0000")
    assert [(r.rule_id, r.mode) for r in decision.reasons] == [("watch", "shadow")]


def test_disabled_rules_are_not_evaluated() -> None:
    decision = compiled(rule("off", "amount > 100", enabled=False)).decide(features())
    assert decision.reasons == () and not decision.fraud


def test_a_missing_feature_never_fires_a_rule() -> None:
    rules = compiled(rule("low", "amount < 0.9 * mean_amount"), rule("any_or", "mean_amount < 1 OR amount > 1"))
    decision = rules.decide(features(amount=Decimal("1.00"), mean_amount=None, count=0))
    assert [r.rule_id for r in decision.reasons] == []


def test_or_explains_the_branch_that_held() -> None:
    decision = compiled(rule("burst", "count_1m > 5 OR amount > 900")).decide(features())
    assert decision.reasons[0].explanation == "amount 912.00 is more than 900"
