"""Rules decided on a chunk's columns (rule_columns) give exactly the row engine's decisions and explanations."""

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from txguard.feature_columns import RowColumns
from txguard.features import Features, list_feature
from txguard.models.serving import ModelDetector, combined_score
from txguard.rule_engine import COLUMN_ROWS, CompiledRuleSet
from txguard.rule_language import validate_rule_set

# Values chosen so that comparisons tie, nearly tie (one unit of the last place apart) and miss.
AMOUNTS = ["0", "0.0001", "1", "1.5", "2", "3", "41.2", "41.2001", "61.8", "123.6", "220", "220.0001", "1000000000"]
MEANS = ["0", "0.000001", "0.666667", "1", "13.733333", "20.6", "41.2", "41.199999", "110"]
COUNTS = [0, 1, 2, 5, 19, 20, 2**53, 2**53 + 1]
FACTORS = ["0.9", "1", "1.5", "2", "3", "0.333333", "0.1"]
NUMBER_FEATURES = {"amount": AMOUNTS, "mean_amount": MEANS, "sum_1h": AMOUNTS, "count": COUNTS, "count_1m": COUNTS}
OPERATORS = ["<", "<=", ">", ">=", "=", "!="]


@st.composite
def comparisons(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["constant", "feature", "text", "in", "list"]))
    op = draw(st.sampled_from(OPERATORS))
    if kind == "text":
        return f"country {draw(st.sampled_from(['=', '!=']))} '{draw(st.sampled_from(['FR', 'DE']))}'"
    if kind == "in":
        return f"country {draw(st.sampled_from(['IN', 'NOT IN']))} ('FR', 'GB')"
    if kind == "list":
        return f"country {draw(st.sampled_from(['IN', 'NOT IN']))} LIST watched"
    feature = draw(st.sampled_from(sorted(NUMBER_FEATURES)))
    if kind == "constant":
        return f"{feature} {op} {draw(st.sampled_from([str(v) for v in NUMBER_FEATURES[feature]]))}"
    other = draw(st.sampled_from(["mean_amount", "amount", "count"]))
    return f"{feature} {op} {draw(st.sampled_from(FACTORS))} * {other}"


@st.composite
def conditions(draw: st.DrawFn) -> str:
    terms = draw(st.lists(comparisons(), min_size=1, max_size=3))
    return f" {draw(st.sampled_from(['AND', 'OR']))} ".join(terms)


@st.composite
def rule_sets(draw: st.DrawFn) -> CompiledRuleSet:
    rules = [
        {
            "id": f"r{i}",
            "description": "a rule",
            "when": draw(conditions()),
            "score": draw(st.sampled_from(["0.3", "0.95", "1"])),
            "mode": draw(st.sampled_from(["active", "shadow"])),
            "action": draw(st.sampled_from(["score", "score", "review", "block", "allow"])),
        }
        for i in range(draw(st.integers(1, 6)))
    ]
    return CompiledRuleSet(1, validate_rule_set({"threshold": "0.9", "review_threshold": "0.5", "rules": rules}))


@st.composite
def rows(draw: st.DrawFn) -> Features:
    features: Features = {}
    for name, values in NUMBER_FEATURES.items():
        value = draw(st.sampled_from([None, *values]))
        features[name] = value if value is None or isinstance(value, int) else Decimal(value)
    features["country"] = draw(st.sampled_from([None, "FR", "DE", "GB"]))
    features[list_feature("watched")] = None if features["country"] is None else draw(st.sampled_from([0, 1]))
    return features


@settings(max_examples=300, deadline=None)
@given(
    rules=rule_sets(),
    chunk=st.lists(rows(), min_size=COLUMN_ROWS, max_size=40),
    snoozed_rule=st.sampled_from([None, "r0", "r1"]),
)
def test_columns_decide_as_the_row_engine_does(
    rules: CompiledRuleSet, chunk: list[Features], snoozed_rule: str | None
) -> None:
    # Given a rule set and a chunk with ties, missing values, text values and snoozes,
    items = [(features, "m1", "EUR") for features in chunk]
    snoozed = (
        None
        if snoozed_rule is None
        else [{snoozed_rule: "snoozed for account 1"} if i % 2 else None for i in range(len(chunk))]
    )
    # when the chunk is decided on its columns, then each decision is the row engine's, reasons included.
    by_rows = [rules.decide(f, m, c, None if snoozed is None else snoozed[i]) for i, (f, m, c) in enumerate(items)]
    assert rules.decide_columns(RowColumns(chunk), items, snoozed) == by_rows
    assert rules.decide_batch(items, snoozed) == by_rows


