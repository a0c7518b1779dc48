"""Transaction attributes through the API: validated, stored, returned, part of a transaction's content."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Database, load_event
from tests.integration.helpers import apply_rules, rule
from txguard.intake import check_items
from txguard_dev.commands.replay import FIELDS, read_replay
from txguard_dev.local.runner import FunctionRunner, Template

pytestmark = pytest.mark.integration

T = 1714564800000


@pytest.fixture
def runner(database: Database) -> Iterator[FunctionRunner]:
    yield FunctionRunner(Template(ROOT / "template.yaml"), database_url=database.service_url)


def post(runner: FunctionRunner, items: list[dict[str, Any]]) -> tuple[int, Any]:
    result = runner.call(
        "IngestFunction", load_event("store_data.json") | {"body": json.dumps({"transactions": items})}
    )
    assert not result.failed, result.output
    response = json.loads(result.output)
    return response["statusCode"], json.loads(response["body"])


def item(tid: int, **attributes: Any) -> dict[str, Any]:
    return {"account_id": 5, "transaction_id": tid, "timestamp": T + tid, "amount": "10.00"} | attributes


FULL = {
    "channel": "ecommerce",
    "country": "fr",
    "merchant_category": 742,
    "card_id": "tok_card_1",
    "ip_address": "2001:DB8::0001",
    "device_id": "dev-1",
    "metadata": {"campaign": "spring", "note": "é"},
}
CANONICAL = FULL | {"country": "FR", "merchant_category": "0742", "ip_address": "2001:db8::1"}
ABSENT = dict.fromkeys(CANONICAL)


def test_attributes_are_stored_in_canonical_form_and_returned_by_store_and_is_fraud(
    runner: FunctionRunner, database: Database
) -> None:
    status, body = post(runner, [item(1, **FULL), item(2)])
    assert status == 201
    first, second = (r["transaction"] for r in body["results"])
    assert {k: first[k] for k in CANONICAL} == CANONICAL
    assert {k: second[k] for k in CANONICAL} == ABSENT
    stored = database.query(
        "SELECT channel, country, merchant_category, card_id, ip_address, device_id, metadata FROM transactions "
        "ORDER BY transaction_id"
    )
    assert stored == [tuple(CANONICAL.values()), (None,) * 7]

    # Read back through the list endpoint: the same canonical values.
    listing = load_event("store_data_list.json")
    listing["queryStringParameters"] = {"account_id": "5"}
    listing["multiValueQueryStringParameters"] = {"account_id": ["5"]}
    result = json.loads(json.loads(runner.call("IngestFunction", listing).output)["body"])
    assert [{k: t[k] for k in CANONICAL} for t in result["transactions"]] == [CANONICAL, ABSENT]


def test_is_fraud_returns_the_attributes_of_a_flagged_transaction(runner: FunctionRunner, database: Database) -> None:
    apply_rules(database, [rule("big", "amount > 5")])
    assert post(runner, [item(1, **FULL)])[0] == 201
    event = load_event("is_fraud.json") | {"path": "/is_fraud/5", "pathParameters": {"account": "5"}}
    (flagged,) = json.loads(json.loads(runner.call("DetectFunction", event).output)["body"])["events"]
    assert {k: flagged[k] for k in CANONICAL} == CANONICAL


def test_a_retry_with_the_same_attributes_is_a_duplicate_and_with_another_a_conflict(
    runner: FunctionRunner, database: Database
) -> None:
    assert post(runner, [item(1, **FULL)])[0] == 201
    status, body = post(runner, [item(1, **(FULL | {"country": "FR", "merchant_category": "0742"}))])
    assert status == 201 and body["results"][0]["status"] == "duplicate"
    status, body = post(runner, [item(1, **(FULL | {"device_id": "dev-2"}))])
    assert status == 409
    assert body["error"]["details"][0]["reason"] == "differs in device_id"
    status, body = post(runner, [item(1, **(FULL | {"metadata": {"campaign": "autumn", "note": "é"}}))])
    assert status == 409 and body["error"]["details"][0]["reason"] == "differs in metadata"
    assert database.query("SELECT count(*) FROM transactions") == [(1,)]


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("country", "XX", "is not an ISO 3166-1 alpha-2 country code"),
        ("country", "FRA", "is not an ISO 3166-1 alpha-2 country code"),
        ("merchant_category", 10000, "is out of range: an ISO 18245 merchant category code is 0000-9999"),
        ("merchant_category", "74a", "must be an ISO 18245 merchant category code: four digits, 0000-9999"),
        ("channel", "pigeon", "must be one of"),
        ("card_id", "4111111111111111", "looks like a card number"),
        ("ip_address", "300.1.1.1", "is not an IPv4 or IPv6 address"),
        ("device_id", "a b", "must be 1-64 letters"),
        ("metadata", {f"k{i}": "v" for i in range(21)}, "has 21 keys, at most 20"),
        ("metadata", {"note": "x" * 257}, "longer than 256 characters"),
        ("metadata", {"Bad Key": "x"}, "must be 1-40 lower-case letters"),
        ("metadata", {"n": 1}, "value of 'n' must be a string"),
        ("browser", "firefox", "unknown field 'browser'"),
    ],
)
def test_a_bad_attribute_refuses_the_whole_batch_naming_field_value_and_reason(
    runner: FunctionRunner, database: Database, field: str, value: Any, reason: str
) -> None:
    status, body = post(runner, [item(1), item(2, **{field: value})])
    assert status == 422
    (detail,) = body["error"]["details"]
    assert detail["index"] == 1 and detail["field"] == field and reason in detail["reason"]
    if field != "metadata":
        assert detail["value"] == value
    assert database.query("SELECT count(*) FROM transactions") == [(0,)]


def test_stream_records_read_attributes_with_the_same_rules() -> None:
    valid, invalid = check_items([item(1, **FULL), item(2, country="ZZ")])
    assert valid.transaction is not None and valid.transaction.country == "FR"
    assert valid.transaction.merchant_category == "0742" and valid.transaction.metadata == FULL["metadata"]
    assert invalid.transaction is None and [(p.field, p.value) for p in invalid.problems] == [("country", "ZZ")]


def test_replay_reads_attributes_from_mapped_columns(tmp_path: Path) -> None:
    assert "country" in FIELDS and "metadata" in FIELDS
    path = tmp_path / "rows.csv"
    path.write_text(
        "account_id,transaction_id,ts,amount,pays,mcc,meta\n"
        f'1,1,{T},1.00,de,5411,"{{""campaign"": ""x""}}"\n'
        f"1,2,{T + 1},1.00,,,\n"
    )
    mapping_args = ["timestamp=ts", "country=pays", "merchant_category=mcc", "metadata=meta"]
    from argparse import Namespace

    from txguard_dev.commands.replay import cells

    mapping = cells(Namespace(preset=None, map=mapping_args))
    replay = read_replay(path, mapping, "chargeback", 0, False, None, None)
    first, second = replay.transactions
    assert (first.country, first.merchant_category, first.metadata) == ("DE", "5411", {"campaign": "x"})
    assert second.attributes() == (None,) * 7
    path.write_text(f"account_id,transaction_id,ts,amount,pays\n1,1,{T},1.00,QQ\n")
    with pytest.raises(ValueError, match="country = 'QQ'"):
        read_replay(path, mapping, "chargeback", 0, False, None, None)
