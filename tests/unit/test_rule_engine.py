"""Evaluating a compiled rule set: scores, thresholds, shadow rules, missing features, explanations."""

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txguard.domain import Decision
from txguard.feature_columns import RowColumns
from txguard.features import COUNT_IN_CURRENCY, Features, list_feature
from txguard.rule_engine import COLUMN_ROWS, CompiledRuleSet
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


# ------------------------------------------------------------------ a chunk explained column-wise (decide_columns) --
# Values that tie at the constants and factors below, nearly tie, are zero or are missing; amounts with more places
# than JPY (0) and EUR (2) have, and as many as BHD (3), so that rounding half up shows in the explanations.
AMOUNTS = ["0", "0.0001", "0.0005", "0.125", "0.5", "1", "1.5", "2.5", "41.2", "41.205", "123.6", "220", "220.0001"]
MEANS = ["0", "0.000001", "0.0625", "0.666667", "1", "13.733333", "41.2", "41.199999", "137.3335"]
COUNTS = [0, 1, 2, 5, 20, 2**53 + 1]
SCORES = ["0", "0.49995", "0.5", "0.50005", "0.12345678", "1"]
NUMBERS = {
    "amount": AMOUNTS,
    "mean_amount": MEANS,
    "std_amount": MEANS,
    "merchant_sum_1h": AMOUNTS,
    "count": COUNTS,
    "count_1m": COUNTS,
    "merchant_count_1m": COUNTS,
    "model_score": SCORES,
}
CONSTANTS = ["0", "0.5", "1", "2", "41.2", "220", "0.125", "0.50005"]
FACTORS = ["0.9", "1", "2", "3", "0.333333", "0.15"]
OPERATORS = ["<", "<=", ">", ">=", "=", "!="]


@st.composite
def comparison_texts(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["constant", "constant", "feature", "feature", "text", "in", "list"]))
    if kind == "text":
        return f"country {draw(st.sampled_from(['=', '!=']))} '{draw(st.sampled_from(['FR', 'DE']))}'"
    if kind == "in":
        return f"country {draw(st.sampled_from(['IN', 'NOT IN']))} ('FR', 'GB')"
    if kind == "list":
        return f"country {draw(st.sampled_from(['IN', 'NOT IN']))} LIST watched"
    feature, op = draw(st.sampled_from(sorted(NUMBERS))), draw(st.sampled_from(OPERATORS))
    if kind == "constant":
        return f"{feature} {op} {draw(st.sampled_from(CONSTANTS))}"
    other = draw(st.sampled_from(["mean_amount", "amount", "count", "merchant_sum_1h", "model_score"]))
    return f"{feature} {op} {draw(st.sampled_from(FACTORS))} * {other}"


@st.composite
def when_texts(draw: st.DrawFn, depth: int = 0) -> str:
    if depth == 2 or draw(st.booleans()):
        return draw(comparison_texts())
    terms = draw(st.lists(when_texts(depth + 1), min_size=2, max_size=3))
    return "(" + f" {draw(st.sampled_from(['AND', 'OR']))} ".join(terms) + ")"


@st.composite
def random_rule_sets(draw: st.DrawFn) -> CompiledRuleSet:
    rules = [
        {
            "id": f"r{i}",
            "description": "a rule",
            "when": draw(when_texts()),
            "score": draw(st.sampled_from(["0.3", "0.1234", "0.95", "1"])),
            "mode": draw(st.sampled_from(["active", "active", "shadow"])),
            "action": draw(st.sampled_from(["score", "score", "score", "review", "block", "allow"])),
            "enabled": draw(st.sampled_from([True, True, True, False])),
        }
        for i in range(draw(st.integers(1, 7)))
    ]
    document = {"threshold": draw(st.sampled_from(["0.5", "0.9"])), "review_threshold": "0.3", "rules": rules}
    return CompiledRuleSet(4, validate_rule_set(document), detector_version=draw(st.sampled_from([None, 2])))


