"""Graded outcomes in the rule engine and with a champion's score: rule actions, the review thresholds, the
precedence, snoozes, and (a property) that without any of them every decision is what it was before outcomes."""

from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txguard.domain import Decision, Transaction
from txguard.feature_columns import RowColumns
from txguard.features import Features
from txguard.models.serving import combined_score, with_stored_model
from txguard.rule_engine import COLUMN_ROWS, CompiledRuleSet
from txguard.rule_language import RuleSetError, validate_rule_set
from txguard.snoozes import batch_entity_values, entity_values


def compiled(*rules: dict[str, object], threshold: str = "0.5", **options: object) -> CompiledRuleSet:
    return CompiledRuleSet(3, validate_rule_set({"threshold": threshold, "rules": list(rules), **options}))


def rule(rule_id: str, when: str, score: str | None = "1", **extra: object) -> dict[str, object]:
    found: dict[str, object] = {"id": rule_id, "description": rule_id, "when": when, **extra}
    if score is not None:
        found["score"] = score
    return found


def features(**values: object) -> Features:
    base: Features = {"amount": Decimal("912.00"), "count": 48, "mean_amount": Decimal("41.2"), "count_1m": 0}
    base.update(values)  # type: ignore[arg-type]
    return base


def test_without_actions_or_review_thresholds_a_decision_blocks_exactly_when_flagged() -> None:
    rules = compiled(rule("a", "amount > 100", "0.3"), rule("b", "count > 10", "0.4"), threshold="0.55")
    assert rules.decide(features(), None, "EUR").outcome == "block"
    low = rules.decide(features(count=3), None, "EUR")
    assert (low.outcome, low.fraud, low.score) == ("allow", False, Decimal("0.3000"))


def test_a_score_from_the_review_threshold_up_to_the_threshold_is_reviewed() -> None:
    rules = compiled(
        rule("a", "amount > 100", "0.3"), rule("b", "count > 10", "0.4"), threshold="0.55", review_threshold="0.3"
    )
    reviewed = rules.decide(features(count=3), None, "EUR")
    assert (reviewed.outcome, reviewed.fraud) == ("review", False)
    assert rules.decide(features(), None, "EUR").outcome == "block"
    assert rules.decide(features(amount=Decimal("1"), count=3), None, "EUR").outcome == "allow"


@pytest.mark.parametrize(
    ("action", "outcome"), [("block", "block"), ("review", "review"), ("allow", "allow"), ("score", "block")]
)
def test_a_rule_s_action_decides_the_outcome_and_only_scoring_rules_count_in_the_score(
    action: str, outcome: str
) -> None:
    decision = compiled(rule("big", "amount > 100", "0.9" if action == "score" else None, action=action)).decide(
        features(), None, "EUR"
    )
    assert decision.outcome == outcome
    assert decision.fraud == (outcome == "block")
    assert decision.score == (Decimal("0.9000") if action == "score" else Decimal("0.0000"))
    (reason,) = decision.reasons
    assert reason.explanation.startswith(
        {"block": "blocks: ", "review": "sends to review: ", "allow": "allows: "}.get(action, "amount")
    )


def test_the_precedence_allow_rule_then_block_then_review() -> None:
    rules = compiled(
        rule("trusted", "count > 40", None, action="allow"),
        rule("stop", "amount > 500", None, action="block"),
        rule("look", "amount > 100", None, action="review"),
        rule("heavy", "amount > 100", "1"),
    )
    assert rules.decide(features(), None, "EUR").outcome == "allow"  # the allow rule wins over block and score
    assert rules.decide(features(count=3), None, "EUR").outcome == "block"
    only_review = compiled(rule("look", "amount > 100", None, action="review"), rule("w", "amount > 100", "0.1"))
    assert only_review.decide(features(), None, "EUR").outcome == "review"


def test_a_shadow_rule_never_changes_the_outcome_whatever_its_action() -> None:
    rules = compiled(
        rule("s_block", "amount > 100", None, action="block", mode="shadow"),
        rule("s_allow", "amount > 100", None, action="allow", mode="shadow"),
        rule("s_review", "amount > 100", None, action="review", mode="shadow"),
    )
    assert rules.decide(features(), None, "EUR").outcome == "allow"
    flagged = compiled(
        rule("hit", "amount > 100"), rule("s_allow", "amount > 100", None, action="allow", mode="shadow")
    )
    assert flagged.decide(features(), None, "EUR").outcome == "block"


def test_a_snoozed_rule_does_not_fire_and_the_decision_says_which_snooze_suppressed_it() -> None:
    rules = compiled(rule("big", "amount > 100"), rule("many", "count > 10", "0.2"))
    decision = rules.decide(features(), None, "EUR", {"big": "snoozed for account 7 until 2030-01-01 by ana"})
    assert (decision.outcome, decision.score) == ("allow", Decimal("0.2000"))
    snoozed = [r for r in decision.reasons if r.mode == "snoozed"]
    assert [r.rule_id for r in snoozed] == ["big"]
    assert snoozed[0].explanation.startswith(
        "snoozed for account 7 until 2030-01-01 by ana; it would have fired: amount"
    )


def test_review_thresholds_must_be_below_the_block_thresholds() -> None:
    with pytest.raises(RuleSetError, match="review_threshold"):
        validate_rule_set({"threshold": "0.5", "review_threshold": "0.5", "rules": []})
    with pytest.raises(RuleSetError, match="model_review_threshold"):
        validate_rule_set({"model_block_threshold": "0.8", "model_review_threshold": "0.9", "rules": []})
    with pytest.raises(RuleSetError, match="score: required"):
        validate_rule_set({"rules": [rule("x", "amount > 1", None)]})
    with pytest.raises(RuleSetError, match="action"):
        validate_rule_set({"rules": [rule("x", "amount > 1", action="decline")]})


