"""The analyst console through its handler, on a real database: sessions, CSRF, escaping, the review queue's
claims, the rollups against a direct count, and that pages only read."""

from __future__ import annotations

import json
import re
import threading
import time
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.integration.helpers import T0, apply_rules, rule, store, tx
from txguard import db
from txguard.console import session
from txguard.console.app import handle
from txguard.console.session import Keys
from txguard.storage import console_rollups, review_claims

pytestmark = pytest.mark.integration

KEYS = Keys(signin_key="the-key", session_key=b"k" * 32, secure_cookies=False)
DAY_MS = 86_400_000


def event(
    method: str,
    path: str,
    query: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
    cookie: str | None = None,
) -> dict[str, Any]:
    headers = {"Host": "127.0.0.1"}
    if cookie:
        headers["Cookie"] = f"{session.COOKIE}={cookie}"
    if form is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    return {
        "httpMethod": method,
        "path": "/console" + path,
        "headers": headers,
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in (query or {}).items()} or None,
        "body": None if form is None else urlencode(form),
        "isBase64Encoded": False,
        "requestContext": {"path": "/console" + path},
    }


def sign_in(name: str = "alice") -> tuple[str, str]:
    """(cookie value, a CSRF token of that session)."""
    answer = handle(event("POST", "/signin", form={"analyst": name, "key": "the-key"}), KEYS)
    assert answer.status == 303
    cookie = answer.cookies[0].split(";")[0].split("=", 1)[1]
    current = session.read(KEYS, cookie)
    assert current is not None
    return cookie, session.csrf_token(KEYS, current)


def count(database: Any, sql: str, params: tuple[Any, ...] = ()) -> int:
    return int(database.query(sql, params)[0][0])


def flagged_transactions(n: int) -> list[int]:
    """n accounts each with a spike the default rules flag; returns the flagged ids."""
    batch = []
    for account in range(1, n + 1):
        batch += [tx(account, T0 + i * 60_000, "10.00", "m-1") for i in range(6)]
        batch.append(tx(account, T0 + 7 * 60_000, "5000.00", "m-1"))
    results = store(batch)
    return [r.transaction.transaction_id for r in results if r.decision.fraud]


PAGES = ["/", "/decisions", "/review", "/rules", "/models", "/explore", "/what-if", "/lists"]


def test_every_page_answers_a_signed_in_analyst_and_none_answers_without_a_session(database: Any) -> None:
    flagged = flagged_transactions(2)
    assert flagged, "the default rules should flag the spikes"
    cookie, _ = sign_in()
    for path in [*PAGES, f"/decisions/{flagged[0]}", "/accounts/1", f"/review/{flagged[0]}"]:
        answer = handle(event("GET", path), KEYS)
        assert answer.status == 303 and "/console/signin" in answer.headers["Location"], path
        assert handle(event("GET", path, cookie="forged." + cookie.split(".")[1]), KEYS).status == 303
        page = handle(event("GET", path, cookie=cookie), KEYS)
        assert page.status == 200, (path, page.body)
        assert "Content-Security-Policy" in page.to_event(False)["headers"]
    # Opening a review item without a session claimed nothing.
    assert count(database, "SELECT count(*) FROM review_claims WHERE analyst <> 'alice'") == 0


def test_actions_need_a_session_and_the_sessions_own_fresh_csrf_token(database: Any) -> None:
    flagged = flagged_transactions(1)
    tid = flagged[0]
    cookie, token = sign_in("alice")
    _, bobs_token = sign_in("bob")
    alice = session.read(KEYS, cookie)
    assert alice is not None
    expired = session.csrf_token(KEYS, alice, now=time.time() - session.CSRF_SECONDS - 1)
    label_path = f"/review/{tid}/label"
    assert handle(event("POST", label_path, form={"verdict": "fraud", "csrf": token}), KEYS).status == 401
    for bad in (None, "", "123.forged", bobs_token, expired, token + "x"):
        form = {"verdict": "fraud"} | ({} if bad is None else {"csrf": bad})
        assert handle(event("POST", label_path, form=form, cookie=cookie), KEYS).status == 403, bad
    assert count(database, "SELECT count(*) FROM labels") == 0
    answer = handle(event("POST", label_path, form={"verdict": "fraud", "csrf": token}, cookie=cookie), KEYS)
    assert answer.status == 303
    assert database.query("SELECT transaction_id, fraud, source FROM labels") == [(tid, True, "analyst:alice")]


