"""The API contract over real HTTP against `txguard local`: every case either fully succeeds or changes
nothing and says exactly why."""

from __future__ import annotations

import http.client
import itertools
import json
import time
import urllib.error
import urllib.request
from typing import Any

import psycopg2
import pytest

from tests.conftest import DECISION_FIELDS, ROOT
from tests.e2e.conftest import LocalService, Response
from txguard.errors import echo

pytestmark = pytest.mark.e2e

_ids = itertools.count(int(time.time() * 1000) * 1000)
NOW_MS = int(time.time() * 1000)


def item(account_id: int = 77, **fields: Any) -> dict[str, Any]:
    return {
        "account_id": account_id,
        "transaction_id": next(_ids),
        "timestamp": NOW_MS - 3_600_000,
        "amount": "10.00",
        **fields,
    }


def count_rows(database_url: str, where: str = "true", params: tuple[Any, ...] = ()) -> int:
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM transactions WHERE {where}", params)
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def raw(service: LocalService, method: str, path: str, data: bytes | None, content_type: str | None) -> Response:
    headers = {"x-api-key": service.api_key or ""}
    if content_type:
        headers["content-type"] = content_type
    request = urllib.request.Request(service.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return Response(answer.status, json.loads(answer.read() or b"null"), dict(answer.headers))
    except urllib.error.HTTPError as error:
        body = error.read()
        return Response(error.code, json.loads(body) if body else None, dict(error.headers))


def assert_error(response: Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status == status, response.body
    error = response.body["error"]
    assert set(error) == {"code", "message", "details"} and error["message"]
    if code is not None:
        assert error["code"] == code
    text = json.dumps(response.body)
    assert "Traceback" not in text and "psycopg2" not in text and "SELECT" not in text
    return dict(error)


def test_a_batch_is_stored_with_one_result_per_item_in_request_order(local_service: LocalService) -> None:
    batch = [
        item(account_id=5001, amount="100.00"),
        item(account_id=5001, amount="100.00"),
        item(account_id=5001, amount="20.00", timestamp=NOW_MS - 1000),
    ]
    response = local_service.request("POST", "/store_data", {"transactions": batch})
    assert response.status == 201, response.body
    results = response.body["results"]
    assert [r["transaction_id"] for r in results] == [t["transaction_id"] for t in batch]
    assert [r["status"] for r in results] == ["stored"] * 3
    assert results[2]["transaction"]["amount"] == "20.00" and results[2]["transaction"]["currency"] == "EUR"
    assert set(results[0]["decision"]) == DECISION_FIELDS


def test_a_batch_with_a_zero_amount_card_verification_is_stored_whole_with_decisions(
    local_service: LocalService, e2e_database_url: str
) -> None:
    batch = [
        item(account_id=5016, amount="25.00", timestamp=NOW_MS - 3_000),
        item(account_id=5016, amount="0", timestamp=NOW_MS - 2_000),
        item(account_id=5016, amount=0, timestamp=NOW_MS - 1_000),
    ]
    response = local_service.request("POST", "/store_data", {"transactions": batch})
    assert response.status == 201, response.body
    results = response.body["results"]
    assert [r["status"] for r in results] == ["stored"] * 3
    assert [r["transaction"]["amount"] for r in results] == ["25.00", "0.00", "0.00"]
    assert all(isinstance(r["decision"]["fraud"], bool) for r in results)
    assert count_rows(e2e_database_url, "account_id = 5016 AND amount = 0") == 2


def test_a_negative_amount_beside_a_zero_one_is_422_naming_the_field_and_stores_nothing(
    local_service: LocalService, e2e_database_url: str
) -> None:
    batch = [item(account_id=5017, amount="0.00"), item(account_id=5017, amount="-0.01")]
    error = assert_error(local_service.request("POST", "/store_data", {"transactions": batch}), 422, "validation_error")
    assert [(d["index"], d["field"]) for d in error["details"]] == [(1, "amount")]
    assert count_rows(e2e_database_url, "account_id = 5017") == 0


def test_a_replay_is_a_duplicate_with_the_original_decision(local_service: LocalService, e2e_database_url: str) -> None:
    tx = item(account_id=5002)
    first = local_service.request("POST", "/store_data", tx)
    again = local_service.request("POST", "/store_data", tx)
    assert (first.status, again.status) == (201, 201)
    assert again.body["results"][0]["status"] == "duplicate"
    assert again.body["results"][0]["decision"] == first.body["results"][0]["decision"]
    assert count_rows(e2e_database_url, "transaction_id = %s", (tx["transaction_id"],)) == 1


def test_the_same_id_with_other_content_is_409_naming_id_and_fields(
    local_service: LocalService, e2e_database_url: str
) -> None:
    tx = item(account_id=5003)
    assert local_service.request("POST", "/store_data", tx).status == 201
    fresh = item(account_id=5003)
    response = local_service.request("POST", "/store_data", {"transactions": [fresh, {**tx, "amount": "10.01"}]})
    error = assert_error(response, 409, "transaction_id_conflict")
    # The id as every refusal shows a value back: these ids have 16 digits, and one in ten passes the Luhn check,
    # which is shown masked like a card number (txguard.errors.echo).
    shown = echo(tx["transaction_id"])
    assert str(shown) in error["message"]
    assert error["details"] == [{"index": 1, "field": "transaction_id", "value": shown, "reason": "differs in amount"}]
    assert count_rows(e2e_database_url, "transaction_id = %s", (fresh["transaction_id"],)) == 0


def test_an_invalid_batch_lists_every_invalid_item_and_stores_nothing(
    local_service: LocalService, e2e_database_url: str
) -> None:
    good = item(account_id=5004)
    batch = [good, item(amount="-5", colour="red"), item(timestamp="yesterday"), good | {"transaction_id": "x"}]
    error = assert_error(local_service.request("POST", "/store_data", {"transactions": batch}), 422, "validation_error")
    by_index = {(d["index"], d["field"]) for d in error["details"]}
    assert {(1, "amount"), (1, "colour"), (2, "timestamp"), (3, "transaction_id")} <= by_index
    assert all(d["reason"] for d in error["details"])
    assert count_rows(e2e_database_url, "account_id = 5004") == 0


def test_atomic_false_stores_the_valid_items_and_refuses_each_invalid_one_with_its_own_error(
    local_service: LocalService, e2e_database_url: str
) -> None:
    stored_before = [item(account_id=5905), item(account_id=5905)]
    assert local_service.request("POST", "/store_data", {"transactions": stored_before}).status == 201
    batch = [
        item(account_id=5905, amount="1.005", currency="USD"),  # three decimals in USD: refused alone
        item(account_id=5905),
        stored_before[0] | {"amount": "11.00"},  # a stored id with other content: refused alone
        stored_before[1],  # a replay: a duplicate
        item(account_id=5905, amount="12.50"),
    ]
    response = local_service.request("POST", "/store_data?atomic=false", {"transactions": batch})
    assert response.status == 207, response.body
    results = response.body["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3, 4]
    assert [r["status"] for r in results] == ["refused", "stored", "refused", "duplicate", "stored"]
    assert results[0]["error"]["code"] == "validation_error"
    assert results[0]["error"]["details"] == [
        {
            "index": 0,
            "field": "amount",
            "value": "1.005",
            "reason": "amount has more decimal places than USD allows (2)",
        }
    ]
    assert results[2]["error"]["code"] == "transaction_id_conflict"
    assert results[2]["error"]["details"][0]["field"] == "transaction_id"
    assert results[4]["decision"]["rule_set_version"] >= 1
    assert count_rows(e2e_database_url, "account_id = 5905") == 4


def test_atomic_false_with_every_item_valid_is_201_and_the_default_stays_all_or_nothing(
    local_service: LocalService, e2e_database_url: str
) -> None:
    response = local_service.request("POST", "/store_data?atomic=false", {"transactions": [item(account_id=5906)]})
    assert response.status == 201 and [r["status"] for r in response.body["results"]] == ["stored"]
    batch = [item(account_id=5906), item(account_id=5906, amount="-1")]
    assert_error(local_service.request("POST", "/store_data", {"transactions": batch}), 422, "validation_error")
    assert_error(local_service.request("POST", "/store_data?atomic=true", {"transactions": batch}), 422)
    assert count_rows(e2e_database_url, "account_id = 5906") == 1


def test_atomic_false_answers_the_compact_form_for_stored_items_and_the_error_for_refused_ones(
    local_service: LocalService, e2e_database_url: str
) -> None:
    batch = [item(account_id=5907), item(account_id=5907, amount="-1"), item(account_id=5907)]
    response = local_service.request("POST", "/store_data?atomic=false&response=decisions", {"transactions": batch})
    assert response.status == 207, response.body
    stored, refused, second = response.body["results"]
    assert set(stored) == {"index", "transaction_id", "status", "outcome", "score"}
    assert (stored["index"], stored["transaction_id"], stored["status"]) == (0, batch[0]["transaction_id"], "stored")
    assert (second["index"], second["status"]) == (2, "stored") and second["outcome"] in ("allow", "review", "block")
    assert (refused["index"], refused["status"], refused["error"]["code"]) == (1, "refused", "validation_error")
    assert count_rows(e2e_database_url, "account_id = 5907") == 2


@pytest.mark.parametrize("atomic", ["true", "false"])
def test_an_unknown_response_form_is_422_naming_it_in_either_mode(
    local_service: LocalService, e2e_database_url: str, atomic: str
) -> None:
    body = {"transactions": [item(account_id=5908)]}
    response = local_service.request("POST", f"/store_data?atomic={atomic}&response=ids", body)
    error = assert_error(response, 422, "validation_error")
    assert [(d["field"], d["value"]) for d in error["details"]] == [("response", "ids")]
    assert count_rows(e2e_database_url, "account_id = 5908") == 0


@pytest.mark.parametrize("atomic", ["true", "false"])
def test_an_id_beyond_64_bits_is_refused_and_shown_back_as_its_digits_in_either_mode(
    local_service: LocalService, atomic: str
) -> None:
    # JSON allows it; the response encoder would not, and that was a 500 for atomic=false.
    huge = 42_014_416_025_881_001_984  # 20 digits, past 2**64
    response = local_service.request("POST", f"/store_data?atomic={atomic}", {"transactions": [item(account_id=huge)]})
    assert response.status == 422 if atomic == "true" else 207, response.body
    error = response.body["error"] if atomic == "true" else response.body["results"][0]["error"]
    assert [(d["field"], d["value"]) for d in error["details"]] == [("account_id", str(huge))]


@pytest.mark.parametrize("value", ["False", "0", "no", ""])
def test_an_atomic_value_other_than_true_or_false_is_422_naming_it(local_service: LocalService, value: str) -> None:
    response = local_service.request("POST", f"/store_data?atomic={value}", {"transactions": [item()]})
    error = assert_error(response, 422, "validation_error")
    assert [d["field"] for d in error["details"]] == ["atomic"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"amount": "-0.01"}, "amount"),
        ({"amount": -1}, "amount"),
        ({"amount": "NaN"}, "amount"),
        ({"amount": "Infinity"}, "amount"),
        ({"amount": "1.001"}, "amount"),
        ({"amount": "1e13"}, "amount"),
        ({"amount": True}, "amount"),
        ({"account_id": 0}, "account_id"),
        ({"account_id": 2**63}, "account_id"),
        ({"account_id": "12"}, "account_id"),
        ({"transaction_id": 1.5}, "transaction_id"),
        ({"timestamp": 946_684_799_999}, "timestamp"),
        ({"timestamp": NOW_MS + 3 * 86_400_000}, "timestamp"),
        ({"timestamp": "2024-05-01T12:00:00"}, "timestamp"),
        ({"timestamp": "2024-05-01T12:00:00.123456Z"}, "timestamp"),
        ({"timestamp": "2024-05-01T12:00:00.0000001Z"}, "timestamp"),
        ({"timestamp": "20240501T120000Z"}, "timestamp"),
        ({"amount": "1.00000000000000000000000000001"}, "amount"),
        ({"amount": "1__0.5_"}, "amount"),
        ({"amount": "١٠.٥"}, "amount"),
        ({"currency": "XYZ"}, "currency"),
        ({"merchant_id": "bad id with spaces"}, "merchant_id"),
    ],
)
def test_each_invalid_field_is_422_naming_field_value_and_reason(
    local_service: LocalService, e2e_database_url: str, fields: dict[str, Any], field: str
) -> None:
    tx = item(account_id=5005) | fields
    error = assert_error(local_service.request("POST", "/store_data", tx), 422, "validation_error")
    detail = next(d for d in error["details"] if d["field"] == field)
    assert detail["reason"] and "value" in detail
    assert count_rows(e2e_database_url, "account_id = 5005") == 0


