"""Evaluating a compiled rule set: scores, thresholds, shadow rules, missing features, explanations."""

from decimal import Decimal

import pytest

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
    decision = compiled(rule("spike", "amount > 3 * mean_amount AND count >= 5")).decide(features(), None, "EUR")
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
    decision = rules.decide(features(), None, "EUR")
    assert decision.score == Decimal("0.5800")  # 1 - 0.7 * 0.6
    assert decision.fraud
    only_a = rules.decide(features(count=3), None, "EUR")
    assert only_a.score == Decimal("0.3000") and not only_a.fraud


def test_shadow_rules_are_explained_but_never_count() -> None:
    decision = compiled(rule("watch", "amount > 100", mode="shadow")).decide(features(), None, "EUR")
    assert not decision.fraud and decision.score == Decimal("0.0000")
    assert [(r.rule_id, r.mode) for r in decision.reasons] == [("watch", "shadow")]


def test_disabled_rules_are_not_evaluated() -> None:
    decision = compiled(rule("off", "amount > 100", enabled=False)).decide(features(), None, "EUR")
    assert decision.reasons == () and not decision.fraud


def test_a_missing_feature_never_fires_a_rule() -> None:
    rules = compiled(rule("low", "amount < 0.9 * mean_amount"), rule("any_or", "mean_amount < 1 OR amount > 1"))
    decision = rules.decide(features(amount=Decimal("1.00"), mean_amount=None, count=0), None, "EUR")
    assert [r.rule_id for r in decision.reasons] == []


def test_or_explains_the_branch_that_held() -> None:
    decision = compiled(rule("burst", "count_1m > 5 OR amount > 900")).decide(features(), None, "EUR")
    assert decision.reasons[0].explanation == "amount 912.00 is more than 900"


@pytest.mark.parametrize(
    ("currency", "amounts", "last", "explained"),
    [
        # five of 0.125 BHD, then 0.004: three decimal places, as the currency has
        (
            "BHD",
            ["0.125"] * 5,
            "0.004",
            "amount 0.004 is less than 0.9 × the mean of the 5 previous transactions (0.125)",
        ),
        (
            "JPY",
            ["1200", "1201"],
            "900",
            "amount 900 is less than 0.9 × the mean of the 2 previous transactions (1201)",
        ),
        (
            "EUR",
            ["10.00", "10.05"],
            "7.10",
            "amount 7.10 is less than 0.9 × the mean of the 2 previous transactions (10.03)",
        ),
    ],
)
def test_amounts_in_explanations_have_the_currency_s_decimal_places(
    currency: str, amounts: list[str], last: str, explained: str
) -> None:
    mean = (sum(map(Decimal, amounts)) / len(amounts)).quantize(Decimal("0.000001"))  # as features.py rounds it
    decision = compiled(rule("low", "amount < 0.9 * mean_amount")).decide(
        features(amount=Decimal(last), count=len(amounts), mean_amount=mean), None, currency
    )
    assert [r.explanation for r in decision.reasons] == [explained]


def test_every_amount_feature_is_explained_in_the_currency_and_counts_stay_whole() -> None:
    rules = compiled(rule("sums", "sum_1h > 0.1 AND max_amount >= 0.0004 AND std_amount >= 0 AND count_1h >= 2"))
    decision = rules.decide(
        features(sum_1h=Decimal("0.2505"), max_amount=Decimal("0.1255"), std_amount=Decimal("0.0625"), count_1h=2),
        None,
        "BHD",
    )
    assert decision.reasons[0].explanation == (
        "the amount spent in the previous hour (0.251) is more than 0.1; "
        "the largest of the 48 previous amounts (0.126) is at least 0.0004; "
        "the standard deviation of the 48 previous amounts (0.063) is at least 0; "
        "the number of transactions in the previous hour (2) is at least 2"
    )


def test_a_factor_with_more_digits_than_the_default_precision_is_applied_exactly() -> None:
    # 0.333...3 (31 digits) × 3 is just below 1: rounded to 28 digits it would be 1, and 1.00 would not exceed it.
    third = "0.3333333333333333333333333333333"
    decision = compiled(rule("third", f"amount > {third} * mean_amount", "0.9")).decide(
        features(amount=Decimal("1.00"), count=1, mean_amount=Decimal("3.000000")), None, "EUR"
    )
    assert decision.fraud and decision.score == Decimal("0.9000")
    assert decision.reasons[0].explanation == (
        f"amount 1.00 is more than {third} × the mean of the 1 previous transactions (3.00)"
    )
