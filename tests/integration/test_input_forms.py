"""One form for one meaning, on every path: empty metadata is no metadata (by item and by column), a time window's
bound is read by one parser (every CLI command, every HTTP query), an empty query value is refused on every
route by one check."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.conftest import Database, load_event, project_template
from txguard.intake import batch_transactions, check_items
from txguard_dev.local.runner import FunctionRunner

pytestmark = pytest.mark.integration

NOW_MS = int(time.time() * 1000)
MAY_1_2024_MS = 1_714_521_600_000  # 2024-05-01T00:00:00Z


@pytest.fixture
def runner(database: Database) -> FunctionRunner:
    return FunctionRunner(project_template(), database_url=database.service_url)


def call(runner: FunctionRunner, function: str, event: dict[str, Any]) -> dict[str, Any]:
    result = runner.call(function, event)
    assert not result.failed, result.output
    response: dict[str, Any] = json.loads(result.output)
    response["json"] = json.loads(response["body"])
    return response


def with_query(event: dict[str, Any], query: dict[str, str]) -> dict[str, Any]:
    event["queryStringParameters"] = query or None
    event["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()} or None
    return event


def post(runner: FunctionRunner, body: Any, query: dict[str, str] | None = None) -> dict[str, Any]:
    event = load_event("store_data.json")
    event["body"] = json.dumps(body)
    return call(runner, "IngestFunction", with_query(event, query or {}))


def transaction(tid: int, **fields: Any) -> dict[str, Any]:
    return {"account_id": 1, "transaction_id": tid, "timestamp": NOW_MS - 60_000, "amount": "10.50", **fields}


# --- 1. empty metadata is no metadata -----------------------------------------------------------------------------


def test_empty_metadata_reads_as_absent_by_item_and_by_column() -> None:
    empty, absent = transaction(1, metadata={}), transaction(1)
    (by_item,) = check_items([empty])
    assert by_item.transaction is not None and by_item.transaction.metadata is None
    assert by_item.transaction == check_items([absent])[0].transaction
    assert batch_transactions(empty) == batch_transactions(absent) == [by_item.transaction]
    mixed = batch_transactions({"transactions": [empty | {"transaction_id": 2}, transaction(3, metadata={"k": "v"})]})
    assert mixed is not None and [t.metadata for t in mixed] == [None, {"k": "v"}]


@pytest.mark.parametrize("atomic", ["true", "false"], ids=["columns", "per-item"])
@pytest.mark.parametrize("first_empty", [True, False], ids=["empty-then-absent", "absent-then-empty"])
def test_a_retry_with_or_without_empty_metadata_is_a_duplicate_stored_once(
    runner: FunctionRunner, database: Database, atomic: str, first_empty: bool
) -> None:
    empty, absent = transaction(5, metadata={}), transaction(5)
    first, retry = (empty, absent) if first_empty else (absent, empty)
    assert post(runner, first, {"atomic": atomic})["statusCode"] == 201
    answer = post(runner, retry, {"atomic": atomic})
    assert answer["statusCode"] in (200, 201), answer["body"][:500]
    assert [r["status"] for r in answer["json"]["results"]] == ["duplicate"]
    assert database.query("SELECT transaction_id, metadata FROM transactions") == [(5, None)]


def test_a_row_stored_with_empty_metadata_before_is_a_duplicate_of_its_retry(
    runner: FunctionRunner, database: Database
) -> None:
    assert post(runner, transaction(6))["statusCode"] == 201
    database.execute("UPDATE transactions SET metadata = '{}'::jsonb WHERE transaction_id = 6")  # as stored before
    for retry in (transaction(6), transaction(6, metadata={})):
        answer = post(runner, retry)
        assert [r["status"] for r in answer["json"]["results"]] == ["duplicate"], answer["body"][:500]
    assert database.query("SELECT count(*) FROM transactions") == [(1,)]


@pytest.mark.parametrize("field", ["channel", "country", "merchant_category", "card_id", "ip_address", "device_id"])
def test_an_empty_string_attribute_stays_refused_not_read_as_absent(runner: FunctionRunner, field: str) -> None:
    answer = post(runner, transaction(7, **{field: ""}))
    assert answer["statusCode"] == 422 and [d["field"] for d in answer["json"]["error"]["details"]] == [field]