def test_a_missing_field_is_named(local_service: LocalService) -> None:
    tx = item()
    del tx["amount"]
    error = assert_error(local_service.request("POST", "/store_data", tx), 422)
    assert {"index": None, "field": "amount", "value": None, "reason": "is required"} in error["details"]


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        (b'{"account_id": 1,', "application/json", 400, "malformed_json"),
        (
            b'{"account_id": 1, "transaction_id": 2, "timestamp": 1714564800000, "amount": NaN}',
            "application/json",
            400,
            "malformed_json",
        ),
        (b"", "application/json", 400, "empty_body"),
        (b"   ", "application/json", 400, "empty_body"),
        (b"account_id=1", "application/x-www-form-urlencoded", 415, "unsupported_content_type"),
        (b"[" * 100_000, "application/json", 400, "malformed_json"),
        (b"[]", "application/json", 422, "validation_error"),
        (b'[{"account_id": 1}, {"account_id": 2}]', "application/json", 422, "validation_error"),
        (b'{"account_id": 1, "account_id": 2}', "application/json", 400, "malformed_json"),
        (b"{}", "application/json; charset=latin-1", 415, "unsupported_content_type"),
        (b"{}", "text/plain", 415, "unsupported_content_type"),
        (b'"just a string"', "application/json", 422, "validation_error"),
    ],
)
def test_malformed_bodies_get_a_clear_4xx(
    local_service: LocalService, data: bytes, content_type: str, status: int, code: str
) -> None:
    assert_error(raw(local_service, "POST", "/store_data", data, content_type), status, code)


