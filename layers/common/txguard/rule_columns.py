"""Where a rule set is evaluated on a whole chunk of transactions at once: its conditions as vectorised predicates
over feature columns (NumPy), exact, with the rule engine (rule_engine) building every explanation.

A chunk's rows are split in two by the predicates:
- the rows where no enabled rule fires all get the rule set's shared "nothing found" decision, exactly the one
  `CompiledRuleSet.decide` returns for them, without any per-row work;
- every other row (a rule fires, shadow rules included, or a comparison is too close to call in floating point)
  is explained by the rule engine (CompiledRuleSet.decide_columns), a rule at a time over the rows where it may
  fire: it reads each comparison's sure answer here (rules_to_explain's `leaves`), and compares the exact values
  itself where a comparison is too close to call; its reasons, snoozes, score (1 − Π(1 − weight), four places,
  half up) and outcome are `decide`'s, bit for bit.

**Exactness.** Features are exact decimals (or ints); a predicate compares their float64 values:
- a comparison with a constant is exact when every value of the column and the constant are exactly
  representable as float64 (ints below 2**53: counts, flags, hours; constants such as 5, 0.5 or 1.5);
- otherwise a comparison whose two sides differ by more than RELATIVE_MARGIN of the larger magnitude is decided
  in float64, and one that does not is "too close to call" and goes to the rule engine. Why the margin is safe:
  every float64 conversion of a feature, constant or factor is correctly rounded (relative error ≤ 2**-53: the
  values are far from the subnormal range, as rule_language bounds constants to 18 integer digits and 40 places
  and features are amounts ≤ 10**12 with 4 places, their sums, six-place means and ratios, and 0–1 scores, so
  every nonzero magnitude lies within 1e-40 … 1e40), and factor × feature adds one more rounding: each side is
  within 3 × 2**-53 ≈ 3.4e-16 of its exact value, relatively. Two sides further apart than 1e-12 of the larger
  one therefore compare the same way exactly; equal ones (zero included) are always sent to the rule engine.
- a missing value (None, NaN in a column) satisfies no comparison, `!=` included, as in the row engine and SQL;
- text comparisons (=, !=, IN, NOT IN) and IN LIST are evaluated on the text values themselves, exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Protocol

import numpy as np
import numpy.typing as npt

from txguard.features import list_feature
from txguard.rule_language import AllOf, AnyOf, Comparison, Condition

# See the module docstring: 3000 times the largest relative error of a side computed in float64.
RELATIVE_MARGIN = 1e-12

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]

_COMPARE: dict[str, Callable[[FloatArray, FloatArray | float], BoolArray]] = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "=": np.equal,
    "!=": np.not_equal,
}


class ColumnSource(Protocol):
    """What the predicates read of a chunk of `size` rows (feature_columns.FeatureColumns, RowColumns)."""

    size: int

    def number(self, name: str) -> tuple[FloatArray, bool]:
        """The feature `name` as float64 (NaN where missing) and whether every present value is exactly its
        float64."""
        ...

    def text(self, name: str) -> Sequence[str | int | None]:
        """The values of a text field (or of a list's membership feature: 1, 0, None), one per row."""
        ...


# A compiled predicate gives, per row, (surely holds, surely does not hold); neither means too close to call.
Predicate = Callable[[ColumnSource], tuple[BoolArray, BoolArray]]

# Each comparison's (surely holds, surely does not hold) over a chunk, by the comparison's id(): what the rule
# engine reads to explain the rows column-wise (exact for text comparisons and where "surely" holds).
Leaves = dict[int, tuple[BoolArray, BoolArray]]


class RulePredicates:
    """A rule set's enabled rules compiled into vectorised predicates (rule_engine.CompiledRuleSet's `_rules`)."""

    def __init__(self, conditions: Sequence[Condition]) -> None:
        self._predicates = tuple(_compile(condition) for condition in conditions)

    def rules_to_explain(
        self, source: ColumnSource, leaves: Leaves | None = None
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int64]]:
        """The rows where some rule may fire (it fires, or a comparison is too close to call), which the rule engine
        must explain, and for each the bit mask of those rules (bit j: the j-th predicate). No rule fires on the
        other rows. At most 63 rules (rule_language allows 50). `leaves`, when given, receives each comparison's
        (surely holds, surely does not hold), each a bool array of `source.size`, by id(comparison)."""
        masks = np.zeros(source.size, dtype=np.int64)
        for j, predicate in enumerate(self._predicates):
            _, fails = predicate(source, leaves)
            masks |= (~fails).astype(np.int64) << j
        rows = np.flatnonzero(masks)
        return rows, masks[rows]


