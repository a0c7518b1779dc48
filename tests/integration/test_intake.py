"""Intake independent of transport: each item validated on its own, and storing per item beside the atomic mode."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.conftest import Database
from tests.integration.helpers import T0, store, tx
from txguard import service
from txguard.intake import Problem, check_items

pytestmark = pytest.mark.integration


def item(tid: int, amount: object = "10.00", account_id: object = 1, ts: int = T0) -> dict[str, object]:
    return {"account_id": account_id, "transaction_id": tid, "timestamp": ts, "amount": amount}


def test_each_item_is_checked_on_its_own_with_its_problems_by_field() -> None:
    checked = check_items([item(1), item(2, amount="-5"), ["not", "an", "object"], item(3, account_id=0)])
    assert [c.index for c in checked] == [0, 1, 2, 3]
    assert checked[0].transaction is not None and checked[0].transaction.amount == Decimal("10.00")
    assert checked[0].problems == ()
    assert checked[1].transaction is None
    assert checked[1].problems == (Problem("amount", "-5", "amount must not be negative"),)
    assert checked[2].transaction is None and checked[2].problems[0].field is None
    assert checked[3].transaction is None and [p.field for p in checked[3].problems] == ["account_id"]


def test_per_item_storing_stores_the_valid_items_and_refuses_the_others_alone(database: Database) -> None:
    store([tx(1, T0, "100.00", tid=77), tx(1, T0, "100.00", tid=78)])
    outcomes = service.store_each(
        [
            item(10),
            item(11, amount="abc"),
            item(77, amount="100.01"),  # stored before with another amount
            item(12),
            item(10, amount="99.00"),  # repeats item 0's id with other content
            item(78, amount="100.00"),  # a stored one again: a duplicate
        ]
    )
    assert [o.index for o in outcomes] == [0, 1, 2, 3, 4, 5]
    assert [o.result.status if o.result else o.code for o in outcomes] == [
        "stored",
        "validation_error",
        "transaction_id_conflict",
        "stored",
        "validation_error",
        "duplicate",
    ]
    assert outcomes[2].problems == (Problem("transaction_id", 77, "differs in amount"),)
    assert outcomes[4].problems == (Problem("transaction_id", 10, "differs in amount"),)
    assert [p.field for p in outcomes[1].problems] == ["amount"]
    stored = database.query("SELECT transaction_id, amount FROM transactions ORDER BY transaction_id")
    assert stored == [
        (10, Decimal("10.0000")),
        (12, Decimal("10.0000")),
        (77, Decimal("100.0000")),
        (78, Decimal("100.0000")),
    ]


def test_per_item_storing_of_only_invalid_items_touches_nothing(database: Database) -> None:
    outcomes = service.store_each([item(1, amount=None), 42])
    assert [o.code for o in outcomes] == ["validation_error", "validation_error"]
    assert database.query("SELECT count(*) FROM transactions") == [(0,)]
