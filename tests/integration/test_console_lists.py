"""The console's Lists pages through its handler, on a real database: the lists, one list's items and audit, a CSV
upload stored in one version as console:<analyst>, a bad upload refused whole with its problems shown, removal,
CSRF, and markup in a note shown as text."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import psycopg2
import pytest

from tests.integration.test_console import KEYS, event, sign_in
from txguard.console.app import handle
from txguard.lists import ListItem
from txguard.storage import lists

pytestmark = pytest.mark.integration


@pytest.fixture
def blocked_cards(database: Any) -> str:
    conn = psycopg2.connect(database.service_url)
    try:
        with conn, conn.cursor() as cur:
            lists.create(cur, "blocked_cards", "card", "block", "confirmed stolen", "setup")
            lists.add_items(cur, "blocked_cards", [ListItem("card_1", None, "<b>chargeback</b>")], "setup")
    finally:
        conn.close()
    return "blocked_cards"


def state(database: Any) -> tuple[Any, ...]:
    (row,) = database.query(
        "SELECT (SELECT version FROM lists), (SELECT count(*) FROM list_items), (SELECT count(*) FROM list_changes)"
    )
    return row


def test_the_lists_page_and_a_lists_page_show_items_and_audit(database: Any, blocked_cards: str) -> None:
    cookie, _ = sign_in()
    answer = handle(event("GET", "/lists", cookie=cookie), KEYS)
    assert answer.status == 200
    assert 'href="/console/lists/blocked_cards"' in answer.body and ">block<" in answer.body
    answer = handle(event("GET", "/lists/blocked_cards", cookie=cookie), KEYS)
    assert answer.status == 200
    assert "A card list, action block, version 2, 1 items." in answer.body
    assert "&lt;b&gt;chargeback&lt;/b&gt;" in answer.body and "<b>chargeback</b>" not in answer.body
    assert ">setup<" in answer.body and ">create<" in answer.body and ">add<" in answer.body
    for path, status in (("/lists/nope", 404), ("/lists/Bad-Name", 404)):
        assert handle(event("GET", path, cookie=cookie), KEYS).status == status
    assert (
        handle(event("GET", "/lists/blocked_cards", {"value": "4111111111111111"}, cookie=cookie), KEYS).status == 400
    )
    assert handle(event("GET", "/lists/blocked_cards", cookie=None), KEYS).status == 303


def test_an_upload_is_one_audited_version_and_a_bad_one_stores_nothing(database: Any, blocked_cards: str) -> None:
    cookie, csrf = sign_in("alice")
    expiry = datetime.fromtimestamp(time.time() + 3600, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    text = f"value,expires_at,note\ncard_2,{expiry},ring\ncard_3,,\ncard_1,,<b>chargeback</b>\n"
    answer = handle(event("POST", "/lists/blocked_cards/upload", form={"csrf": csrf, "csv": text}, cookie=cookie), KEYS)
    assert answer.status == 303 and answer.headers["Location"].endswith("/lists/blocked_cards?done=uploaded")
    assert state(database) == (3, 3, 3)
    assert database.query("SELECT actor, cardinality(item_values) FROM list_changes WHERE version = 3") == [
        ("console:alice", 2)
    ]

    before = state(database)
    bad = "value,expires_at,note\ncard_4,,\n4111111111111111,,\ncard_5,yesterday,\ncard_6\n"
    answer = handle(event("POST", "/lists/blocked_cards/upload", form={"csrf": csrf, "csv": bad}, cookie=cookie), KEYS)
    assert answer.status == 422
    assert "Nothing was stored: 3 problem(s)." in answer.body
    assert "card number" in answer.body and "yesterday" in answer.body and "the row has 1 cells" in answer.body
    # The problem shows the value masked, as every refusal does (the pasted text is given back as it was).
    assert '<td class="value">411111******1111</td>' in answer.body
    for headerless in ("card_4\n", ""):
        answer = handle(
            event("POST", "/lists/blocked_cards/upload", form={"csrf": csrf, "csv": headerless}, cookie=cookie), KEYS
        )
        assert answer.status == 422
    forged = handle(
        event("POST", "/lists/blocked_cards/upload", form={"csrf": "forged", "csv": "value\ncard_9\n"}, cookie=cookie),
        KEYS,
    )
    assert forged.status == 403
    assert state(database) == before

    answer = handle(
        event("POST", "/lists/blocked_cards/remove", form={"csrf": csrf, "values": "card_2\ncard_8\n"}, cookie=cookie),
        KEYS,
    )
    assert answer.status == 303 and answer.headers["Location"].endswith("done=removed")
    assert database.query("SELECT value FROM list_items ORDER BY value") == [("card_1",), ("card_3",)]
    assert database.query("SELECT item_values FROM list_changes WHERE operation = 'remove'") == [(["card_2"],)]