# A condition's predicate over a chunk, writing each of its comparisons' results into the Leaves given (if any).
Recording = Callable[[ColumnSource, Leaves | None], tuple[BoolArray, BoolArray]]


def _compile(condition: Condition) -> Recording:
    if isinstance(condition, AllOf):
        parts = [_compile(c) for c in condition.all]

        def all_hold(source: ColumnSource, leaves: Leaves | None) -> tuple[BoolArray, BoolArray]:
            holds, fails = parts[0](source, leaves)
            for part in parts[1:]:
                h, f = part(source, leaves)
                holds, fails = holds & h, fails | f
            return holds, fails

        return all_hold
    if isinstance(condition, AnyOf):
        choices = [_compile(c) for c in condition.any]

        def any_holds(source: ColumnSource, leaves: Leaves | None) -> tuple[BoolArray, BoolArray]:
            holds, fails = choices[0](source, leaves)
            for choice in choices[1:]:
                h, f = choice(source, leaves)
                holds, fails = holds | h, fails & f
            return holds, fails

        return any_holds
    predicate = _compile_text(condition) if condition.on_text else _compile_number(condition)
    key = id(condition)

    def comparison(source: ColumnSource, leaves: Leaves | None) -> tuple[BoolArray, BoolArray]:
        found = predicate(source)
        if leaves is not None:
            leaves[key] = found
        return found

    return comparison


def _compile_text(comparison: Comparison) -> Predicate:
    """Exactly rule_engine._compile_text: false without a value, whatever the operator."""
    if comparison.list_name is not None:
        key, member = list_feature(comparison.list_name), comparison.op == "in list"

        def in_list(source: ColumnSource) -> tuple[BoolArray, BoolArray]:
            found = source.text(key)
            holds = np.fromiter((v is not None and bool(v) == member for v in found), bool, source.size)
            return holds, ~holds

        return in_list
    field = comparison.feature
    if comparison.values is not None:
        values, member = frozenset(comparison.values), comparison.op == "in"

        def among(source: ColumnSource) -> tuple[BoolArray, BoolArray]:
            found = source.text(field)
            holds = np.fromiter((v is not None and (v in values) == member for v in found), bool, source.size)
            return holds, ~holds

        return among
    text, equal = comparison.text, comparison.op == "="

    def matches(source: ColumnSource) -> tuple[BoolArray, BoolArray]:
        found = source.text(field)
        holds = np.fromiter((v is not None and (v == text) == equal for v in found), bool, source.size)
        return holds, ~holds

    return matches


def _is_float_exact(value: Decimal) -> bool:
    # Decimal(float) converts exactly: equal only when the constant is a float64 as it is.
    return Decimal(float(value)) == value


def _compile_number(comparison: Comparison) -> Predicate:
    compare = _COMPARE[comparison.op]
    feature, other = comparison.feature, comparison.other
    if other is None:
        assert comparison.value is not None
        constant = float(comparison.value)
        constant_exact = _is_float_exact(comparison.value)

        def with_constant(source: ColumnSource) -> tuple[BoolArray, BoolArray]:
            x, x_exact = source.number(feature)
            present = ~np.isnan(x)
            result = compare(x, constant)
            if x_exact and constant_exact:
                holds = result & present
                return holds, ~holds
            sure = np.abs(x - constant) > RELATIVE_MARGIN * np.maximum(np.abs(x), abs(constant))
            return result & sure, (sure & ~result) | ~present

        return with_constant
    factor = float(comparison.factor) if comparison.factor is not None else 1.0

    def with_feature(source: ColumnSource) -> tuple[BoolArray, BoolArray]:
        x, _ = source.number(feature)
        y, _ = source.number(other)
        right = factor * y
        present = ~np.isnan(x) & ~np.isnan(right)
        result = compare(x, right)
        sure = np.abs(x - right) > RELATIVE_MARGIN * np.maximum(np.abs(x), np.abs(right))
        return result & sure, (sure & ~result) | ~present

    return with_feature
