"""The rule grammar: what parses, into what, and how a broken rule set is refused."""

from decimal import Decimal

import pytest

from txguard.rule_language import (
    MAX_COMPARISONS,
    MAX_DECIMAL_PLACES,
    MAX_INTEGER_DIGITS,
    MAX_NESTING_DEPTH,
    MAX_RULES,
    MAX_WHEN_LENGTH,
    AllOf,
    AnyOf,
    Comparison,
    RuleSetError,
    comparison_count,
    parse_condition,
    validate_rule_set,
)


def rule(rule_id: str = "r", when: str = "amount > 100", **extra: object) -> dict[str, object]:
    return {"id": rule_id, "description": "a rule", "when": when, "score": "0.5", **extra}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "amount < 0.9 * mean_amount",
            Comparison(feature="amount", op="<", factor=Decimal("0.9"), other="mean_amount"),
        ),
        (
            "seconds_since_previous < 2",
            Comparison(feature="seconds_since_previous", op="<", value=Decimal(2)),
        ),
        ("count_1m > 5", Comparison(feature="count_1m", op=">", value=Decimal(5))),
        ("amount <= 0", Comparison(feature="amount", op="<=", value=Decimal(0))),
        (
            "amount >= max_amount",
            Comparison(feature="amount", op=">=", factor=Decimal(1), other="max_amount"),
        ),
        ("amount == 5", Comparison(feature="amount", op="=", value=Decimal(5))),
    ],
)
def test_comparisons_parse_into_their_structured_form(text: str, expected: Comparison) -> None:
    assert parse_condition(text) == expected


def test_and_binds_tighter_than_or_and_parentheses_override() -> None:
    flat = parse_condition("count >= 5 AND amount > 3 * mean_amount OR count_1m > 5")
    assert isinstance(flat, AnyOf)
    assert isinstance(flat.any[0], AllOf) and len(flat.any[0].all) == 2

    grouped = parse_condition("count >= 5 and (amount > 3 * mean_amount or count_1m > 5)")
    assert isinstance(grouped, AllOf)
    assert isinstance(grouped.all[1], AnyOf)


def test_chains_of_the_same_connective_are_flattened() -> None:
    condition = parse_condition("count > 1 AND count > 2 AND count > 3")
    assert isinstance(condition, AllOf) and len(condition.all) == 3


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("amount < 0.9 * mean", "unknown feature 'mean'"),
        ("amount <", "found the end of the condition"),
        ("amount < 1 extra", "unexpected 'extra'"),
        ("__import__('os').system('x')", "unexpected character '.' at position 17"),
        ("__import__ > 1", "unknown feature '__import__'"),
        ("amount > 1; drop table transactions", "unexpected character ';'"),
        ("(amount > 1", "expected )"),
        ("", "empty"),
        ("amount > \u0661\u0662", "the constant '\u0661\u0662' at position 10 is not a number as JSON writes one"),
        ("count >= 007", "the constant '007' at position 10 is not a number as JSON writes one"),
        ("mean_amount > .5", "the constant '.5' at position 15 is not a number as JSON writes one"),
        ("amount > 5.", "the constant '5.' at position 10 is not a number as JSON writes one"),
        ("amount > 1e-", "the constant '1e-' at position 10 is not a number as JSON writes one"),
    ],
)
def test_bad_conditions_are_refused_with_the_problem_named(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint.replace("(", r"\(").replace(")", r"\)")):
        parse_condition(text)


def test_a_rule_set_names_every_broken_rule_and_is_refused_whole() -> None:
    with pytest.raises(RuleSetError) as refused:
        validate_rule_set(
            {
                "rules": [
                    rule("fine"),
                    rule("bad_feature", "amount > 2 * nope"),
                    rule("Bad-Id"),
                    rule("w", score="3"),
                ]
            }
        )
    problems = "\n".join(refused.value.problems)
    assert "rule 'bad_feature' (#2): when: unknown feature 'nope'" in problems
    assert "rule 'Bad-Id' (#3): id" in problems
    assert "rule #4" not in problems and "rule 'w' (#4): score" in problems
    assert "fine" not in problems