def test_sign_in_refuses_a_wrong_key_and_sign_out_ends_the_session(database: Any) -> None:
    wrong = handle(event("POST", "/signin", form={"analyst": "alice", "key": "nope"}), KEYS)
    assert wrong.status == 401 and not wrong.cookies
    bad_name = handle(event("POST", "/signin", form={"analyst": "<b>x</b>", "key": "the-key"}), KEYS)
    assert bad_name.status == 401 and not bad_name.cookies
    cookie, token = sign_in()
    assert handle(event("POST", "/signout", form={"csrf": "x"}, cookie=cookie), KEYS).status == 403
    out = handle(event("POST", "/signout", form={"csrf": token}, cookie=cookie), KEYS)
    assert out.status == 303 and "Max-Age=0" in out.cookies[0] and "HttpOnly" in out.cookies[0]
    assert "SameSite=Strict" in out.cookies[0]


def test_stored_markup_is_shown_as_text(database: Any) -> None:
    hostile = "<script>alert(1)</script>"
    database.execute(
        """INSERT INTO transactions (transaction_id, account_id, ts, amount, currency, merchant_id, fraud, score,
                                     reasons, rule_set_version)
           VALUES (77, 5, date_trunc('milliseconds', now()), 12.5, 'EUR', %s, true, 0.9,
                   '[{"rule_id": "spike", "mode": "active", "weight": "0.9", "explanation": "<img src=x>"}]', 1)""",
        (hostile,),
    )
    database.execute(
        "INSERT INTO labels (transaction_id, fraud, source, labelled_at, reason) "
        "VALUES (77, true, %s, date_trunc('milliseconds', now()), %s)",
        ("<i>src</i>", "<b>bold</b>"),
    )
    cookie, _ = sign_in()
    for path in ["/decisions", "/decisions/77", "/accounts/5"]:
        body = str(handle(event("GET", path, cookie=cookie), KEYS).body)
        assert hostile not in body and "<img src=x>" not in body and "<b>bold</b>" not in body, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body or (path == "/decisions/77" and "&lt;" in body)
    detail = str(handle(event("GET", "/decisions/77", cookie=cookie), KEYS).body)
    assert "&lt;b&gt;bold&lt;/b&gt;" in detail and "&lt;img src=x&gt;" in detail


def test_the_decision_and_review_pages_show_the_attributes_the_transaction_carries(database: Any) -> None:
    database.execute(
        """INSERT INTO transactions (transaction_id, account_id, ts, amount, currency, fraud, score, reasons,
                                     rule_set_version, country, device_id, metadata)
           VALUES (78, 5, date_trunc('milliseconds', now()), 12.5, 'EUR', true, 0.9, '[]', 1, 'BR', 'dev-1', %s)""",
        (json.dumps({"campaign": "<b>spring</b>"}),),
    )
    cookie, _ = sign_in()
    for path in ["/decisions/78", "/review/78"]:
        body = str(handle(event("GET", path, cookie=cookie), KEYS).body)
        assert '<tr><th>country</th><td class="attribute">BR</td></tr>' in body, path
        assert '<tr><th>device</th><td class="attribute">dev-1</td></tr>' in body, path
        assert "campaign: &lt;b&gt;spring&lt;/b&gt;" in body and "<b>spring</b>" not in body, path
        assert "<th>channel</th>" not in body, path  # an attribute it does not carry has no row


