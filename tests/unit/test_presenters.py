"""The outward JSON shapes (txguard.presenters), on their own."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txguard.domain import ATTRIBUTES, Decision, Reason, StoreResult, Transaction
from txguard.presenters import (
    decision_json,
    decision_text,
    result_members,
    store_decisions_json,
    store_results_json,
    store_results_text,
    transaction_json,
)

FULL = Transaction(
    9, 42, 1_714_564_800_000, Decimal("12.50"), "EUR", "m1", "moto", "FR", "0742", "c1", "::1", "d1", {"a": "b"}
)


def test_a_transaction_shows_every_attribute_by_name_in_order() -> None:
    shown = transaction_json(FULL)
    assert list(shown)[6:] == list(ATTRIBUTES)
    assert [shown[name] for name in ATTRIBUTES] == list(FULL.attributes())
    assert transaction_json(Transaction(1, 2, 3, Decimal("1.00"), "EUR"))["metadata"] is None


def test_the_compact_form_holds_each_result_s_id_status_outcome_and_score_as_the_full_form_does() -> None:
    flagged = Decision(True, Decimal("0.9000"), (Reason("r1", "active", Decimal("0.9"), 'said "no"'),), 3)
    allowed = Decision(False, Decimal("0.0000"), (), 3)
    results = [
        StoreResult(FULL, "stored", flagged),
        StoreResult(FULL._replace(transaction_id=-(2**63)), "duplicate", allowed),
        StoreResult(FULL._replace(transaction_id=2**63 - 1), "stored", allowed),
    ]
    compact = orjson.loads(orjson.dumps({"results": store_decisions_json(results)}))["results"]
    full = orjson.loads(orjson.dumps({"results": store_results_json(results)}))["results"]
    assert compact == [
        {
            "transaction_id": r["transaction_id"],
            "status": r["status"],
            "outcome": r["decision"]["outcome"],
            "score": r["decision"]["score"],
        }
        for r in full
    ]
    assert compact[0] == {"transaction_id": 9, "status": "stored", "outcome": "block", "score": "0.9000"}


# The text written for a batch's answer (store_results_text, result_members, decision_text) is the bytes orjson
# writes for the dicts (store_results_json, decision_json), whatever the results hold.
_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
_FLOAT = st.floats(allow_nan=True, allow_infinity=True) | st.floats(0, 1)
_REASONS = st.lists(
    st.builds(
        Reason,
        st.sampled_from(["r1", 'q"uote', "é"]),
        st.sampled_from(["active", "shadow", "snoozed"]),
        st.decimals(0, 100, places=2),
        st.sampled_from(['amount 12.00 is ≥ 3 × the mean "x"', "line\nbreak\t\\", "\U0001f4b3 card", ""]) | _TEXT,
    ),
    max_size=3,
).map(tuple)
_DECISIONS = st.builds(
    lambda fraud, review, **fields: Decision(
        fraud, **fields, outcome="block" if fraud else ("review" if review else "allow")
    ),
    st.booleans(),
    st.booleans(),
    score=st.decimals(0, 1, places=4),
    reasons=_REASONS,
    rule_set_version=st.integers(1, 2**31),
    detector_version=st.none() | st.integers(1, 2**31),
    model_version=st.none() | st.integers(1, 100),
    model_score=st.none() | _FLOAT,
    model_threshold=st.none() | _FLOAT,
    model_fallback=st.none() | _TEXT,
    shadow_scores=st.none() | st.dictionaries(st.integers(1, 30), _FLOAT, max_size=3),
)
_OPTIONAL = st.none() | st.sampled_from(["web", "FR", "0742", "c1", "::1", 'd"1\\']) | _TEXT
_TRANSACTIONS = st.builds(
    Transaction,
    st.integers(-(2**63), 2**63 - 1),
    st.integers(1, 2**63 - 1),
    st.integers(0, 2**53),
    st.decimals(0, 10**9, places=4) | st.decimals(0, 10**6, places=0) | st.decimals(0, 10**9, allow_nan=False),
    st.sampled_from(["EUR", "JPY", "BHD", "CLF", "XXX"]),
    *[_OPTIONAL] * 7,
    st.none() | st.dictionaries(_TEXT, _TEXT, max_size=3),
)


@given(
    st.lists(st.tuples(_TRANSACTIONS, st.sampled_from(["stored", "duplicate"]), _DECISIONS), max_size=8),
    st.lists(st.integers(0, 7), max_size=8),
)
@settings(max_examples=300, deadline=None)
def test_the_full_form_as_text_is_byte_for_byte_the_dicts_as_orjson_writes_them(
    rows: list[tuple[Transaction, Any, Decision]], shared: list[int]
) -> None:
    results = [StoreResult(t, status, d) for t, status, d in rows]
    # Rows that share one decision object, and rows of the same transaction and decision (a retried duplicate).
    results += [StoreResult(results[i].transaction, "duplicate", results[i].decision) for i in shared if i < len(rows)]
    results += [StoreResult(r.transaction._replace(transaction_id=7), "stored", results[0].decision) for r in results]
    items = store_results_json(results)
    assert orjson.dumps(store_results_text(results)) == orjson.dumps(items)
    assert [orjson.dumps(orjson.Fragment("{" + m + "}")) for m in result_members(results)] == [
        orjson.dumps(item) for item in items
    ]
    for r in results:
        assert decision_text(r.decision) == orjson.dumps(decision_json(r.decision)).decode()


def test_the_full_form_as_text_of_rows_without_attributes_and_of_a_decision_of_rules_alone() -> None:
    nothing = Decision(False, Decimal("0.0000"), (), 3, 12)
    flagged = Decision(
        True,
        Decimal("0.9100"),
        (Reason("r1", "active", Decimal("0.9"), 'said "no" — café'),),
        3,
        12,
        4,
        1e-07,
        0.5,
        None,
        {2: 0.25, 1: 1.0},
    )
    results = [
        StoreResult(Transaction(1, 2, 3, Decimal("1.005"), "EUR"), "stored", nothing),
        StoreResult(Transaction(2, 2, 4, Decimal("7"), "BHD", "m"), "duplicate", flagged),
        StoreResult(FULL, "stored", nothing),
        StoreResult(FULL._replace(metadata={}), "stored", Decision(False, Decimal("0.1000"), (), 3, None, None)),
    ]
    text = orjson.dumps(store_results_text(results))
    assert text == orjson.dumps(store_results_json(results))
    shown = orjson.loads(text)
    assert shown[0]["transaction"]["amount"] == "1.01" and shown[1]["decision"]["model_score"] == 1e-07
    assert shown[1]["decision"]["shadow_scores"] == {"1": 1.0, "2": 0.25}
    assert orjson.dumps(store_results_text([])) == orjson.dumps(store_results_json([])) == b"[]"
    assert orjson.dumps(store_decisions_json([])) == b"[]"


@pytest.mark.parametrize("currency", ["JPY", "EUR", "BHD", "CLF", "XXX"])
@pytest.mark.parametrize(
    "amount",
    [
        "0",
        "7",
        "-0",
        "0.00",
        "-0.00",
        "12.5",
        "12.50",
        "12.505",
        "0.125",
        "1.0000",
        "100.00000",
        "1E+2",
        "1.20E+3",
        "1.2E+5",
        "0E-8",
        "1.5E-7",
        "0.0000001",
        "Infinity",
        "NaN",
    ],
)
def test_an_amount_in_the_full_form_as_text_is_money_s_text(amount: str, currency: str) -> None:
    results = [
        StoreResult(Transaction(1, 2, 3, Decimal(amount), currency), "stored", Decision(False, Decimal(0), (), 1))
    ]
    try:
        expected = orjson.dumps(store_results_json(results))
    except Exception as refused:  # money() refuses an infinite amount: so must the text
        with pytest.raises(type(refused)):
            store_results_text(results)
        return
    assert orjson.dumps(store_results_text(results)) == expected
