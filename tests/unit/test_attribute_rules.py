"""Rules over text fields: what parses, what is refused when the rule set is applied, and how decisions read."""

from decimal import Decimal

import pytest

from txguard.features import list_feature
from txguard.rule_engine import CompiledRuleSet
from txguard.rule_language import (
    MAX_IN_VALUES,
    MAX_SET_VALUES,
    MAX_TEXT_LENGTH,
    Comparison,
    RuleSetError,
    parse_condition,
    validate_rule_set,
)


def rule(rule_id: str, when: str, **extra: object) -> dict[str, object]:
    return {"id": rule_id, "description": "a rule", "when": when, "score": "0.5", **extra}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("country = 'fr'", Comparison(feature="country", op="=", text="FR")),
        ("channel != 'atm'", Comparison(feature="channel", op="!=", text="atm")),
        ("country IN ('FR', 'de', 'FR')", Comparison(feature="country", op="in", values=("FR", "DE"))),
        ("country not in ('FR')", Comparison(feature="country", op="not in", values=("FR",))),
        (
            "merchant_category IN LIST high_risk_mcc",
            Comparison(feature="merchant_category", op="in list", list_name="high_risk_mcc"),
        ),
        (
            "card_id NOT IN LIST trusted_cards",
            Comparison(feature="card_id", op="not in list", list_name="trusted_cards"),
        ),
        ("metadata.campaign = 'it''s'", Comparison(feature="metadata.campaign", op="=", text="it's")),
        ("merchant_category = 742", Comparison(feature="merchant_category", op="=", text="0742")),
        ("ip_address = '2001:DB8::1'", Comparison(feature="ip_address", op="=", text="2001:db8::1")),
        ("account_id IN LIST vip", Comparison(feature="account_id", op="in list", list_name="vip")),
    ],
)
def test_text_comparisons_parse_with_constants_in_the_field_s_canonical_form(text: str, expected: Comparison) -> None:
    assert parse_condition(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("country = 'XX'", "the value 'XX' at position 11 for country is not an ISO 3166-1 alpha-2 country code"),
        ("merchant_category = '12345'", "for merchant_category must be an ISO 18245 merchant category code"),
        ("card_id = '4111111111111111'", "for card_id holds what looks like a card number"),
        ("channel = 'pigeon'", "for channel must be one of card_present"),
        ("channel < 'atm'", "channel at position 1 is text: compare it with =, !=, IN or IN LIST"),
        ("amount = 'x'", "amount is a number, not text"),
        ("amount IN ('1')", "amount at position 1 is a number: IN compares the text fields"),
        ("channel IN LIST channels", "channel at position 1 cannot be compared with a list"),
        ("metadata.Campaign = 'x'", "a metadata key is 1-40 lower-case letters"),
        ("country IN ()", "expected a quoted value for country but found ')'"),
        ("country = 'FR", "unexpected character"),
        ("metadata.note = '" + "x" * (MAX_TEXT_LENGTH + 1) + "'", f"characters, at most {MAX_TEXT_LENGTH}"),
        (
            "device_id IN (" + ", ".join(f"'d{i}'" for i in range(MAX_IN_VALUES + 1)) + ")",
            f"{MAX_IN_VALUES + 1} values in IN (...) at position 1, at most {MAX_IN_VALUES}",
        ),
    ],
)
def test_impossible_values_and_wrong_comparisons_are_refused_naming_what_and_where(text: str, problem: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_condition(text)
    assert problem in str(refused.value)


def test_the_values_of_in_lists_count_in_the_rule_set_s_budget() -> None:
    values = ", ".join(f"'d{i}'" for i in range(MAX_IN_VALUES))
    rules = [rule(f"r{i}", f"device_id IN ({values})") for i in range(MAX_SET_VALUES // MAX_IN_VALUES + 1)]
    with pytest.raises(RuleSetError) as refused:
        validate_rule_set({"rules": rules})
    assert f"values in IN (...) lists in all, at most {MAX_SET_VALUES}" in str(refused.value)


def test_lists_must_exist_and_fit_the_field() -> None:
    rule_set = validate_rule_set(
        {"rules": [rule("a", "card_id IN LIST stolen"), rule("b", "country NOT IN LIST home", enabled=False)]}
    )
    assert rule_set.list_fields() == {"stolen": {"card_id"}, "home": {"country"}}
    rule_set.check_lists({"stolen": "card", "home": "country"})
    with pytest.raises(RuleSetError) as refused:
        rule_set.check_lists({"stolen": "device"})
    assert refused.value.problems == [
        "rule 'a': the list 'stolen' holds device values, which card_id is never compared with (lists for card_id: "
        "card)",
        "rule 'b': the list 'home' does not exist",
    ]


def compiled(*rules: dict[str, object]) -> CompiledRuleSet:
    return CompiledRuleSet(1, validate_rule_set({"rules": list(rules)}))


def test_a_missing_field_makes_every_comparison_on_it_false_not_in_included() -> None:
    rules = compiled(
        rule("ne", "channel != 'atm'"),
        rule("not_in", "country NOT IN ('FR')"),
        rule("not_listed", "card_id NOT IN LIST trusted"),
        rule("meta", "metadata.campaign != 'x'"),
    )
    assert rules.text_fields == {"channel", "country", "metadata.campaign"}
    assert rules.list_fields == {"trusted": "card_id"} and rules.list_names == {"trusted"}
    assert "channel" not in rules.needed_features  # text fields are read, never stored as features
    nothing = {"amount": Decimal(1), "channel": None, "country": None, "card_id": None, list_feature("trusted"): None}
    assert rules.decide(dict(nothing), None, "EUR").reasons == ()
    present = {
        "amount": Decimal(1),
        "channel": "ecommerce",
        "country": "BR",
        "card_id": "tok_1",
        list_feature("trusted"): 0,
        "metadata.campaign": "y",
    }
    decision = rules.decide(present, None, "EUR")
    assert [(r.rule_id, r.explanation) for r in decision.reasons] == [
        ("meta", "metadata.campaign y is not x"),
        ("ne", "channel ecommerce is not atm"),
        ("not_in", "country BR is not in FR"),
        ("not_listed", "card_id tok_1 is not in list trusted"),
    ]