def test_two_analysts_never_hold_one_review_item(database: Any) -> None:
    tid = flagged_transactions(1)[0]
    alice, _ = sign_in("alice")
    bob, bobs_token = sign_in("bob")
    assert "fraud</button>" in str(handle(event("GET", f"/review/{tid}", cookie=alice), KEYS).body)
    bobs_view = str(handle(event("GET", f"/review/{tid}", cookie=bob), KEYS).body)
    assert "alice is reviewing" in bobs_view and "fraud</button>" not in bobs_view
    refused = handle(
        event("POST", f"/review/{tid}/label", form={"verdict": "genuine", "csrf": bobs_token}, cookie=bob), KEYS
    )
    assert refused.status == 403
    assert count(database, "SELECT count(*) FROM labels") == 0
    # Once alice's claim has expired, bob takes the item over.
    database.execute("UPDATE review_claims SET expires_at = now() - interval '1 second'")
    assert "fraud</button>" in str(handle(event("GET", f"/review/{tid}", cookie=bob), KEYS).body)
    assert database.query("SELECT analyst FROM review_claims") == [("bob",)]


def test_concurrent_claims_on_one_item_leave_exactly_one_holder(database: Any) -> None:
    tid = flagged_transactions(1)[0]
    won: list[tuple[str, bool]] = []
    start = threading.Barrier(8)

    def claim(name: str) -> None:
        holder = db.ConnectionHolder()
        start.wait()
        won.append((name, db.run_in_transaction(lambda cur: review_claims.claim(cur, tid, name), holder=holder)))
        holder.reset()

    threads = [threading.Thread(target=claim, args=(f"analyst{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [name for name, ok in won if ok]
    assert len(winners) == 1
    assert database.query("SELECT analyst FROM review_claims") == [(winners[0],)]


def _direct_counts(database: Any) -> dict[str, Any]:
    """The rollups' numbers counted straight from transactions and labels."""
    hourly = database.query(
        """SELECT date_trunc('hour', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', currency,
                  width_bucket(amount, %s::numeric[]), count(*), sum(amount), count(*) FILTER (WHERE fraud)
           FROM transactions GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""",
        ([str(b) for b in console_rollups.AMOUNT_BANDS],),
    )
    labelled = database.query(
        """WITH f AS (SELECT DISTINCT ON (transaction_id) transaction_id, fraud FROM labels
                      ORDER BY transaction_id, labelled_at DESC, label_id DESC)
           SELECT date_trunc('hour', t.ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', width_bucket(t.amount, %s::numeric[]),
                  t.fraud, count(*), count(*) FILTER (WHERE f.fraud)
           FROM f JOIN transactions t USING (transaction_id) GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""",
        ([str(b) for b in console_rollups.AMOUNT_BANDS],),
    )
    return {"hourly": hourly, "labelled": labelled}


def _rollup_counts(database: Any) -> dict[str, Any]:
    return {
        "hourly": database.query(
            "SELECT hour, currency, amount_band, transactions, amount, flagged FROM console_hourly "
            "WHERE transactions <> 0 ORDER BY 1, 2, 3"
        ),
        "labelled": database.query(
            "SELECT hour, amount_band, flagged, labelled, fraud FROM console_label_hourly "
            "WHERE labelled <> 0 ORDER BY 1, 2, 3"
        ),
    }


def test_rollups_refreshed_in_steps_equal_a_direct_count(database: Any) -> None:
    def refresh() -> None:
        assert db.run_in_transaction(console_rollups.catch_up).caught_up

    def label(tid: int, fraud: bool, hours_later: int) -> None:
        database.execute(
            "INSERT INTO labels (transaction_id, fraud, source, labelled_at) "
            "VALUES (%s, %s, 'chargeback', txguard_ms_to_ts(%s))",
            (tid, fraud, T0 + hours_later * 3_600_000),
        )

    first = store([tx(a, T0 + a * 3_600_000, f"{a * 7}.25", "m-1") for a in range(1, 30)])
    # Steps of 1 ms of stored_at time: the refresh walks through many small steps.
    database.execute("INSERT INTO console_rollup_state (id, refreshed_to, slice_ms) VALUES (1, NULL, 1)")
    ids = [r.transaction.transaction_id for r in first]
    label(ids[0], True, 10)
    label(ids[1], False, 10)
    label(999_999, True, 10)  # its transaction arrives later
    refresh()
    assert _rollup_counts(database) == _direct_counts(database)
    # A later label supersedes, an earlier-dated one does not; a late transaction meets its waiting label.
    label(ids[0], False, 20)
    label(ids[1], True, 5)
    store([tx(40, T0 + 3 * DAY_MS, "4000.00", "m-2", tid=999_999), tx(41, T0 - DAY_MS, "0", None)])
    refresh()
    assert _rollup_counts(database) == _direct_counts(database)
    refresh()  # nothing new: nothing changes
    assert _rollup_counts(database) == _direct_counts(database)


def test_pages_change_nothing_and_what_if_decides_without_storing(database: Any) -> None:
    flagged_transactions(1)
    cookie, token = sign_in()
    before = count(database, "SELECT count(*) FROM transactions"), count(database, "SELECT count(*) FROM labels")
    answer = handle(
        event(
            "GET", "/what-if", query={"decide": "1", "amount": "900", "mean_amount": "10", "count": "20"}, cookie=cookie
        ),
        KEYS,
    )
    assert answer.status == 200 and "Flagged" in str(answer.body)
    backtest = handle(
        event(
            "POST",
            "/rules/backtest",
            form={
                "csrf": token,
                "rules": '{"threshold": "0.5", "rules": '
                '[{"id": "big", "description": "big", "when": "amount > 100", "score": "0.9"}]}',
            },
            cookie=cookie,
        ),
        KEYS,
    )
    assert backtest.status == 200 and "Backtest result" in str(backtest.body)
    assert re.search(r"flagged by the candidate</th><td>1<", str(backtest.body))
    # against the newest rule set with the stored lists, which decides as the stored decisions did (no drift)
    assert re.search(r"flagged now \(baseline: rule set v\d+, the lists as stored\)</th><td>1<", str(backtest.body))
    assert re.search(r"not the candidate.{1,6}s effect\)</th><td>0<", str(backtest.body))
    after = count(database, "SELECT count(*) FROM transactions"), count(database, "SELECT count(*) FROM labels")
    assert before == after


@pytest.mark.parametrize(
    ("path", "query", "named"),
    [
        ("/decisions", {"score_min": "2"}, "score_min"),
        ("/decisions", {"account": "0"}, "account"),
        ("/decisions", {"flagged": "maybe"}, "flagged"),
        ("/decisions", {"merchant": "<b>"}, "merchant"),
        ("/", {"from": "2024-13-01", "to": "2024-12-01"}, "from"),
        ("/explore", {"from": "2024-02-01", "to": "2024-01-01"}, "from"),
        ("/what-if", {"decide": "1", "amount": "abc"}, "amount"),
        ("/what-if", {"decide": "1", "amount": "1e400"}, "amount"),
        ("/what-if", {"decide": "1", "amount": "-5"}, "amount"),
        ("/what-if", {"decide": "1", "amount": "5", "sum_30d": "1" + "0" * 40}, "sum_30d"),
        ("/decisions", {"csv": "nope"}, "csv"),
        ("/decisions", {"acount": "1"}, "acount"),
        ("/models", {"from": "2024-01-01"}, "from"),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it(database: Any, path: str, query: dict[str, str], named: str) -> None:
    cookie, _ = sign_in()
    answer = handle(event("GET", path, query=query, cookie=cookie), KEYS)
    assert answer.status == 400 and f"&#39;{named}&#39;" in str(answer.body), answer.body


def test_every_table_downloads_as_csv(database: Any) -> None:
    flagged_transactions(1)
    cookie, _ = sign_in()
    answer = handle(event("GET", "/", query={"csv": "daily"}, cookie=cookie), KEYS)
    assert answer.status == 200 and answer.content_type.startswith("text/csv")
    lines = str(answer.body).splitlines()
    assert lines[0] == "day,transactions,flagged,flag_rate,labelled_fraud"
    assert sum(int(line.split(",")[1]) for line in lines[1:]) == count(database, "SELECT count(*) FROM transactions")


def test_amounts_keep_their_currency_places(database: Any) -> None:
    store([tx(9, T0, "12.50", "m-1")])
    cookie, _ = sign_in()
    body = str(handle(event("GET", "/accounts/9", cookie=cookie), KEYS).body)
    assert "12.50 EUR" in body
    assert Decimal("12.50")


def test_the_account_page_shows_the_largest_amount_of_each_currency_never_one_over_currencies(database: Any) -> None:
    from txguard.domain import Transaction

    store([tx(8, T0, "30.00", "m-1"), tx(8, T0 + 1000, "7.50", "m-1")])
    store([Transaction(880_001, 8, T0 + 2000, Decimal("7000"), "JPY", "m-1")])
    cookie, _ = sign_in()
    body = str(handle(event("GET", "/accounts/8", cookie=cookie), KEYS).body)
    assert "<tr><th>largest amount</th><td>30.00 EUR, 7000 JPY</td></tr>" in body
    assert "<tr><th>transactions</th><td>3</td></tr>" in body


def test_the_refresh_command_catches_the_rollups_up(database: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from txguard_dev.cli import main

    store([tx(a, T0 + a * 60_000, "20.00", "m-1") for a in range(1, 11)])
    assert main(["console", "refresh", "--database-url", database.admin_url]) == 0
    assert "counted up to" in capsys.readouterr().out
    assert count(database, "SELECT sum(transactions) FROM console_hourly") == 10


def test_the_decision_page_shows_the_features_the_decision_was_taken_on(database: Any) -> None:
    tid = flagged_transactions(1)[0]
    text = database.query("SELECT features::text FROM transactions WHERE transaction_id = %s", (tid,))[0][0]
    stored = json.loads(text, parse_float=Decimal)
    assert stored, "ingest stores the features each decision read"
    cookie, _ = sign_in()
    body = str(handle(event("GET", f"/decisions/{tid}", cookie=cookie), KEYS).body)
    assert "as stored with it" in body
    for name, value in stored.items():
        assert f"<td>{name}</td><td>{value}</td>" in body, name


def test_the_review_queue_lists_review_decisions_first_then_blocked_ones(database: Any) -> None:
    apply_rules(
        database,
        [rule("big", "amount > 1000", "0.5"), rule("huge", "amount > 4000", None, action="block")],
        threshold="0.9",
        review_threshold="0.5",
    )
    results = store([tx(901, T0, "2000.00"), tx(902, T0, "5000.00"), tx(903, T0, "10.00")])
    outcomes = {r.transaction.transaction_id: r.decision.outcome for r in results}
    reviewed = [tid for tid, o in outcomes.items() if o == "review"]
    blocked = [tid for tid, o in outcomes.items() if o == "block"]
    assert len(reviewed) == 1 and len(blocked) == 1
    queue = db.run_in_transaction(lambda cur: review_claims.queue(cur, 10))
    assert [(i.transaction_id, i.outcome) for i in queue] == [(reviewed[0], "review"), (blocked[0], "block")]
    cookie, _ = sign_in()
    page = str(handle(event("GET", "/review", cookie=cookie), KEYS).body)
    assert page.index(f">{reviewed[0]}<") < page.index(f">{blocked[0]}<")
    assert "outcome-review" in page