def stored(p: float, threshold: float = 0.9) -> Decision:
    return Decision(p >= threshold, combined_score(Decimal(0), p), (), 1, 1, 5, p, threshold)


def test_a_champion_s_score_blocks_from_its_block_threshold_and_reviews_from_its_review_threshold() -> None:
    rules = compiled(rule("big", "amount > 100000"), model_block_threshold="0.95", model_review_threshold="0.5")
    nothing = rules.decide(features(), None, "EUR")
    assert with_stored_model(nothing, stored(0.97), rules).outcome == "block"
    reviewed = with_stored_model(nothing, stored(0.92), rules)  # the artifact's 0.9 is overridden by 0.95
    assert (reviewed.outcome, reviewed.fraud, reviewed.model_threshold) == ("review", False, 0.95)
    assert with_stored_model(nothing, stored(0.4), rules).outcome == "allow"
    plain = compiled(rule("big", "amount > 100000"))
    assert with_stored_model(plain.decide(features(), None, "EUR"), stored(0.92), plain).outcome == "block"


weights = st.sampled_from(["0.1", "0.2", "0.5", "0.75", "1"])


@settings(max_examples=300, deadline=None)
@given(
    chosen=st.lists(
        st.tuples(
            st.sampled_from(["amount > 100", "count > 10", "count_1m >= 1", "amount < 50"]), weights, st.booleans()
        ),
        min_size=1,
        max_size=4,
    ),
    threshold=weights,
    amount=st.decimals(min_value=0, max_value=1000, places=2),
    count=st.integers(0, 60),
    p=st.one_of(st.none(), st.floats(min_value=0, max_value=1)),
    model_threshold=st.floats(min_value=0.01, max_value=1),
)
def test_without_lists_actions_or_review_thresholds_every_decision_is_what_it_was_before_outcomes(
    chosen: list[tuple[str, str, bool]],
    threshold: str,
    amount: Decimal,
    count: int,
    p: float | None,
    model_threshold: float,
) -> None:
    """The arithmetic of before outcomes, written out: score = 1 - prod(1 - weight) over the active rules that
    fire; fraud = score >= threshold, or p >= the champion's threshold; outcome block exactly when fraud."""
    rules = compiled(
        *(rule(f"r{i}", when, w, mode="shadow" if shadow else "active") for i, (when, w, shadow) in enumerate(chosen)),
        threshold=threshold,
    )
    values = features(amount=amount, count=count)
    keep = Decimal(1)
    for when, w, shadow in chosen:
        holds = {
            "amount > 100": amount > 100,
            "count > 10": count > 10,
            "count_1m >= 1": False,
            "amount < 50": amount < 50,
        }[when]
        if holds and not shadow:
            keep *= 1 - Decimal(w)
    expected_score = (1 - keep).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)
    by_rules = rules.decide(values, None, "EUR")
    # The columnar engine (rule_columns) decides a chunk of such transactions alike.
    chunk = [(values, None, "EUR")] * COLUMN_ROWS
    assert rules.decide_columns(RowColumns([values] * COLUMN_ROWS), chunk) == [by_rules] * COLUMN_ROWS
    assert by_rules.score == expected_score
    assert by_rules.fraud == (expected_score >= Decimal(threshold))
    assert by_rules.outcome == ("block" if by_rules.fraud else "allow")
    if p is None:
        return
    decision = with_stored_model(by_rules, stored(p, model_threshold), rules)
    assert decision.fraud == (expected_score >= Decimal(threshold) or p >= model_threshold)
    assert decision.outcome == ("block" if decision.fraud else "allow")
    assert decision.model_threshold == model_threshold


def test_the_fraud_detected_detail_and_the_api_s_decision_carry_the_outcome() -> None:
    from txguard.domain import Transaction
    from txguard.presenters import decision_json, fraud_detected_detail

    t = Transaction(1, 2, 1714564800000, Decimal("10.00"), "EUR")
    blocked = compiled(rule("big", "amount > 100")).decide(features(), None, "EUR")
    assert fraud_detected_detail(t, blocked)["outcome"] == "block"
    reviewed = compiled(rule("look", "amount > 100", None, action="review")).decide(features(), None, "EUR")
    assert (decision_json(reviewed)["outcome"], decision_json(reviewed)["fraud"]) == ("review", False)
    with pytest.raises(ValueError, match="fraud means block"):
        Decision(True, Decimal(1), (), 1, outcome="review")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 4),
            st.sampled_from([None, "m1", "m2"]),
            st.sampled_from([None, "c1"]),
            st.sampled_from([None, "FR", "DE"]),
            st.sampled_from([None, "10.0.0.1"]),
            st.sampled_from([None, "d1", "d2"]),
            st.sampled_from([None, "0742"]),
        ),
        max_size=12,
    )
)
def test_a_batch_s_entity_values_read_by_field_are_those_of_its_transactions_merged(
    drawn: list[tuple[object, ...]],
) -> None:
    batch = [
        Transaction(i, account, 0, Decimal(1), "EUR", merchant, None, country, category, card, ip, device)
        for i, (account, merchant, card, country, ip, device, category) in enumerate(drawn)  # type: ignore[arg-type]
    ]
    merged: dict[str, set[str]] = {}
    for t in batch:
        for kind, value in entity_values(t).items():
            merged.setdefault(kind, set()).add(value)
    assert batch_entity_values(batch) == merged
