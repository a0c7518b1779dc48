"""A batch read as columns (intake.batch_transactions) against TransactionIn item by item: the same transactions for
every batch the columns take, and no batch taken that TransactionIn refuses."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from txguard.domain import Transaction
from txguard.intake import TransactionIn, batch_transactions

NOW_MS = int(time.time() * 1000)
# Beyond the accepted future: named in the tests' ids by what it is, since its value differs from run to run (and
# between the workers of one run, which must collect the same tests).
TOO_FAR_AHEAD = NOW_MS + 10**10
ABSENT = object()

# Each field's values: plain ones the columns take, and the edge cases that TransactionIn trims, converts or refuses.
VALUES: dict[str, list[Any]] = {
    "account_id": [1, 42, 2**63 - 1, 0, -1, 2**63, True, 1.0, Decimal("1"), "1", None, ABSENT],
    "transaction_id": [7, -(2**63), 2**63 - 1, 2**63, False, "7", Decimal("7.0"), None, ABSENT],
    "timestamp": [
        1_714_564_800_000,
        946_684_800_000,
        946_684_799_999,
        TOO_FAR_AHEAD,
        "1714564800000",
        "2024-05-01T12:00:00.123Z",
        "2024-05-01T12:00:00.1234Z",
        " 1714564800000",
        True,
        None,
        ABSENT,
    ],
    "amount": [
        "12.50",
        "12.5",
        "12.505",
        "0",
        "-0.00",
        "-1",
        "1e2",
        "1E-2",
        "1e1000000",
        "1000000000000",
        "1000000000000.01",
        " 1",
        "1\n",
        "1\n2",
        "NaN",
        "١",
        "1_000",
        12,
        0,
        -3,
        Decimal("9.99"),
        Decimal("0.001"),
        Decimal("-0"),
        True,
        None,
        [],
        ABSENT,
    ],
    "currency": ["EUR", "usd", "JPY", "BHD", " EUR", "XXX", "uſd", 978, None, {}, ABSENT],
    "merchant_id": ["m1", "m-1.a:b_c", "m1\n", " m1", "a" * 65, "-m", 42, -5, True, None, "", ABSENT],
    "channel": ["ecommerce", "moto", "Ecommerce", " atm", 1, None, ABSENT],
    "country": ["FR", "fr", " de", "XK", None, ABSENT],
    "merchant_category": ["5411", "742", 742, " 742", 10000, True, None, ABSENT],
    "card_id": ["tok_1", "4111111111111111", "tok 1", 12, None, ABSENT],
    "ip_address": ["192.0.2.7", "2001:DB8::1", "::ffff:192.0.2.7", " 192.0.2.7", "fe80::1%eth0", "x", None, ABSENT],
    "device_id": ["dev.1", " dev", None, ABSENT],
    "metadata": [{"a": "x"}, {"a": " x "}, {"A": "x"}, {"a": 1}, {}, "x", None, ABSENT],
    "extra": [1, ABSENT],
}
PLAIN = {
    "account_id": 1,
    "transaction_id": 7,
    "timestamp": 1_714_564_800_000,
    "amount": "12.50",
}


def item_strategy(edge_rate: float) -> st.SearchStrategy[dict[str, Any]]:
    def build(choices: dict[str, Any]) -> dict[str, Any]:
        return {name: value for name, value in choices.items() if value is not ABSENT}

    fields = {
        name: st.one_of(
            st.just(PLAIN.get(name, ABSENT)),
            st.sampled_from(values),
        )
        if edge_rate < 1
        else st.sampled_from(values)
        for name, values in VALUES.items()
    }
    return st.fixed_dictionaries(fields).map(build)


def item_by_item(items: list[Any]) -> list[Transaction] | None:
    try:
        return [TransactionIn.model_validate(item).transaction() for item in items]
    except ValidationError:
        return None


def exactly(transactions: list[Transaction]) -> list[tuple[Any, ...]]:
    """Each transaction with every value's type and each amount's digits and exponent, which == would not see."""
    return [
        tuple((type(value), value.as_tuple() if isinstance(value, Decimal) else value) for value in t)
        for t in transactions
    ]


def assert_same_as_item_by_item(items: list[Any]) -> None:
    expected = item_by_item(items)
    got = batch_transactions({"transactions": items})
    if expected is None:
        assert got is None, "the columns took a batch that TransactionIn refuses"
    elif got is not None:
        assert exactly(got) == exactly(expected)


@settings(max_examples=400, deadline=None)
@given(st.lists(item_strategy(edge_rate=0.5), min_size=1, max_size=6))
def test_columns_give_what_transactionin_gives_or_leave_it_the_batch(items: list[dict[str, Any]]) -> None:
    assert_same_as_item_by_item(items)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param(name, value, id=f"{name}-now+10^10ms") if value is TOO_FAR_AHEAD else (name, value)
        for name, values in VALUES.items()
        for value in values
    ],
)
def test_each_value_in_a_plain_batch(name: str, value: Any) -> None:
    edited = {k: v for k, v in {**PLAIN, name: value}.items() if v is not ABSENT}
    assert_same_as_item_by_item([dict(PLAIN), edited])


def test_a_plain_batch_is_taken_as_columns() -> None:
    items = [
        {**PLAIN, "transaction_id": i, "merchant_id": f"m{i % 3}", "country": "fr", "metadata": {"k": "v"}}
        for i in range(50)
    ]
    got = batch_transactions({"transactions": items})
    assert got is not None
    assert exactly(got) == exactly(item_by_item(items) or [])
    assert got[0].amount.as_tuple() == Decimal("12.50").as_tuple() and got[0].country == "FR"


def test_one_transaction_is_a_batch_of_one() -> None:
    got = batch_transactions(dict(PLAIN))
    assert got is not None and exactly(got) == exactly(item_by_item([PLAIN]) or [])


def test_an_envelope_that_is_not_plain_is_left_to_transactionin() -> None:
    for document in (
        {"transactions": []},
        {"transactions": [PLAIN], "extra": 1},
        {"transactions": PLAIN},
        {"transactions": [PLAIN, [PLAIN]]},
        [PLAIN],
        "x",
    ):
        assert batch_transactions(document) is None


def test_a_validated_body_is_shown_by_its_size_not_its_transactions() -> None:
    """Powertools formats a route's arguments into a debug message on every request, whatever the log level."""
    from pydantic import TypeAdapter

    from txguard.api.ingest_routes import StoreBody

    body = TypeAdapter(StoreBody).validate_python({"transactions": [dict(PLAIN)] * 3})
    assert len(body.transactions) == 3 and repr(body) == "StoreBody(<3 transactions>)"