def one_rule(when: str) -> CompiledRuleSet:
    rule = {"id": "r", "description": "r", "when": when, "score": "1"}
    return CompiledRuleSet(1, validate_rule_set({"threshold": "0.5", "rules": [rule]}))


def test_a_tie_in_floating_point_is_decided_exactly() -> None:
    # Given amounts whose float64 values tie with the constant while their exact values do not,
    rules = one_rule("amount > 0.1")
    chunk: list[Features] = [{"amount": Decimal("0.1000000000000000055511151231257827")}] * COLUMN_ROWS
    chunk += [{"amount": Decimal("0.1")}] * COLUMN_ROWS
    items = [(f, None, "EUR") for f in chunk]
    # when decided on columns, then only the amounts exactly above 0.1 fire.
    decisions = rules.decide_columns(RowColumns(chunk), items)
    assert [d.fraud for d in decisions] == [True] * COLUMN_ROWS + [False] * COLUMN_ROWS


def test_a_product_rounded_in_floating_point_is_decided_exactly() -> None:
    # Given 0.3 against 3 × 0.1, equal exactly while 3 × 0.1 is 0.30000000000000004 in float64,
    rules = one_rule("amount >= 3 * mean_amount")
    chunk: list[Features] = [{"amount": Decimal("0.3"), "mean_amount": Decimal("0.1")}] * COLUMN_ROWS
    # when decided on columns, then the rule fires, as it does exactly.
    decisions = rules.decide_columns(RowColumns(chunk), [(f, None, "EUR") for f in chunk])
    assert all(d.fraud for d in decisions)


def test_counts_beyond_float64_s_integers_are_compared_exactly() -> None:
    # Given a count of 2**53 + 1, whose float64 is 2**53,
    rules = one_rule(f"count != {2**53}")
    chunk: list[Features] = [{"count": 2**53 + 1}] * COLUMN_ROWS + [{"count": 2**53}] * COLUMN_ROWS
    # when decided on columns, then only the count that differs from 2**53 fires.
    decisions = rules.decide_columns(RowColumns(chunk), [(f, None, "EUR") for f in chunk])
    assert [d.fraud for d in decisions] == [True] * COLUMN_ROWS + [False] * COLUMN_ROWS


@settings(max_examples=200, deadline=None)
@given(
    probabilities=st.lists(
        st.one_of(
            st.floats(0, 1),
            st.sampled_from([0.0, 1.0, 5e-05, 0.00015, 0.49995, 0.5, 0.99995, 1e-20, 0.12345]),
            st.integers(0, 20_000).map(lambda k: k / 20_000),
        ),
        max_size=30,
    ),
    review=st.sampled_from([None, "0.3"]),
)
def test_a_champion_s_score_and_outcome_where_no_rule_fired_are_the_row_engine_s(
    probabilities: list[float], review: str | None
) -> None:
    # Given probabilities at and near the ties of four-place rounding,
    document = {
        "threshold": "0.9",
        "model_review_threshold": review,
        "rules": [{"id": "r", "description": "r", "when": "amount > 1", "score": "1"}],
    }
    rules = CompiledRuleSet(1, validate_rule_set({k: v for k, v in document.items() if v is not None}))
    detector = ModelDetector(1, rules)
    # when read off in float64, then each is what combined_score and outcome give in Decimal.
    scores, outcomes = detector._quiet(probabilities, 0.7)
    zero = Decimal("0.0000")
    assert [str(s) for s in scores] == [str(combined_score(zero, p)) for p in probabilities]
    assert outcomes == [rules.outcome(zero, frozenset(), p, 0.7) for p in probabilities]
