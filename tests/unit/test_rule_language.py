"""The rule grammar: what parses, into what, and how a broken rule set is refused."""

from decimal import Decimal

import pytest

from txguard.rule_language import AllOf, AnyOf, Comparison, RuleSetError, parse_condition, validate_rule_set


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
        ("__import__('os').system('x')", 'unexpected character "\'" at position 12'),
        ("__import__ > 1", "unknown feature '__import__'"),
        ("amount > 1; drop table transactions", "unexpected character ';'"),
        ("(amount > 1", "expected )"),
        ("", "empty"),
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
