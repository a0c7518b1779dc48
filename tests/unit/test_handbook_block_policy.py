"""tools/handbook_block_policy.py: where a candidate's blocks come from, and the model block level the evidence
allows."""

from __future__ import annotations

import importlib.util
from decimal import Decimal

import pytest

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("handbook_block_policy", ROOT / "tools" / "handbook_block_policy.py")
assert spec is not None and spec.loader is not None
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)

Row = tool.Row


def policy(**changes: object) -> object:
    fields: dict[str, object] = {
        "weights": {"a": Decimal("0.95"), "b": Decimal("0.95"), "c": Decimal("0.5")},
        "block_rules": frozenset(),
        "review_rules": frozenset(),
        "threshold": Decimal("0.96"),
        "review_threshold": Decimal("0.5"),
        "model_review_threshold": 0.15,
    }
    fields.update(changes)
    return tool.Policy(**fields)


def test_the_wilson_lower_bound_matches_the_published_interval() -> None:
    # 9 of 10: the Wilson 95 % interval is 0.596-0.982 (Brown, Cai and DasGupta 2001, Table 1's method)
    assert tool.wilson_lower_bound(9, 10) == pytest.approx(0.5958, abs=1e-4)
    assert tool.wilson_lower_bound(950, 1000) == pytest.approx(0.9346, abs=1e-4)
    assert tool.wilson_lower_bound(0, 0) is None
    # more evidence at the same proportion: a tighter bound
    assert tool.wilson_lower_bound(90, 100) < tool.wilson_lower_bound(900, 1000) < 0.9


def test_a_rule_needs_the_blocks_that_fall_below_the_threshold_without_its_weight() -> None:
    rows = [
        Row(True, frozenset({"a", "b"})),  # 0.9975: each of a and b is needed (0.95 alone)
        Row(False, frozenset({"a", "c"})),  # 0.975: a and c both needed
        Row(True, frozenset({"a", "b", "c"})),  # 0.9988: none needed (any two reach 0.96)
        Row(True, frozenset({"a"})),  # 0.95: not blocked
    ]

    assert tool.needed_blocks(rows, policy()) == {"a": (2, 1), "b": (1, 1), "c": (1, 0)}


def test_the_rule_with_the_weakest_needed_blocks_goes_to_review_first_and_the_rest_are_judged_again() -> None:
    # a's needed blocks are 200 frauds of 230 (bound 0.82), c's 0 of 30: c goes first, and without c the (a, c)
    # rows are no longer blocked, so a needs only the fraudulent (a, b) ones and stays
    rows = [Row(False, frozenset({"a", "c"}))] * 30 + [Row(True, frozenset({"a", "b"}))] * 200

    short = tool.rules_short_of(rows, policy(), 0.9)

    assert [(rule, blocks, frauds) for rule, blocks, frauds, _ in short] == [("c", 30, 0)]
    assert tool.rules_short_of([Row(True, frozenset({"a", "b"}))] * 200, policy(), 0.9) == []


def test_model_levels_count_only_what_the_model_alone_blocks_and_the_rest_in_review() -> None:
    rows = [
        Row(True, frozenset({"a", "b"}), 0.99),  # the rules block it: not the model's
        Row(True, frozenset(), 0.97),
        Row(False, frozenset(), 0.92),
        Row(False, frozenset({"c"}), 0.10),  # review by the rules' score (0.5)
        Row(True, frozenset(), 0.20),  # review by the model's review threshold
        Row(False, frozenset(), 0.05),
    ]

    at = {level.t: level for level in tool.model_levels(rows, policy(), [0.9, 0.95])}

    assert at[0.9] == tool.Level(0.9, 2, 1, 3, 2, 2, 3)
    assert at[0.95] == tool.Level(0.95, 1, 1, 2, 2, 3, 3)


def test_review_and_block_rules_decide_by_themselves() -> None:
    blocking = policy(block_rules=frozenset({"x"}), review_rules=frozenset({"y"}))

    assert tool.rules_block(Row(True, frozenset({"x"})), blocking)
    assert not tool.rules_block(Row(True, frozenset({"y", "a"})), blocking)
    (level,) = tool.model_levels([Row(True, frozenset({"y"}), None)], blocking, [0.9])
    assert (level.blocks, level.review) == (0, 1)


def test_the_chosen_level_is_the_lowest_from_which_every_level_up_holds() -> None:
    def level(t: float, blocks: int, frauds: int) -> object:
        return tool.Level(t, blocks, frauds, blocks, frauds, 0, frauds)

    table = [
        level(0.90, 1000, 960),  # holds on its own, but 0.91 does not: not chosen
        level(0.91, 500, 440),
        level(0.92, 400, 390),
        level(0.93, 300, 295),
        level(0.94, 0, 0),  # blocks nothing: holds
    ]

    assert tool.lowest_level_holding(table, 0.9) == 0.92
    assert tool.lowest_level_holding([level(0.99, 10, 5)], 0.9) is None


CANDIDATE = str(ROOT / "rules" / "handbook-outcomes-lower-bound.json")
WINDOW = ["--from", "2018-04-01", "--to", "2018-06-24", "--cutoff", "2018-07-01"]


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--rules", "/nonexistent/rules.json", *WINDOW], "--rules '/nonexistent/rules.json': cannot read"),
        (["--rules", "{bad}", *WINDOW], "rule set: rules: is required"),
        (["--rules", CANDIDATE, "--from", "2018-06-24", "--to", "2018-04-01", "--cutoff", "2018-07-01"], "--from"),
        (["--rules", CANDIDATE, "--from", "2018-04-01", "--to", "2018-04-01", "--cutoff", "2018-07-01"], "--from"),
        (["--rules", CANDIDATE, "--from", "2018-13-01", "--to", "2018-06-24", "--cutoff", "2018-07-01"], "--from"),
        (["--rules", CANDIDATE, *WINDOW, "--target", "7"], "--target: '7' must be more than 0 and at most 1"),
        (["--rules", CANDIDATE, *WINDOW, "--target", "0"], "--target: '0' must be more than 0 and at most 1"),
        (["--rules", CANDIDATE, *WINDOW, "--model", "x"], "--model"),
    ],
)
def test_bad_input_is_a_usage_error_naming_the_argument(
    argv: list[str], said: str, tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"  # type: ignore[operator]
    bad.write_text('{"threshold": "0.9"}')
    argv = [str(bad) if a == "{bad}" else a for a in argv]
    with pytest.raises(SystemExit) as exited:
        tool.main(argv)
    assert exited.value.code == 2
    assert said in capsys.readouterr().err
