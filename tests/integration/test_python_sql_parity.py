"""The Python engine and the SQL function detect_fraud flag exactly the same transactions with the same rules.

Random histories (Hypothesis) with bursts, equal timestamps, several accounts sharing merchants, and random
rule sets drawn from the grammar; stored in random batches and, separately, in shuffled order.
"""

from __future__ import annotations

import itertools
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Database
from tests.integration.helpers import T0, apply_rules, python_decisions, recompute, sql_decisions, store
from txguard.detection import Transaction
from txguard.features import FEATURES

pytestmark = pytest.mark.integration

_example = itertools.count(1)

gaps = st.sampled_from([0, 1, 400, 1_999, 2_000, 59_999, 60_000, 61_000, 3_599_999, 3_600_000, 86_400_000, 90_000_000])
amounts = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("5000"), places=2)
comparable = sorted(set(FEATURES) - {"amount"})
operators = st.sampled_from(["<", "<=", ">", ">=", "=", "!="])
constants = st.sampled_from(["0", "1", "2", "5", "10", "60", "100", "1000"])
factors = st.sampled_from(["0.5", "0.9", "1", "2", "3"])


@st.composite
def comparisons(draw: st.DrawFn) -> str:
    left = draw(st.sampled_from(["amount", *comparable]))
    if draw(st.booleans()):
        return f"{left} {draw(operators)} {draw(constants)}"
    return f"{left} {draw(operators)} {draw(factors)} * {draw(st.sampled_from(comparable))}"


@st.composite
def conditions(draw: st.DrawFn) -> str:
    parts = draw(st.lists(comparisons(), min_size=1, max_size=3))
    joiners = [draw(st.sampled_from([" AND ", " OR "])) for _ in parts[1:]]
    return parts[0] + "".join(j + p for j, p in zip(joiners, parts[1:], strict=True))


@st.composite
def rule_sets(draw: st.DrawFn) -> list[dict[str, object]]:
    rules = []
    for index in range(draw(st.integers(1, 4))):
        rules.append(
            {
                "id": f"r{index}",
                "description": "generated",
                "when": draw(conditions()),
                "score": draw(st.sampled_from(["0.2", "0.5", "0.75", "1"])),
                "mode": draw(st.sampled_from(["active", "active", "shadow"])),
                "enabled": draw(st.booleans()) or index == 0,
            }
        )
    return rules


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[int, int, Decimal, str | None]]:
    """(account slot 0-2, timestamp, amount, merchant slot) in time order."""
    ts = T0
    rows = []
    for _ in range(draw(st.integers(1, 30))):
        ts += draw(gaps)
        merchant = draw(st.sampled_from([None, "a", "b"]))
        rows.append((draw(st.integers(0, 2)), ts, draw(amounts), merchant))
    return rows


def materialise(rows: list[tuple[int, int, Decimal, str | None]]) -> tuple[list[Transaction], list[int]]:
    example = next(_example)  # fresh accounts and merchants per example: no clean-up needed between them
    accounts = [example * 10 + slot for slot in range(3)]
    batch = [
        Transaction(example * 1000 + i, accounts[slot], ts, amount, "EUR", None if m is None else f"m{example}{m}")
        for i, (slot, ts, amount, m) in enumerate(rows)
    ]
    return batch, accounts


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=histories(), rules=rule_sets(), cuts=st.lists(st.integers(1, 30), max_size=4))
def test_stored_decisions_python_and_sql_agree_for_histories_stored_in_order(
    database: Database,
    rows: list[tuple[int, int, Decimal, str | None]],
    rules: list[dict[str, object]],
    cuts: list[int],
) -> None:
    apply_rules(database, rules, threshold="0.5")
    batch, accounts = materialise(rows)
    stored = {}
    start = 0
    for cut in [*sorted(cuts), len(batch)]:
        for result in store(batch[start:cut]) if batch[start:cut] else []:
            stored[result.transaction.transaction_id] = result.decision
        start = max(start, cut)
    for account in accounts:
        in_python = python_decisions(recompute(account))
        in_sql = sql_decisions(database, account)
        assert in_python == in_sql
        for tid, (fraud, score, active, _shadow) in in_python.items():
            decision = stored[tid]
            assert (decision.fraud, decision.score) == (fraud, score)
            assert sorted(r.rule_id for r in decision.reasons if r.mode == "active") == active


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=histories(), rules=rule_sets(), order=st.randoms(use_true_random=False))
def test_python_and_sql_agree_whatever_order_the_history_arrived_in(
    database: Database,
    rows: list[tuple[int, int, Decimal, str | None]],
    rules: list[dict[str, object]],
    order: object,
) -> None:
    apply_rules(database, rules)
    batch, accounts = materialise(rows)
    order.shuffle(batch)  # type: ignore[attr-defined]
    for start in range(0, len(batch), 4):
        store(batch[start : start + 4])
    for account in accounts:
        assert python_decisions(recompute(account)) == sql_decisions(database, account)