def test_duplicate_rule_ids_are_refused() -> None:
    with pytest.raises(RuleSetError, match="used twice"):
        validate_rule_set({"rules": [rule("same"), rule("same")]})


def test_unknown_keys_and_modes_are_refused() -> None:
    with pytest.raises(RuleSetError, match="mode"):
        validate_rule_set({"rules": [rule(mode="sometimes")]})
    with pytest.raises(RuleSetError, match="colour"):
        validate_rule_set({"rules": [rule(colour="red")]})


def test_the_stored_document_round_trips_with_its_parsed_condition() -> None:
    rule_set = validate_rule_set({"threshold": "0.7", "rules": [rule(when="amount > 3 * mean_amount AND count >= 5")]})
    document = rule_set.document()
    assert document["rules"][0]["condition"] == {
        "all": [
            {"feature": "amount", "op": ">", "factor": "3", "other": "mean_amount"},
            {"feature": "count", "op": ">=", "value": "5"},
        ]
    }
    assert validate_rule_set(document) == rule_set


# --- what a rule set may cost: refused when validated, with the limit named ---------------------------


def test_parentheses_nested_beyond_the_limit_are_refused_naming_the_limit() -> None:
    deepest = "(" * MAX_NESTING_DEPTH + "amount > 1" + ")" * MAX_NESTING_DEPTH
    assert parse_condition(deepest) == Comparison(feature="amount", op=">", value=Decimal(1))
    for levels in (MAX_NESTING_DEPTH + 1, 330, 5000):
        text = "(" * levels + "amount > 1" + ")" * levels
        with pytest.raises(RuleSetError) as refused:
            validate_rule_set({"rules": [rule("deep", text[:MAX_WHEN_LENGTH])]})
        assert refused.value.problems == [
            f"rule 'deep' (#1): when: nested too deeply at position {MAX_NESTING_DEPTH + 1}: "
            f"at most {MAX_NESTING_DEPTH} levels of parentheses"
        ]


def test_a_rule_set_over_the_comparison_budget_is_refused_naming_the_largest_rules() -> None:
    def chain(count: int) -> str:
        return " AND ".join(["count > 1"] * count)

    at_the_limit = [rule("a", chain(MAX_COMPARISONS - 1)), rule("b", "amount > 1")]
    assert (
        sum(comparison_count(r.condition) for r in validate_rule_set({"rules": at_the_limit}).rules) == MAX_COMPARISONS
    )
    with pytest.raises(RuleSetError) as refused:
        validate_rule_set({"rules": [rule("a", chain(MAX_COMPARISONS - 1)), rule("b", "amount > 1 OR count > 2")]})
    assert refused.value.problems == [
        f"rule set: rules: {MAX_COMPARISONS + 1} comparisons in all, at most {MAX_COMPARISONS} "
        f"(the largest rules: 'a' {MAX_COMPARISONS - 1}, 'b' 2)"
    ]


def test_more_rules_than_the_limit_are_refused() -> None:
    assert len(validate_rule_set({"rules": [rule(f"r{i}") for i in range(MAX_RULES)]}).rules) == MAX_RULES
    with pytest.raises(RuleSetError, match=f"rule set: rules: must hold at most {MAX_RULES} items"):
        validate_rule_set({"rules": [rule(f"r{i}") for i in range(MAX_RULES + 1)]})


def test_a_when_longer_than_the_limit_is_refused() -> None:
    padded = "amount > 1" + " " * (MAX_WHEN_LENGTH - len("amount > 1"))
    assert validate_rule_set({"rules": [rule("long", padded)]}).rules[0].when == padded
    with pytest.raises(RuleSetError, match=f"rule 'long' \\(#1\\): when: .* at most {MAX_WHEN_LENGTH} characters"):
        validate_rule_set({"rules": [rule("long", padded + " ")]})