def test_a_post_without_a_content_type_is_415_and_stores_nothing(
    local_service: LocalService, e2e_database_url: str
) -> None:
    # urllib would add a form content type of its own; http.client sends exactly these headers.
    host, port = local_service.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request(
        "POST", "/store_data", json.dumps(item(account_id=5013)).encode(), {"x-api-key": local_service.api_key or ""}
    )
    answer = connection.getresponse()
    body = json.loads(answer.read())
    connection.close()
    assert (answer.status, body["error"]["code"]) == (415, "unsupported_content_type"), body
    assert count_rows(e2e_database_url, "account_id = 5013") == 0


@pytest.mark.parametrize("path", ["/store_data?limit=1&limit=2", "/is_fraud/1?limit=1&limit=2"])
def test_a_query_parameter_given_twice_is_422_naming_it(local_service: LocalService, path: str) -> None:
    error = assert_error(raw(local_service, "GET", path, None, None), 422, "validation_error")
    assert [(d["field"], d["reason"]) for d in error["details"]] == [("limit", "given more than once; give it once")]


def test_a_top_level_array_stores_none_of_its_items(local_service: LocalService, e2e_database_url: str) -> None:
    items = [item(account_id=5010), item(account_id=5010)]
    data = json.dumps(items).encode()
    assert_error(raw(local_service, "POST", "/store_data", data, "application/json"), 422, "validation_error")
    assert count_rows(e2e_database_url, "account_id = 5010") == 0


