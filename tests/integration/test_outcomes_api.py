"""Graded outcomes through the API: allow and block lists before everything (each match explained, an expired item
no longer applying), review decisions listed by GET /is_fraud?outcome=review, FraudDetected details carrying the
outcome, and rule snoozes (POST/GET/DELETE /rules/{rule_id}/snoozes) applied at ingest and recorded."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

from tests.conftest import Database, load_event, project_template
from tests.integration.helpers import apply_rules, rule
from txguard.lists import ListItem
from txguard.storage import lists as list_storage
from txguard_dev.local.runner import FunctionRunner

pytestmark = pytest.mark.integration

T = 1714564800000
HOUR = 3_600_000


@pytest.fixture
def runner(database: Database) -> Iterator[FunctionRunner]:
    yield FunctionRunner(project_template(), database_url=database.service_url)


def call(
    runner: FunctionRunner,
    function: str,
    method: str,
    path: str,
    body: Any = None,
    query: dict[str, str] | None = None,
    path_parameters: dict[str, str] | None = None,
) -> tuple[int, Any]:
    event = load_event("store_data.json") | {
        "httpMethod": method,
        "path": path,
        "resource": path,
        "body": None if body is None else json.dumps(body),
        "queryStringParameters": query,
        "multiValueQueryStringParameters": None if query is None else {k: [v] for k, v in query.items()},
        "pathParameters": path_parameters,
    }
    result = runner.call(function, event)
    assert not result.failed, result.output
    response = json.loads(result.output)
    return response["statusCode"], json.loads(response["body"])


def store(runner: FunctionRunner, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    status, body = call(runner, "IngestFunction", "POST", "/store_data", {"transactions": items})
    assert status == 201, body
    return [r["decision"] for r in body["results"]]


def tx(tid: int, account: int = 5, amount: str = "10.00", **attributes: Any) -> dict[str, Any]:
    return {"account_id": account, "transaction_id": tid, "timestamp": T + tid * 1000, "amount": amount} | attributes


def is_fraud(runner: FunctionRunner, account: int, **query: str) -> dict[str, Any]:
    status, body = call(
        runner,
        "DetectFunction",
        "GET",
        f"/is_fraud/{account}",
        query=query or None,
        path_parameters={"account": str(account)},
    )
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def make_list(database: Database, name: str, kind: str, action: str, *items: ListItem) -> None:
    conn = psycopg2.connect(database.admin_url)
    try:
        with conn, conn.cursor() as cur:
            list_storage.create(cur, name, kind, action, None, "tests")
            list_storage.add_items(cur, name, list(items), "tests")
    finally:
        conn.close()


def in_a_day() -> int:
    return int(time.time() * 1000) + 24 * HOUR


def test_block_lists_block_and_an_allow_list_allows_whatever_the_score_each_explained(
    runner: FunctionRunner, database: Database
) -> None:
    # Given a rule that flags any amount over 100, an allow list of accounts and block lists of merchants and cards
    apply_rules(database, [rule("big", "amount > 100")])
    expiry = in_a_day()
    make_list(database, "vip_accounts", "account", "allow", ListItem("7"))
    make_list(database, "bad_merchants", "merchant", "block", ListItem("m_bad", None, "chargebacks"))
    make_list(database, "stolen_cards", "card", "block", ListItem("tok_1", expiry))

    # When transactions of small amounts match a block list, and a large one comes from the allow-listed account
    decisions = store(
        runner,
        [
            tx(1, 5, "10.00", merchant_id="m_bad"),
            tx(2, 6, "10.00", card_id="tok_1"),
            tx(3, 7, "500.00", card_id="tok_1"),
            tx(4, 8, "500.00"),
            tx(5, 9, "10.00"),
        ],
    )

    # Then each list decides, and says why; the rule's verdict is kept in the reasons
    merchant, card, vip, plain_block, plain_allow = decisions
    assert (merchant["outcome"], merchant["fraud"]) == ("block", True)
    assert merchant["reasons"][0]["mode"] == "list"
    assert merchant["reasons"][0]["rule_id"] == "list:bad_merchants"
    assert merchant["reasons"][0]["explanation"] == "merchant_id m_bad is in block list bad_merchants"
    assert (card["outcome"], card["fraud"]) == ("block", True)
    assert card["reasons"][0]["explanation"].startswith("card_id tok_1 is in block list stolen_cards, until 20")
    assert (vip["outcome"], vip["fraud"]) == ("allow", False)  # the allow list comes before the block list
    assert vip["score"] == "1.0000"
    assert vip["reasons"][0]["explanation"] == (
        "allowed by list vip_accounts: account_id 7 is in allow list vip_accounts; "
        "without it: block (a block list matched)"
    )
    # The block list the allow list overrode is still shown: a stolen card on a trusted account.
    assert vip["reasons"][1]["explanation"].startswith("card_id tok_1 is in block list stolen_cards, until 20")
    assert vip["reasons"][1]["explanation"].endswith("; overridden by allow list vip_accounts")
    assert [r["rule_id"] for r in vip["reasons"]] == ["list:vip_accounts", "list:stolen_cards", "big"]
    assert (plain_block["outcome"], plain_allow["outcome"]) == ("block", "allow")

    # And GET /is_fraud shows them by outcome
    assert [e["transaction_id"] for e in is_fraud(runner, 6)["events"]] == [2]
    assert is_fraud(runner, 7)["fraud"] is False
    assert [e["outcome"] for e in is_fraud(runner, 7, outcome="allow")["events"]] == ["allow"]

    # When the card's item has expired, it no longer applies
    database.execute(
        "UPDATE list_items SET expires_at = date_trunc('milliseconds', now()) - interval '1 second' "
        "WHERE value = 'tok_1'"
    )
    (later,) = store(runner, [tx(6, 6, "10.00", card_id="tok_1")])
    assert (later["outcome"], later["reasons"]) == ("allow", [])


def test_review_decisions_are_stored_listed_by_outcome_and_raise_no_fraud_detected_event(
    runner: FunctionRunner, database: Database
) -> None:
    apply_rules(
        database,
        [
            rule("medium", "amount > 100", "0.5"),
            rule("manual", "amount > 5000", None, action="review"),
            rule("huge", "amount > 9000", None, action="block"),
        ],
        threshold="0.9",
        review_threshold="0.4",
    )
    decisions = store(runner, [tx(1, 11, "200.00"), tx(2, 11, "6000.00"), tx(3, 11, "9500.00"), tx(4, 11, "1.00")])
    assert [(d["outcome"], d["fraud"]) for d in decisions] == [
        ("review", False),
        ("review", False),
        ("block", True),
        ("allow", False),
    ]
    assert decisions[2]["reasons"][0]["explanation"].startswith("blocks: amount 9500.00")
    reviewed = is_fraud(runner, 11, outcome="review")
    assert [e["transaction_id"] for e in reviewed["events"]] == [2, 1]
    assert all(e["outcome"] == "review" for e in reviewed["events"])
    assert [e["transaction_id"] for e in is_fraud(runner, 11)["events"]] == [3]
    assert database.query("SELECT transaction_id, outcome FROM transactions WHERE account_id = 11 ORDER BY 1") == [
        (1, "review"),
        (2, "review"),
        (3, "block"),
        (4, "allow"),
    ]
    # A bad outcome is refused naming the parameter
    status, body = call(
        runner,
        "DetectFunction",
        "GET",
        "/is_fraud/11",
        query={"outcome": "maybe"},
        path_parameters={"account": "11"},
    )
    assert status == 422 and "outcome" in json.dumps(body)


def snooze(runner: FunctionRunner, rule_id: str, body: dict[str, Any]) -> tuple[int, Any]:
    return call(
        runner,
        "IngestFunction",
        "POST",
        f"/rules/{rule_id}/snoozes",
        body,
        path_parameters={"rule_id": rule_id},
    )


def test_a_snoozed_rule_does_not_fire_for_its_entity_until_lifted_and_every_change_is_recorded(
    runner: FunctionRunner, database: Database
) -> None:
    apply_rules(database, [rule("big", "amount > 100")])
    until = in_a_day()

    # When the rule is snoozed for account 21 (the same snooze twice: stored once)
    request = {"kind": "account", "value": "21", "until": until, "note": "known traveller", "by": "ana"}
    status, body = snooze(runner, "big", request)
    assert status == 201 and body["status"] == "stored"
    assert body["snooze"] | {"created_at": 0} == {
        "rule_id": "big",
        "kind": "account",
        "value": "21",
        "until": until,
        "note": "known traveller",
        "by": "ana",
        "created_at": 0,
    }
    assert snooze(runner, "big", request)[1]["status"] == "unchanged"

    # Then it does not fire for that account, and the decision says which snooze suppressed it; others still fire
    snoozed, other = store(runner, [tx(1, 21, "500.00"), tx(2, 22, "500.00")])
    assert (snoozed["outcome"], snoozed["score"]) == ("allow", "0.0000")
    (reason,) = snoozed["reasons"]
    assert reason["mode"] == "snoozed" and reason["rule_id"] == "big"
    assert reason["explanation"].startswith("snoozed for account 21 until ")
    assert "by ana: known traveller; it would have fired: amount 500.00 is more than 100" in reason["explanation"]
    assert other["outcome"] == "block"

    # When it is lifted, it fires again; the list of changes shows snoozed then lifted
    status, lifted = call(
        runner,
        "IngestFunction",
        "DELETE",
        "/rules/big/snoozes/account/21",
        query={"by": "bo"},
        path_parameters={"rule_id": "big", "kind": "account", "value": "21"},
    )
    assert status == 200 and lifted["value"] == "21"
    (again,) = store(runner, [tx(3, 21, "500.00")])
    assert again["outcome"] == "block"
    status, listed = call(runner, "IngestFunction", "GET", "/rules/big/snoozes", path_parameters={"rule_id": "big"})
    assert status == 200 and listed["snoozes"] == []
    assert [(c["change"], c["by"]) for c in listed["changes"]] == [("snoozed", "ana"), ("lifted", "bo")]


@pytest.mark.parametrize(
    ("rule_id", "body", "status", "field"),
    [
        ("nope", {"kind": "account", "value": "21", "until": 1, "by": "ana"}, 404, "rule_id"),
        ("big", {"kind": "account", "value": "-3", "until": 0, "by": "ana"}, 422, "value"),
        ("big", {"kind": "country", "value": "XX", "by": "ana", "until": 1}, 422, "value"),
        ("big", {"kind": "planet", "value": "21", "by": "ana", "until": 1}, 422, "kind"),
        ("big", {"kind": "account", "value": "21", "by": "ana", "until": 1000}, 422, "until"),
        ("big", {"kind": "account", "value": "21", "until": 1000, "by": "ana", "extra": 1}, 422, "extra"),
        ("big", {"kind": "account", "value": "21", "until": 1, "by": "ana", "note": "a\u0000b"}, 422, "note"),
        ("big", {"kind": "account", "value": "21", "by": "ana", "for_days": 367}, 422, "for_days"),
        # no end, or two: the refused field is named (not the whole body)
        ("big", {"kind": "account", "value": "21", "by": "ana"}, 422, "for_days"),
        ("big", {"kind": "account", "value": "21", "by": "ana", "until": 1, "for_days": 2}, 422, "for_days"),
    ],
)
def test_a_bad_snooze_is_refused_and_nothing_is_stored(
    runner: FunctionRunner, database: Database, rule_id: str, body: dict[str, Any], status: int, field: str
) -> None:
    apply_rules(database, [rule("big", "amount > 100")])
    if body.get("until") in (0, 1):
        body = body | {"until": in_a_day()}
    counts = "SELECT (SELECT count(*) FROM rule_snoozes), (SELECT count(*) FROM rule_snooze_changes)"
    before = database.query(counts)
    got, answer = snooze(runner, rule_id, body)
    assert got == status, answer
    assert field in json.dumps(answer["error"])
    if status == 422:  # the refused field is named as such, with its own value
        assert field in [d["field"] for d in answer["error"]["details"]], answer
    assert database.query(counts) == before


def test_the_cli_snoozes_lists_and_lifts_and_refuses_a_bad_snooze_with_exit_2(
    database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    from txguard import db
    from txguard_dev.cli import main

    def txguard(*argv: str) -> tuple[int, str, str]:
        db.reset_connection()
        code = main([*argv[:2], "--database-url", database.admin_url, *argv[2:]])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    apply_rules(database, [rule("big", "amount > 100")])
    code, out, _ = txguard(
        "rules",
        "snooze",
        "big",
        "--kind",
        "card",
        "--value",
        "tok_9",
        "--until",
        str(in_a_day()),
        "--note",
        "test card",
        "--by",
        "ana",
    )
    assert code == 0 and out.startswith("stored: big snoozed for card tok_9 until ")
    code, out, _ = txguard("rules", "snoozes", "big")
    assert code == 0 and "snoozed for card tok_9" in out and "snoozed  card tok_9" in out
    code, _, err = txguard("rules", "snooze", "big", "--kind", "country", "--value", "XX", "--until", str(in_a_day()))
    assert code == 2 and "--value" in err and "XX" in err
    code, _, err = txguard("rules", "snooze", "nope", "--kind", "card", "--value", "tok_9", "--until", str(in_a_day()))
    assert code == 2 and "rule nope is not in the newest rule set" in err
    apply_rules(
        database,
        [rule("big", "amount > 100"), rule("look", "amount > 50", None, action="review")],
        review_threshold="0.3",
    )
    code, out, _ = txguard("rules", "list")
    assert code == 0 and "(threshold 0.5, review from 0.3)" in out
    assert "look                         enabled  active review  amount > 50" in out
    code, out, _ = txguard("rules", "unsnooze", "big", "--kind", "card", "--value", "tok_9", "--by", "bo")
    assert code == 0 and out.startswith("lifted: big")
    assert database.query("SELECT change, changed_by FROM rule_snooze_changes WHERE value = 'tok_9' ORDER BY 1") == [
        ("lifted", "bo"),
        ("snoozed", "ana"),
    ]


def test_the_sample_snooze_events_snooze_list_and_lift_as_the_local_banner_shows_them(
    runner: FunctionRunner, database: Database
) -> None:
    # `make run` prints a curl per route from events/: these three must work against the default rule set.
    def send(name: str) -> tuple[int, Any]:
        result = runner.call("IngestFunction", load_event(name))
        assert not result.failed, result.output
        response = json.loads(result.output)
        return response["statusCode"], json.loads(response["body"])

    status, created = send("rule_snooze.json")
    assert status == 201, created
    status, listed = send("rule_snoozes.json")
    assert status == 200 and [(s["kind"], s["value"]) for s in listed["snoozes"]] == [("account", "42")]
    status, lifted = send("rule_snooze_lift.json")
    assert status == 200, lifted
    assert database.query("SELECT count(*) FROM rule_snoozes") == [(0,)]


def read_snoozes(runner: FunctionRunner, rule_id: str, query: dict[str, str]) -> list[list[tuple[str, str]]]:
    """The (kind, value) of every page of GET /rules/{rule_id}/snoozes, following next_cursor; every page carries
    the same changes."""
    pages, cursor, changes = [], None, None
    while True:
        status, page = call(
            runner,
            "IngestFunction",
            "GET",
            f"/rules/{rule_id}/snoozes",
            query=query | ({"cursor": cursor} if cursor else {}),
            path_parameters={"rule_id": rule_id},
        )
        assert status == 200, page
        assert set(page) == {"snoozes", "next_cursor", "changes"}
        assert changes is None or page["changes"] == changes
        changes = page["changes"]
        pages.append([(s["kind"], s["value"]) for s in page["snoozes"]])
        assert len(pages) <= 20, pages  # a cursor that does not move on would loop for ever
        cursor = page["next_cursor"]
        if cursor is None:
            return pages


def flat(pages: list[list[tuple[str, str]]]) -> list[tuple[str, str]]:
    return [entry for page in pages for entry in page]


def test_a_rules_snoozes_are_paged_soonest_end_first_each_once_and_a_bad_limit_or_cursor_is_refused(
    runner: FunctionRunner, database: Database
) -> None:
    apply_rules(database, [rule("big", "amount > 100")])
    soon, later = in_a_day(), in_a_day() + HOUR
    for kind, value, until in (
        ("country", "FR", soon),
        ("account", "21", later),
        ("card", "tok_1", soon),
        ("account", "22", soon),
        ("account", "9", later),
    ):
        assert snooze(runner, "big", {"kind": kind, "value": value, "until": until, "by": "ana"})[0] == 201
    # Two ending a microsecond apart (the API takes milliseconds; the table holds microseconds): the cursor
    # keeps the microsecond, so neither is skipped nor read twice.
    database.execute(
        """INSERT INTO rule_snoozes (rule_id, kind, value, until, created_by) VALUES
           ('big', 'device', 'd1', to_timestamp(%s / 1000.0) + interval '2 hours 1 microsecond', 'ana'),
           ('big', 'device', 'd0', to_timestamp(%s / 1000.0) + interval '2 hours 2 microseconds', 'ana')""",
        (soon, soon),
    )
    expected = [
        ("account", "22"),
        ("card", "tok_1"),
        ("country", "FR"),
        ("account", "21"),
        ("account", "9"),
        ("device", "d1"),
        ("device", "d0"),
    ]
    assert read_snoozes(runner, "big", {}) == [expected]  # the first page without parameters, as before
    assert flat(read_snoozes(runner, "big", {"limit": "1"})) == expected
    pages = read_snoozes(runner, "big", {"limit": "3"})
    assert [len(p) for p in pages] == [3, 3, 1] and flat(pages) == expected
    # An ended snooze is read only with expired=true, in its place in the order
    database.execute("UPDATE rule_snoozes SET until = now() - interval '1 hour' WHERE value = 'FR'")
    assert flat(read_snoozes(runner, "big", {"limit": "2"})) == [e for e in expected if e[1] != "FR"]
    ended_first = [("country", "FR")] + [e for e in expected if e[1] != "FR"]
    assert flat(read_snoozes(runner, "big", {"limit": "2", "expired": "true"})) == ended_first

    path = {"rule_id": "big"}
    for query, status, field in (
        ({"limit": "0"}, 422, "limit"),
        ({"limit": "1001"}, 422, "limit"),
        ({"limit": "2.5"}, 422, "limit"),
        ({"cursor": "x" * 301}, 422, "cursor"),
        ({"cursor": "bm9wZQ"}, 400, "cursor"),
        ({"cursor": "czE3OmFjY291bnQ"}, 400, "cursor"),  # "s17:account": no value
        ({"cursor": "bGJpZw"}, 400, "cursor"),  # "lbig": a cursor of GET /lists
    ):
        got, refused = call(runner, "IngestFunction", "GET", "/rules/big/snoozes", query=query, path_parameters=path)
        assert got == status, (query, refused)
        assert field in [d["field"] for d in refused["error"]["details"]], refused
