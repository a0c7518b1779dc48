"""The outward JSON shapes (txguard.presenters), on their own."""

from __future__ import annotations

from decimal import Decimal

import orjson

from txguard.domain import ATTRIBUTES, Decision, Reason, StoreResult, Transaction
from txguard.presenters import store_decisions_json, store_results_json, transaction_json

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