@pytest.mark.parametrize("content_type", ["APPLICATION/JSON", "application/json; charset=UTF-8", "application/x+json"])
def test_json_under_any_spelling_of_its_media_type_is_stored(local_service: LocalService, content_type: str) -> None:
    data = json.dumps(item(account_id=5011)).encode()
    response = raw(local_service, "POST", "/store_data", data, content_type)
    assert response.status == 201, response.body


@pytest.mark.parametrize("field", ["account_id", "transaction_id", "timestamp", "amount"])
def test_a_huge_exponent_is_422_at_once(local_service: LocalService, e2e_database_url: str, field: str) -> None:
    data = json.dumps(item(account_id=5012) | {field: "N"}).replace('"N"', "1e1000000").encode()
    started = time.perf_counter()
    error = assert_error(raw(local_service, "POST", "/store_data", data, "application/json"), 422, "validation_error")
    assert time.perf_counter() - started < 2.0  # generous: the old conversion took ~39 s
    assert [d["field"] for d in error["details"]] == [field]
    assert count_rows(e2e_database_url, "account_id = 5012") == 0


@pytest.mark.parametrize(
    "path",
    [
        "/is_fraud/42.0",
        "/is_fraud/4_2",
        "/is_fraud/1e1000000",
        "/is_fraud/5007?limit=2.0",
        "/store_data?account_id=4_2",
        "/store_data?limit=%EF%BC%95",
        "/store_data?from=2024-05-01T12:00:00.0000001Z",
        "/store_data?acount_id=5007",
    ],
)
def test_path_and_query_take_integers_and_timestamps_by_the_body_rule(local_service: LocalService, path: str) -> None:
    assert_error(local_service.request("GET", path), 422, "validation_error")