@st.composite
def random_rows(draw: st.DrawFn) -> Features:
    row: Features = {}
    for name, values in NUMBERS.items():
        # A key may be missing altogether (an account's first transaction has no mean), or present as None.
        if draw(st.integers(0, 9)) == 0:
            continue
        value = draw(st.sampled_from([None, *values]))
        row[name] = value if value is None or isinstance(value, int) else Decimal(value)
    if draw(st.booleans()):  # an account with transactions in other currencies: amounts' counts are its own
        row[COUNT_IN_CURRENCY] = draw(st.sampled_from([None, 0, 3]))
    if draw(st.integers(0, 5)):
        row["country"] = draw(st.sampled_from([None, "FR", "DE", "GB"]))
        row[list_feature("watched")] = None if row["country"] is None else draw(st.sampled_from([0, 1]))
    return row


class NoValuesAt:
    """A chunk's columns offering only what the predicates read: the engine reads values through the items."""

    def __init__(self, rows: list[Features]) -> None:
        self._columns = RowColumns(rows)
        self.size = len(rows)
        self.number = self._columns.number
        self.text = self._columns.text


@settings(max_examples=250, deadline=None)
@given(
    rules=random_rule_sets(),
    chunk=st.lists(random_rows(), min_size=COLUMN_ROWS, max_size=40),
    currencies=st.lists(st.sampled_from(["EUR", "JPY", "BHD", "CLF", "XXX"]), min_size=1, max_size=3),
    merchant_ids=st.lists(st.sampled_from([None, "m1", "m2"]), min_size=1, max_size=3),
    snoozed_rules=st.lists(st.sampled_from(["r0", "r1", "r2"]), max_size=2),
)
def test_a_chunk_explained_column_wise_is_decided_as_row_by_row(
    rules: CompiledRuleSet,
    chunk: list[Features],
    currencies: list[str],
    merchant_ids: list[str | None],
    snoozed_rules: list[str],
) -> None:
    # Given rows with ties, missing keys and values, zeros, several currencies and merchants, text and list
    # comparisons nested in AND and OR, and rules snoozed for some rows,
    items = [(f, merchant_ids[i % len(merchant_ids)], currencies[i % len(currencies)]) for i, f in enumerate(chunk)]
    by_snooze = {rule_id: f"snoozed for account {k} until tomorrow" for k, rule_id in enumerate(snoozed_rules)}
    snoozed = [by_snooze if i % 3 == 1 else None for i in range(len(chunk))] if by_snooze else None
    by_rows = [rules.decide(f, m, c, None if snoozed is None else snoozed[i]) for i, (f, m, c) in enumerate(items)]
    # when the chunk is decided at once (its values read from the columns, or through the items),
    for columns in (RowColumns(chunk), NoValuesAt(chunk)):
        assert_same_decisions(rules, rules.decide_columns(columns, items, snoozed), by_rows)
    # or its items say they are all in one currency, with their merchant ids (as feature_columns.ColumnItems),
    in_one = ItemsInOneCurrency([(f, m, currencies[0]) for f, m, _ in items])
    by_rows = [rules.decide(f, m, c, None if snoozed is None else snoozed[i]) for i, (f, m, c) in enumerate(in_one)]
    assert_same_decisions(rules, rules.decide_columns(RowColumns(chunk), in_one, snoozed), by_rows)


class ItemsInOneCurrency(list[tuple[Features, str | None, str]]):
    def __init__(self, items: list[tuple[Features, str | None, str]]) -> None:
        super().__init__(items)
        self.currency = items[0][2]
        self.merchant_ids = [m for _, m, _ in items]


def assert_same_decisions(rules: CompiledRuleSet, decisions: list[Decision], by_rows: list[Decision]) -> None:
    # Every decision is the row engine's: reasons' text and order, weights, score, outcome, versions,
    assert decisions == by_rows
    assert [str(d.score) for d in decisions] == [str(d.score) for d in by_rows]
    assert [d.reasons_text for d in decisions] == [d.reasons_text for d in by_rows]
    # and a row where nothing fired shares the one decision of nothing found.
    assert [d is rules.nothing_found for d in decisions] == [d is rules.nothing_found for d in by_rows]
