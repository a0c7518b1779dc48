"""Lists through the real lists function (the sample events of events/): create, add, page, remove, audit;
every bad input refused whole with the one error shape and nothing stored; retries change nothing."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.conftest import Database, load_event, project_template
from txguard_dev.local.runner import FunctionRunner

pytestmark = pytest.mark.integration


@pytest.fixture
def runner(database: Database) -> FunctionRunner:
    return FunctionRunner(project_template(), database_url=database.service_url)


def call(
    runner: FunctionRunner,
    event_name: str,
    body: Any = None,
    path: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    event = load_event(event_name)
    if body is not None:
        event["body"] = body if isinstance(body, str) else json.dumps(body)
    if path is not None:
        event["pathParameters"] = path
        event["path"] = event["resource"]
        for name, value in path.items():
            event["path"] = event["path"].replace("{" + name + "}", value)
    if query is not None:
        event["queryStringParameters"] = query or None
        event["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()} or None
    result = runner.call("ListsFunction", event)
    assert not result.failed, result.output
    response = json.loads(result.output)
    return response["statusCode"], json.loads(response["body"])


def create(runner: FunctionRunner, name: str, kind: str, action: str | None = None) -> dict[str, Any]:
    status, body = call(runner, "lists_create.json", {"name": name, "kind": kind, "action": action})
    assert status == 201, body
    return body


def counts(database: Database) -> tuple[Any, ...]:
    (row,) = database.query(
        "SELECT (SELECT count(*) FROM lists), (SELECT count(*) FROM list_items), (SELECT count(*) FROM list_changes)"
    )
    return row


def test_the_sample_events_create_fill_read_and_audit_a_list(runner: FunctionRunner, database: Database) -> None:
    status, created = call(runner, "lists_create.json")
    assert status == 201
    assert (created["name"], created["kind"], created["action"], created["version"], created["items"]) == (
        "blocked_cards",
        "card",
        "block",
        1,
        0,
    )
    assert created["created_by"] == "api_key:abc123example"
    assert call(runner, "lists_create.json") == (200, created)  # a retry

    status, added = call(runner, "list_items_add.json")
    assert (status, added) == (200, {"version": 2, "added": 2, "changed": 0, "unchanged": 0, "removed": 0})
    assert call(runner, "list_items_add.json")[1]["version"] == 2  # a retry writes no version

    status, page = call(runner, "list_items.json")
    assert status == 200 and page["next_cursor"] is None
    assert [(i["value"], i["expires_at"], i["note"], i["active"]) for i in page["items"]] == [
        ("card_7f3a9c", None, "chargeback 2026-11-02", True),
        ("card_91bd20", 1_814_313_600_000, "under review", True),
    ]
    assert call(runner, "list.json")[1]["items"] == 2
    assert [entry["name"] for entry in call(runner, "lists.json")[1]["lists"]] == ["blocked_cards"]

    status, changed = call(runner, "list_change.json")
    assert (status, changed["version"], changed["description"]) == (
        200,
        3,
        "cards reported stolen or confirmed by chargeback",
    )
    assert call(runner, "list_item_remove.json")[1] == {
        "version": 4,
        "added": 0,
        "changed": 0,
        "unchanged": 0,
        "removed": 1,
    }
    assert call(runner, "list_items_remove.json")[1]["removed"] == 1

    status, audit = call(runner, "list_changes.json")
    assert status == 200
    values = [[i["value"] for i in c["items"]] if "items" in c else None for c in audit["changes"]]
    assert [(c["version"], c["operation"], c["actor"]) for c in audit["changes"]] == [
        (1, "create", "api_key:abc123example"),
        (2, "add", "api_key:abc123example"),
        (3, "update", "api_key:abc123example"),
        (4, "remove", "api_key:abc123example"),
        (5, "remove", "api_key:abc123example"),
    ]
    assert values == [None, ["card_7f3a9c", "card_91bd20"], None, ["card_91bd20"], ["card_7f3a9c"]]
    assert audit["changes"][1]["items"][1] == {
        "value": "card_91bd20",
        "expires_at": 1_814_313_600_000,
        "note": "under review",
    }


def test_items_page_by_cursor_and_filter_by_value_in_its_canonical_form(
    runner: FunctionRunner, database: Database
) -> None:
    create(runner, "countries", "country")
    items = [{"value": code} for code in ("fr", "de", "it", "es", "pt")]
    assert call(runner, "list_items_add.json", {"items": items}, {"name": "countries"})[1]["added"] == 5

    seen, cursor = [], None
    while True:
        query = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        status, page = call(runner, "list_items.json", path={"name": "countries"}, query=query)
        assert status == 200
        seen += [i["value"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["DE", "ES", "FR", "IT", "PT"]
    status, page = call(runner, "list_items.json", path={"name": "countries"}, query={"value": "fr"})
    assert [i["value"] for i in page["items"]] == ["FR"]
    status, audit = call(runner, "list_changes.json", path={"name": "countries"}, query={"value": "it"})
    assert [(c["operation"], c["items"]) for c in audit["changes"]] == [
        ("add", [{"value": "IT", "expires_at": None, "note": None}])
    ]
    status, refused = call(runner, "list_items.json", path={"name": "countries"}, query={"cursor": "bm9wZQ"})
    assert (status, refused["error"]["code"]) == (400, "invalid_cursor")


def test_a_batch_with_one_bad_item_is_refused_whole_naming_each_problem(
    runner: FunctionRunner, database: Database
) -> None:
    create(runner, "high_risk_mcc", "merchant_category")
    before = counts(database)
    past = int(time.time() * 1000) - 1000
    status, refused = call(
        runner,
        "list_items_add.json",
        {
            "items": [
                {"value": "7995"},
                {"value": "99999"},
                {"value": "5411", "expires_at": past},
                {"value": "5412", "colour": "red"},
                "6011",
            ]
        },
        {"name": "high_risk_mcc"},
    )
    assert status == 422
    assert refused["error"]["code"] == "validation_error"
    assert [(d["index"], d["field"], d["value"]) for d in refused["error"]["details"]] == [
        (1, "value", "99999"),
        (2, "expires_at", past),
        (3, "colour", "red"),
        (4, None, "6011"),
    ]
    assert all(d["reason"] for d in refused["error"]["details"])
    assert counts(database) == before


@pytest.mark.parametrize(
    ("event_name", "body", "path", "status", "field"),
    [
        ("lists_create.json", {"name": "Bad-Name", "kind": "card"}, None, 422, "name"),
        ("lists_create.json", {"name": "ok", "kind": "email"}, None, 422, "kind"),
        ("lists_create.json", {"name": "ok", "kind": "card", "action": "review"}, None, 422, "action"),
        ("lists_create.json", {"name": "ok", "kind": "card", "extra": 1}, None, 422, "extra"),
        ("lists_create.json", {"name": "ok", "kind": "card", "description": "\x00"}, None, 422, "description"),
        ("lists_create.json", "[1]", None, 422, None),
        ("lists_create.json", "{", None, 400, None),
        ("list_items_add.json", {"value": "x"}, {"name": "missing"}, 404, None),
        ("list_items_add.json", {"items": []}, {"name": "cards"}, 422, "items"),
        ("list_items_add.json", {"value": "4111111111111111"}, {"name": "cards"}, 422, "value"),
        ("list_items_remove.json", {"values": ["ok", "not a card"]}, {"name": "cards"}, 422, "value"),
        ("list_change.json", {"kind": "ip"}, {"name": "cards"}, 422, "kind"),
        ("list_change.json", {}, {"name": "cards"}, 422, None),
    ],
)
def test_bad_requests_are_refused_in_the_one_error_shape_and_change_nothing(
    runner: FunctionRunner,
    database: Database,
    event_name: str,
    body: Any,
    path: dict[str, str] | None,
    status: int,
    field: str | None,
) -> None:
    create(runner, "cards", "card", "block")
    before = counts(database)
    got, refused = call(runner, event_name, body, path)
    assert got == status, refused
    assert set(refused["error"]) >= {"code", "message", "details"}
    if field is not None:
        assert field in [d["field"] for d in refused["error"]["details"]], refused
    assert counts(database) == before


def test_another_definition_under_a_stored_name_is_a_conflict(runner: FunctionRunner, database: Database) -> None:
    create(runner, "trusted", "account", "allow")
    status, refused = call(runner, "lists_create.json", {"name": "trusted", "kind": "account", "action": "block"})
    assert (status, refused["error"]["code"]) == (409, "list_exists")
    assert call(runner, "list.json", path={"name": "nope"})[0] == 404
    assert call(runner, "list.json", path={"name": "trusted"})[1]["action"] == "allow"


def test_more_than_the_batch_limit_is_refused(runner: FunctionRunner, database: Database) -> None:
    create(runner, "accounts", "account")
    items = [{"value": str(i)} for i in range(1, 10_002)]
    status, refused = call(runner, "list_items_add.json", {"items": items}, {"name": "accounts"})
    assert (status, refused["error"]["code"]) == (422, "batch_too_large")
    assert counts(database)[1] == 0


class _Output:
    def __init__(self) -> None:
        self.text = ""

    def write_str(self, text: str) -> None:
        self.text += text


def test_the_local_runtime_records_the_key_that_let_the_request_through(database: Database) -> None:
    runner = FunctionRunner(project_template(), database_url=database.service_url, api_key="k3y")
    event = load_event("lists_create.json")
    del event["requestContext"]["identity"]["apiKeyId"]  # the SAM emulator's events name no key
    answers = []
    for key in ("wrong", "k3y"):
        event["headers"]["x-api-key"] = key
        output = _Output()
        runner.invoke("ListsFunction", json.dumps(event), output)
        answers.append(json.loads(output.text))
    assert answers[0]["statusCode"] == 403
    assert answers[1]["statusCode"] == 201
    assert json.loads(answers[1]["body"])["created_by"] == "api_key:local"
    assert database.query("SELECT actor FROM list_changes") == [("api_key:local",)]


def read_lists(runner: FunctionRunner, limit: str | None) -> list[list[str]]:
    """The names of every page of GET /lists, following next_cursor."""
    pages, cursor = [], None
    while True:
        query = ({"limit": limit} if limit else {}) | ({"cursor": cursor} if cursor else {})
        status, page = call(runner, "lists.json", query=query)
        assert status == 200, page
        assert set(page) == {"lists", "next_cursor"}
        pages.append([s["name"] for s in page["lists"]])
        assert len(pages) <= 20, pages  # a cursor that does not move on would loop for ever
        cursor = page["next_cursor"]
        if cursor is None:
            return pages


def test_the_lists_are_paged_by_name_each_once_and_a_bad_limit_or_cursor_is_refused(
    runner: FunctionRunner, database: Database
) -> None:
    names = ["zeta", "alpha", "mid_1", "mid_10", "mid_2"]
    for name in names:
        create(runner, name, "card")

    # Without parameters: every list (fewer than the default 100) on one page, in the shape it always had
    assert read_lists(runner, None) == [sorted(names)]
    # By two: every list exactly once, in order of name, the last page's cursor null
    assert read_lists(runner, "2") == [["alpha", "mid_1"], ["mid_10", "mid_2"], ["zeta"]]
    # A list created between pages is read when its name comes after the cursor
    status, first = call(runner, "lists.json", query={"limit": "2"})
    create(runner, "beta", "card")  # before the cursor: not on the next pages
    create(runner, "mid_3", "card")
    status, rest = call(runner, "lists.json", query={"limit": "10", "cursor": first["next_cursor"]})
    assert [s["name"] for s in rest["lists"]] == ["mid_10", "mid_2", "mid_3", "zeta"] and rest["next_cursor"] is None

    for query, field in (
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "x" * 301}, "cursor"),
    ):
        status, refused = call(runner, "lists.json", query=query)
        assert status == 422, (query, refused)
        assert field in [d["field"] for d in refused["error"]["details"]], refused
    # A cursor we did not issue, or one of another read (a list's items), is the one invalid_cursor answer
    assert (
        call(runner, "list_items_add.json", {"items": [{"value": "c1"}, {"value": "c2"}]}, {"name": "alpha"})[0] == 200
    )
    status, items = call(runner, "list_items.json", path={"name": "alpha"}, query={"limit": "1"})
    for forged in ("bm9wZQ", items["next_cursor"]):
        status, refused = call(runner, "lists.json", query={"cursor": forged})
        assert (status, refused["error"]["code"]) == (400, "invalid_cursor"), refused
        assert [d["field"] for d in refused["error"]["details"]] == ["cursor"]


def test_a_lists_page_is_cut_by_bytes_and_its_cursor_reads_the_rest(
    runner: FunctionRunner, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A page over the real budget takes about 1,000 lists with the longest names, descriptions and actors (6 kB
    # each on the wire): the cut is shown on 12 of them against a smaller budget, the same code path.
    from txguard.api import response_size

    monkeypatch.setattr(response_size, "BODY_BUDGET", 20_000)
    names = [f"list_{i:02d}" for i in range(12)]
    for name in names:
        status, body = call(
            runner, "lists_create.json", {"name": name, "kind": "card", "description": "\U0001f4b3" * 500}
        )
        assert status == 201, body
    seen, cursor, cut = [], None, []
    while True:
        event = load_event("lists.json")
        query = {"limit": "1000"} | ({"cursor": cursor} if cursor else {})
        event["queryStringParameters"] = query
        event["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()}
        response = json.loads(runner.call("ListsFunction", event).output)
        assert response["statusCode"] == 200
        page = json.loads(response["body"])
        assert len(json.dumps(page)) <= 20_000
        seen += [s["name"] for s in page["lists"]]
        assert len(seen) <= len(names), seen
        headers = {
            **response.get("headers", {}),
            **{k: v[-1] for k, v in response.get("multiValueHeaders", {}).items()},
        }
        cut.append(headers.get("Txguard-Page-Cut"))
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == names
    assert len(cut) >= 4 and set(cut[:-1]) == {"size"} and cut[-1] is None