def test_constants_follow_the_decimal_rule_of_literals_exponents_included() -> None:
    assert parse_condition("amount > 1e17 AND count >= 0 AND mean_amount > 2.5E-3 * amount") == AllOf(
        all=[
            Comparison(feature="amount", op=">", value=Decimal("100000000000000000")),
            Comparison(feature="count", op=">=", value=Decimal(0)),
            Comparison(feature="mean_amount", op=">", factor=Decimal("0.0025"), other="amount"),
        ]
    )
    with pytest.raises(ValueError, match="the constant 1e18 at position 10 has 19 digits before the decimal point"):
        parse_condition("amount > 1e18")
    with pytest.raises(ValueError, match="the constant 1e-41 at position 10 has 41 decimal places, at most 40"):
        parse_condition("amount > 1e-41")


@pytest.mark.parametrize(
    "constant",
    [
        "0.3333333333333333333333333333333",
        "9" * MAX_INTEGER_DIGITS,
        "9" * MAX_INTEGER_DIGITS + "." + "9" * MAX_DECIMAL_PLACES,
        "0." + "0" * (MAX_DECIMAL_PLACES - 1) + "1",
        "1." + "0" * 100,  # nor are trailing zeros
    ],
)
def test_constants_within_the_limits_keep_every_digit(constant: str) -> None:
    rule_set = validate_rule_set(
        {"rules": [rule("c", f"amount > {constant}"), rule("f", f"amount > {constant} * count")]}
    )
    assert [r.condition for r in rule_set.rules] == [
        Comparison(feature="amount", op=">", value=Decimal(constant)),
        Comparison(feature="amount", op=">", factor=Decimal(constant), other="count"),
    ]
    stored = rule_set.document()["rules"][0]["condition"]["value"]
    assert Decimal(stored).compare_total(Decimal(constant)) == 0  # the same number, to the last digit


@pytest.mark.parametrize(
    ("constant", "complaint"),
    [
        ("1" + "0" * MAX_INTEGER_DIGITS, f"has {MAX_INTEGER_DIGITS + 1} digits before the decimal point, at most 18"),
        ("0." + "0" * MAX_DECIMAL_PLACES + "1", f"has {MAX_DECIMAL_PLACES + 1} decimal places, at most 40"),
        ("0." + "3" * 500, "has 500 decimal places, at most 40"),
        ("7" * 1000, "has 1000 digits before the decimal point, at most 18"),
    ],
)
def test_constants_beyond_the_limits_are_refused_naming_rule_constant_and_limit(constant: str, complaint: str) -> None:
    with pytest.raises(RuleSetError) as refused:
        validate_rule_set({"rules": [rule("ok"), rule("long", f"amount > {constant} * mean_amount")]})
    (problem,) = refused.value.problems
    shown = constant if len(constant) <= 60 else f"{constant[:28]}...{constant[-28:]}"
    assert problem == f"rule 'long' (#2): when: the constant {shown} at position 10 {complaint}"


def test_a_rule_set_records_known_features_and_never_model_score() -> None:
    from txguard.rule_engine import CompiledRuleSet

    document = {
        "rules": [{"id": "m", "description": "model", "when": "model_score > 0.8 AND amount > 100", "score": "0.9"}],
        "features": {"record": ["count_30d", "merchant_risk_7d", "hour_of_day"]},
    }
    compiled = CompiledRuleSet(3, validate_rule_set(document), detector_version=5)
    assert compiled.rule_features == {"model_score", "amount"}
    # Computed and stored: the rules' features, the recorded ones and count; never the model's output.
    assert compiled.needed_features == {"amount", "count", "count_30d", "merchant_risk_7d", "hour_of_day"}
    assert compiled.decide({"amount": Decimal("1")}, None, "EUR").detector_version == 5

    for record, reason in (
        (["model_score"], "'model_score' cannot be recorded"),
        (["amount", "no_such_feature"], "unknown feature 'no_such_feature'"),
        (["count", "count"], "'count' named twice"),
    ):
        with pytest.raises(RuleSetError) as refused:
            validate_rule_set({**document, "features": {"record": record}})
        assert reason in str(refused.value)
        assert "features.record" in str(refused.value)
