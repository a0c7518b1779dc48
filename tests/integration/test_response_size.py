"""No answer passes Lambda's response limit, through the functions as the local runner runs them (which, as Lambda,
turns a result over 6,291,556 bytes into Lambda's error): a committed write answers in its compact form, marked; a
page is cut by bytes and its cursor reads the rest; every answer matches docs/openapi.json.

Sizes come from long strings rather than many rows: a character beyond the BMP is 4 bytes in a request and 12 in
the answer (the python3.11 runtime escapes it as two \\uXXXX), so a few hundred transactions make megabytes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from tests.conftest import ROOT, Database, load_event, project_template
from tests.integration.helpers import apply_rules, rule
from txguard.api.response_size import FORM_HEADER, LAMBDA_RESPONSE_LIMIT, PAGE_CUT_HEADER
from txguard_dev.local.runner import RESPONSE_LIMIT_BYTES, FunctionRunner, LocalFunction

pytestmark = pytest.mark.integration

DOCUMENT = json.loads((ROOT / "docs" / "openapi.json").read_text())
NOW_MS = int(time.time() * 1000)
EMOJI = "\U0001f4b3"  # 4 bytes of UTF-8, 12 on the wire
ACCOUNT = 4242


@pytest.fixture
def runner(database: Database) -> Iterator[FunctionRunner]:
    yield FunctionRunner(project_template(), database_url=database.service_url)


def documented(method: str, path: str, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    """`body` validates against the document's schema of this operation's answer, and `headers` (when given)
    hold every header it says is required, each of a documented value."""
    answer = DOCUMENT["paths"][path][method.lower()]["responses"][str(status)]
    schema = {**answer["content"]["application/json"]["schema"], "components": DOCUMENT["components"]}
    errors = sorted(Draft202012Validator(schema).iter_errors(body), key=lambda e: list(e.path))
    assert not errors, f"{method} {path} {status}: {errors[0].message} at {list(errors[0].path)[:4]}"
    for name, header in answer.get("headers", {}).items() if headers is not None else ():
        if header.get("required"):
            assert name in headers, (method, path, status, name)
        if name in headers:
            assert headers[name] in header["schema"]["enum"], (method, path, status, name, headers[name])


def send(
    runner: FunctionRunner,
    function: str,
    event_name: str,
    body: Any = None,
    query: dict[str, str] | None = None,
    path: dict[str, str] | None = None,
    method: str | None = None,
) -> tuple[int, dict[str, str], Any, int]:
    """One request through the function as Lambda runs it: (status, headers, body, bytes of the whole result)."""
    event = load_event(event_name)
    if method is not None:
        event["httpMethod"] = method
    if body is not None:
        event["body"] = json.dumps(body, ensure_ascii=False)
        event["headers"]["Content-Type"] = "application/json"
    if path is not None:
        event["pathParameters"] = path
        event["path"] = event["resource"]
        for name, value in path.items():
            event["path"] = event["path"].replace("{" + name + "}", value)
    event["queryStringParameters"] = query or None
    event["multiValueQueryStringParameters"] = {k: [v] for k, v in (query or {}).items()} or None
    result = runner.call(function, event)
    assert not result.failed, result.output[:500]
    assert len(result.output) <= LAMBDA_RESPONSE_LIMIT
    response = result.payload
    headers = {**response.get("headers", {}), **{k: v[-1] for k, v in response.get("multiValueHeaders", {}).items()}}
    return response["statusCode"], headers, json.loads(response["body"]), len(result.output)


def big_transaction(tid: int) -> dict[str, Any]:
    """A valid transaction whose metadata is as large as allowed: 20 values of 50 four-byte characters."""
    metadata = {f"k{i}": EMOJI * 50 for i in range(20)}
    return {
        "account_id": ACCOUNT,
        "transaction_id": tid,
        "timestamp": NOW_MS - 3_600_000 + tid,
        "amount": "25.00",
        "metadata": metadata,
    }


# About 12.9 kB each in the full answer: 560 of them are past the limit, in a 2.4 MB request.
BIG_BATCH = 560


def test_a_batch_whose_full_answer_would_not_fit_is_stored_once_and_answered_in_the_decisions_form(
    runner: FunctionRunner, database: Database
) -> None:
    apply_rules(database, [rule("every_payment", "amount > 0", "0.6"), rule("big", "amount > 10", "0.2")])
    batch = {"transactions": [big_transaction(tid) for tid in range(1, BIG_BATCH + 1)]}

    status, headers, body, size = send(runner, "IngestFunction", "store_data.json", batch)
    assert status == 201
    assert headers[FORM_HEADER] == "decisions"
    notice = body["downgraded"]
    assert (notice["code"], notice["asked"], notice["served"]) == ("response_too_large", "full", "decisions")
    assert notice["full_bytes"] > LAMBDA_RESPONSE_LIMIT == notice["limit_bytes"] > size
    assert [r["transaction_id"] for r in body["results"]] == list(range(1, BIG_BATCH + 1))
    assert {(r["status"], r["outcome"]) for r in body["results"]} == {("stored", "block")}
    documented("POST", "/store_data", 201, body, headers)
    assert database.query("SELECT count(*) FROM transactions") == [(BIG_BATCH,)]

    # A retry: the same answer, as duplicates; nothing stored twice.
    status, headers, again, _ = send(runner, "IngestFunction", "store_data.json", batch)
    assert (status, headers[FORM_HEADER]) == (201, "decisions")
    assert {r["status"] for r in again["results"]} == {"duplicate"}
    assert again["downgraded"]["full_bytes"] > LAMBDA_RESPONSE_LIMIT
    assert database.query("SELECT count(*) FROM transactions") == [(BIG_BATCH,)]

    # Asked for, the decisions form is not a downgrade.
    status, headers, asked, _ = send(runner, "IngestFunction", "store_data.json", batch, {"response": "decisions"})
    assert (status, headers[FORM_HEADER], "downgraded" in asked) == (201, "decisions", False)
    documented("POST", "/store_data", 201, asked, headers)

    # A batch that fits is answered in full, and says so.
    status, headers, small, _ = send(
        runner, "IngestFunction", "store_data.json", {"transactions": batch["transactions"][:3]}
    )
    assert (status, headers[FORM_HEADER], "downgraded" in small) == (201, "full", False)
    assert small["results"][0]["transaction"]["metadata"] == batch["transactions"][0]["metadata"]
    documented("POST", "/store_data", 201, small, headers)

    # The listing and the account view: pages cut by bytes, the cursor reading the rest, every item once.
    for function, event_name, route, key, query, path in (
        ("IngestFunction", "store_data_list.json", "/store_data", "transactions", {"account_id": str(ACCOUNT)}, None),
        ("DetectFunction", "is_fraud.json", "/is_fraud/{account}", "events", {}, {"account": str(ACCOUNT)}),
        (
            "DetectFunction",
            "is_fraud.json",
            "/is_fraud/{account}",
            "events",
            {"recompute": "true"},
            {"account": str(ACCOUNT)},
        ),
    ):
        seen: list[int] = []
        cursor = None
        pages = 0
        while True:
            page_query = {**query, "limit": "1000", **({"cursor": cursor} if cursor else {})}
            status, headers, page, size = send(runner, function, event_name, query=page_query, path=path)
            assert status == 200, page
            documented("GET", route, 200, page, headers)
            pages += 1
            seen += [item["transaction_id"] for item in page[key]]
            cursor = page["next_cursor"]
            if pages == 1:
                assert headers.get(PAGE_CUT_HEADER) == "size" and cursor is not None, (route, query)
                assert size > LAMBDA_RESPONSE_LIMIT * 0.9, size  # cut near the limit, not far below it
            if cursor is None:
                break
        assert sorted(seen) == list(range(1, BIG_BATCH + 1)), (route, query)
        assert len(seen) == len(set(seen)) and pages == 2, (route, query, pages)


def test_a_per_item_batch_whose_full_answer_would_not_fit_answers_207_in_the_decisions_form(
    runner: FunctionRunner, database: Database
) -> None:
    items = [big_transaction(tid) for tid in range(1, BIG_BATCH + 1)]
    items.insert(7, {"account_id": ACCOUNT, "transaction_id": 99_999, "timestamp": NOW_MS, "amount": "-1"})
    query = {"atomic": "false"}
    status, headers, body, _ = send(runner, "IngestFunction", "store_data.json", {"transactions": items}, query)
    assert (status, headers[FORM_HEADER]) == (207, "decisions")
    assert (body["downgraded"]["asked"], body["downgraded"]["served"]) == ("full", "decisions")
    assert body["results"][7]["status"] == "refused" and body["results"][7]["error"]["details"][0]["field"] == "amount"
    assert body["results"][0] == {
        "index": 0,
        "transaction_id": 1,
        "status": "stored",
        "outcome": body["results"][0]["outcome"],
        "score": body["results"][0]["score"],
    }
    documented("POST", "/store_data", 207, body, headers)
    assert database.query("SELECT count(*) FROM transactions") == [(BIG_BATCH,)]

    status, headers, again, _ = send(runner, "IngestFunction", "store_data.json", {"transactions": items}, query)
    assert (status, headers[FORM_HEADER]) == (207, "decisions")
    assert [r["status"] for r in again["results"]].count("duplicate") == BIG_BATCH
    assert database.query("SELECT count(*) FROM transactions") == [(BIG_BATCH,)]


def test_the_compact_and_full_207_answers_match_the_document(runner: FunctionRunner, database: Database) -> None:
    good = {"account_id": 7, "transaction_id": 9202, "timestamp": NOW_MS - 60_000, "amount": "5.00"}
    bad = {"account_id": 7, "transaction_id": 9203, "timestamp": NOW_MS - 60_000, "amount": "oops"}
    for form in ("decisions", "full"):
        query = {"atomic": "false", "response": form}
        status, headers, body, _ = send(
            runner, "IngestFunction", "store_data.json", {"transactions": [good, bad]}, query
        )
        assert (status, headers[FORM_HEADER], "downgraded" in body) == (207, form, False)
        assert [r["status"] for r in body["results"]] in (["stored", "refused"], ["duplicate", "refused"])
        documented("POST", "/store_data", 207, body, headers)
    compact = {"index": 0, "transaction_id": 9202, "status": "stored", "outcome": "allow", "score": "0.0500"}
    documented("POST", "/store_data", 207, {"results": [compact]})
    with pytest.raises(AssertionError):  # the document is strict enough to tell a wrong shape
        documented("POST", "/store_data", 207, {"results": [{"index": 0, "transaction_id": 9202}]})


def test_refused_items_whose_details_would_not_fit_are_listed_with_their_first_problem(
    runner: FunctionRunner, database: Database
) -> None:
    # 60 items of 100 unknown fields each, every value 200 four-byte characters: 4.9 MB asked, the details
    # echoed back would be about 15 MB.
    junk = {f"unknown_{i}": EMOJI * 200 for i in range(100)}
    items = [{"account_id": 1, "transaction_id": i, "timestamp": NOW_MS, "amount": "1.00", **junk} for i in range(60)]
    items.append({"account_id": 1, "transaction_id": 1000, "timestamp": NOW_MS - 1000, "amount": "1.00"})
    query = {"atomic": "false", "response": "decisions"}
    status, headers, body, _ = send(runner, "IngestFunction", "store_data.json", {"transactions": items}, query)
    assert (status, headers[FORM_HEADER]) == (207, "decisions")
    assert "at most 1 of its problems" in body["downgraded"]["message"]
    refused = [r for r in body["results"] if r["status"] == "refused"]
    assert len(refused) == 60
    assert all(len(r["error"]["details"]) == 1 and r["error"]["details_total"] == 100 for r in refused)
    assert body["results"][-1]["status"] == "stored"
    documented("POST", "/store_data", 207, body, headers)
    assert database.query("SELECT transaction_id FROM transactions") == [(1000,)]


LABEL_BATCH = 2_600  # about 2.5 kB each in the full answer


def test_labels_whose_full_answer_would_not_fit_are_stored_once_and_answered_by_id(
    runner: FunctionRunner, database: Database
) -> None:
    # One transaction's history of reviews, each with the longest reason.
    labels = [
        {
            "transaction_id": 1,
            "fraud": i % 2 == 0,
            "source": "review",
            "labelled_at": NOW_MS - 10_000_000 + i,
            "reason": EMOJI * 200,
        }
        for i in range(LABEL_BATCH)
    ]
    status, headers, body, _ = send(runner, "IngestFunction", "labels.json", {"labels": labels})
    assert (status, headers[FORM_HEADER]) == (201, "ids")
    assert (body["downgraded"]["asked"], body["downgraded"]["served"]) == ("full", "ids")
    assert body["downgraded"]["full_bytes"] > LAMBDA_RESPONSE_LIMIT
    assert {r["status"] for r in body["results"]} == {"stored"}
    assert [r["in_force"] for r in body["results"]] == [False] * (LABEL_BATCH - 1) + [True]
    documented("POST", "/labels", 201, body, headers)
    assert database.query("SELECT count(*) FROM labels") == [(LABEL_BATCH,)]

    status, headers, again, _ = send(runner, "IngestFunction", "labels.json", {"labels": labels})
    assert (status, headers[FORM_HEADER]) == (201, "ids")
    assert [r["label_id"] for r in again["results"]] == [r["label_id"] for r in body["results"]]
    assert {r["status"] for r in again["results"]} == {"duplicate"}
    assert database.query("SELECT count(*) FROM labels") == [(LABEL_BATCH,)]

    status, headers, small, _ = send(runner, "IngestFunction", "labels.json", {"labels": labels[:2]})
    assert (status, headers[FORM_HEADER], small["results"][0]["label"]["reason"]) == (201, "full", EMOJI * 200)
    documented("POST", "/labels", 201, small, headers)
    status, headers, ids, _ = send(runner, "IngestFunction", "labels.json", {"labels": labels[:2]}, {"response": "ids"})
    assert (status, headers[FORM_HEADER], "downgraded" in ids) == (201, "ids", False)
    documented("POST", "/labels", 201, ids, headers)

    # The largest page of one transaction's labels fits whole (1,000 of the longest reasons).
    status, headers, page, _ = send(
        runner, "IngestFunction", "labels_list.json", query={"transaction_id": "1", "limit": "1000"}
    )
    assert status == 200 and len(page["labels"]) == 1000 and PAGE_CUT_HEADER not in headers
    documented("GET", "/labels", 200, page, headers)


def test_a_list_audit_page_is_cut_by_bytes_and_the_largest_items_page_fits(
    runner: FunctionRunner, database: Database
) -> None:
    status, _, _, _ = send(runner, "ListsFunction", "lists_create.json", {"name": "devices", "kind": "device"})
    assert status == 201
    # 3,000 items, each with the longest note: three audit rows of 1,000 items, about 2.5 MB each in an answer.
    items = [{"value": f"device-{i:05d}", "note": EMOJI * 200} for i in range(3_000)]
    status, _, added, _ = send(
        runner, "ListsFunction", "list_items_add.json", {"items": items}, path={"name": "devices"}
    )
    assert (status, added["added"]) == (200, 3_000), added

    changes: list[dict[str, Any]] = []
    cursor = None
    cut = []
    while True:
        query = {"limit": "100", **({"cursor": cursor} if cursor else {})}
        status, headers, page, _ = send(
            runner, "ListsFunction", "list_changes.json", query=query, path={"name": "devices"}
        )
        assert status == 200, page
        documented("GET", "/lists/{name}/changes", 200, page, headers)
        changes += page["changes"]
        cut.append(headers.get(PAGE_CUT_HEADER))
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert cut[0] == "size" and len(cut) >= 2
    assert [c["operation"] for c in changes] == ["create", "add", "add", "add"]
    assert sorted(i["value"] for c in changes[1:] for i in c["items"]) == [i["value"] for i in items]
    assert len({c["change_id"] for c in changes}) == len(changes)

    status, headers, page, _ = send(
        runner, "ListsFunction", "list_items.json", query={"limit": "1000"}, path={"name": "devices"}
    )
    assert status == 200 and len(page["items"]) == 1000 and PAGE_CUT_HEADER not in headers
    documented("GET", "/lists/{name}/items", 200, page, headers)


def test_the_local_runner_turns_a_result_over_the_limit_into_lambdas_error(tmp_path: Any) -> None:
    code = tmp_path / "fn"
    code.mkdir()
    (code / "app.py").write_text(
        "def handler(event, context):\n    return {'statusCode': 200, 'body': 'x' * event['size']}\n"
    )
    function = LocalFunction("Big", code, "app.handler", (), {}, 3, 128, ())
    runner = FunctionRunner(project_template(), database_url=None)
    runner.template.functions = {**runner.template.functions, "Big": function}
    envelope = len(json.dumps({"statusCode": 200, "body": ""}))
    fits = runner.call("Big", {"size": RESPONSE_LIMIT_BYTES - envelope})
    assert not fits.failed and len(fits.output) == RESPONSE_LIMIT_BYTES
    over = runner.call("Big", {"size": RESPONSE_LIMIT_BYTES - envelope + 1})
    assert over.failed and over.payload["errorType"] == "Function.ResponseSizeTooLarge"


def test_a_rules_snoozes_page_is_cut_by_bytes_and_its_cursor_reads_the_rest(
    runner: FunctionRunner, database: Database
) -> None:
    apply_rules(database, [rule("big", "amount > 100")])
    # 1,000 snoozes (the largest page) and the 100 last changes every page carries, each with the longest note:
    # about 6.8 MB in one answer. Stored directly: a thousand POSTs would only slow the test.
    database.execute(
        """INSERT INTO rule_snoozes (rule_id, kind, value, until, note, created_by)
           SELECT 'big', 'account', n::text, now() + interval '1 day' + n * interval '1 second', %s, 'ana'
           FROM generate_series(1, 1000) AS n""",
        (EMOJI * 500,),
    )
    database.execute(
        """INSERT INTO rule_snooze_changes (change, rule_id, kind, value, until, note, changed_by)
           SELECT 'snoozed', rule_id, kind, value, until, note, created_by FROM rule_snoozes
           WHERE value::int <= 100""",
    )
    seen: list[str] = []
    cursor = None
    cut = []
    while True:
        query = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
        status, headers, page, _ = send(
            runner, "IngestFunction", "rule_snoozes.json", query=query, path={"rule_id": "big"}
        )
        assert status == 200, page
        documented("GET", "/rules/{rule_id}/snoozes", 200, page, headers)
        assert len(page["changes"]) == 100
        seen += [s["value"] for s in page["snoozes"]]
        assert len(seen) <= 1000
        cut.append(headers.get(PAGE_CUT_HEADER))
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert cut == ["size", None]
    assert seen == [str(n) for n in range(1, 1001)]  # soonest end first, each once