def test_a_body_over_the_limit_is_413(local_service: LocalService) -> None:
    response = raw(
        local_service,
        "POST",
        "/store_data",
        b'{"transactions": [' + b" " * (7 * 1024 * 1024) + b"]}",
        "application/json",
    )
    assert_error(response, 413, "body_too_large")


def test_a_batch_over_the_maximum_size_is_refused(local_service: LocalService, e2e_database_url: str) -> None:
    batch = [item(account_id=5006) for _ in range(5001)]
    error = assert_error(local_service.request("POST", "/store_data", {"transactions": batch}), 422, "batch_too_large")
    assert "5000" in error["message"]
    assert count_rows(e2e_database_url, "account_id = 5006") == 0


def test_unknown_routes_and_methods_are_refused(local_service: LocalService) -> None:
    assert local_service.request("GET", "/nowhere").status == 403
    assert local_service.request("DELETE", "/store_data").status in (403, 405)


def test_is_fraud_accepts_a_trailing_slash_and_names_a_bad_account(local_service: LocalService) -> None:
    assert local_service.request("POST", "/store_data", item(account_id=5007)).status == 201
    with_slash = local_service.request("GET", "/is_fraud/5007/")
    without = local_service.request("GET", "/is_fraud/5007")
    assert with_slash.status == without.status == 200
    assert with_slash.body == without.body
    error = assert_error(local_service.request("GET", "/is_fraud/abc"), 422)
    assert error["details"][0]["field"] == "account" and error["details"][0]["value"] == "abc"
    assert_error(local_service.request("GET", "/is_fraud/999999999"), 404, "account_not_found")


def test_is_fraud_pages_newest_first_with_a_cursor(local_service: LocalService) -> None:
    account = 5008
    history = [item(account_id=account, amount="100.00", timestamp=NOW_MS - 100_000)] + [
        item(account_id=account, amount="1.00", timestamp=NOW_MS - 90_000 + i) for i in range(5)
    ]
    assert local_service.request("POST", "/store_data", {"transactions": history}).status == 201
    seen, cursor = [], None
    while True:
        page = local_service.request("GET", f"/is_fraud/{account}?limit=2" + (f"&cursor={cursor}" if cursor else ""))
        assert page.status == 200 and page.body["fraud"] is True
        seen += [e["timestamp"] for e in page.body["events"]]
        cursor = page.body["next_cursor"]
        if cursor is None:
            break
    # Whatever the default rules flag here (a burst of tiny amounts after a large one), pages add up to it.
    whole = local_service.request("GET", f"/is_fraud/{account}?limit=1000")
    assert seen == [e["timestamp"] for e in whole.body["events"]] == sorted(seen, reverse=True)
    assert len(seen) >= 2
    recomputed = local_service.request("GET", f"/is_fraud/{account}?recompute=true&limit=1000")
    assert recomputed.body["recomputed"] is True
    assert [e["timestamp"] for e in recomputed.body["events"]] == seen
    assert_error(local_service.request("GET", f"/is_fraud/{account}?cursor=bm9wZQ"), 400, "invalid_cursor")


def test_listing_filters_by_account_and_time_and_pages(local_service: LocalService) -> None:
    account = 5009
    batch = [item(account_id=account, timestamp=NOW_MS - 50_000 + i * 1000) for i in range(5)]
    assert local_service.request("POST", "/store_data", {"transactions": batch}).status == 201
    window = f"/store_data?account_id={account}&from={NOW_MS - 49_000}&to={NOW_MS - 46_000}&limit=2"
    first = local_service.request("GET", window)
    assert first.status == 200
    assert [t["timestamp"] for t in first.body["transactions"]] == [NOW_MS - 49_000, NOW_MS - 48_000]
    second = local_service.request("GET", window + f"&cursor={first.body['next_cursor']}")
    assert [t["timestamp"] for t in second.body["transactions"]] == [NOW_MS - 47_000]
    assert second.body["next_cursor"] is None
    assert_error(local_service.request("GET", "/store_data?limit=100000"), 422)
    assert_error(local_service.request("GET", "/store_data?from=someday"), 422)


def test_the_served_openapi_document_is_the_committed_one(local_service: LocalService) -> None:
    served = local_service.request("GET", "/openapi.json")
    assert served.status == 200
    assert served.body == json.loads((ROOT / "docs" / "openapi.json").read_text())
