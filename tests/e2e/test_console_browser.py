"""The analyst console in headless Chromium (Debian's chromium, driven by Playwright) against `txguard local`:
sign in, filter decisions, open an account, label from the review queue, promote a model, and what no session,
a forged CSRF token or stored markup can do."""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.conftest import admin_query, scratch_database
from tests.e2e.conftest import LocalService, start_local, stop_local
from tests.integration.test_console_models import FEATURES, THRESHOLDS, report, tiny_dump
from txguard_dev.local.postgres import Server

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PAGES = [
    "/console",
    "/console/decisions",
    "/console/review",
    "/console/rules",
    "/console/models",
    "/console/models/1",
    "/console/models/train",
    "/console/explore",
    "/console/what-if",
    "/console/lists",
]
HOSTILE_MERCHANT = "<script>document.title='owned'</script>"
T0 = 1_714_564_800_000


@pytest.fixture(scope="module")
def console_database(pg_server: Server) -> Iterator[str]:
    """A database of this module's own: the labels written here must not meet other suites' data."""
    with scratch_database(pg_server, "txguard_console_e2e") as url:
        yield url


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The artifact directory `txguard local` reads models from (TXGUARD_MODEL_DIR), the module's own."""
    directory = str(tmp_path_factory.mktemp("models"))
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("TXGUARD_MODEL_BUCKET", raising=False)
        patch.setenv("TXGUARD_MODEL_DIR", directory)
        yield directory


@pytest.fixture(scope="module")
def local_service(
    console_database: str, model_dir: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalService]:
    """`txguard local` as `make run` starts it, on the module's own database and model directory."""
    assert os.environ["TXGUARD_MODEL_DIR"] == model_dir
    service = start_local(
        ["--api-key", "console-e2e-key"], console_database, tmp_path_factory.mktemp("console") / "l.log"
    )
    yield service
    assert stop_local(service) == 0, service.log()


@pytest.fixture(scope="module")
def tiny_model(console_database: str, model_dir: str) -> int:
    """A one-tree model registered as a candidate, its artifact in the service's model directory."""
    import psycopg2

    from txguard.models.artifact import encode_artifact
    from txguard.models.artifact_store import DirectoryStore
    from txguard.storage import models as registry

    sha = DirectoryStore(model_dir).put(encode_artifact(FEATURES, tiny_dump(), 0.5, lightgbm_version="4.6.0"))
    day = 86_400_000
    new = registry.NewModel(
        name="browser-candidate",
        artifact_sha256=sha,
        features=FEATURES,
        train_from=T0 - 60 * day,
        train_to=T0 - 37 * day,
        gap_days=7,
        valid_from=T0 - 30 * day,
        valid_to=T0,
        label_cutoff=T0,
        seed=1,
        params={},
        metrics=report(0.93),
        thresholds=THRESHOLDS,
        created_by="e2e",
    )
    conn = psycopg2.connect(console_database)
    try:
        with conn, conn.cursor() as cur:
            return registry.register(cur, new).version
    finally:
        conn.close()


@pytest.fixture(scope="module")
def e2e_database_url(console_database: str) -> str:
    return console_database


@pytest.fixture(scope="module")
def console_data(local_service: LocalService, e2e_database_url: str) -> dict[str, Any]:
    """Two accounts the default rules flag (a spike after small payments), and one transaction whose merchant
    id holds markup (written past the API, which would refuse it: the page must still show it as text)."""
    batch = []
    for account in (7001, 7002):
        batch += [
            {
                "account_id": account,
                "transaction_id": account * 100 + i,
                "timestamp": T0 + i * 60_000,
                "amount": "10.00",
                "merchant_id": "m-1",
            }
            for i in range(6)
        ]
        batch.append(
            {
                "account_id": account,
                "transaction_id": account * 100 + 9,
                "timestamp": T0 + 9 * 60_000,
                "amount": "4000.00",
                "merchant_id": "m-2",
            }
        )
    answer = local_service.request("POST", "/store_data", {"transactions": batch})
    assert answer.status == 201, answer.body
    flagged = [r["transaction_id"] for r in answer.body["results"] if r["decision"]["fraud"]]
    assert flagged
    admin_query(
        e2e_database_url,
        """INSERT INTO transactions (transaction_id, account_id, ts, amount, currency, merchant_id, fraud, score,
                                     reasons, rule_set_version)
           VALUES (7003001, 7003, txguard_ms_to_ts(%s), 1.00, 'EUR', %s, false, 0, '[]', 1)""",
        (T0, HOSTILE_MERCHANT),
    )
    return {"flagged": flagged}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, local_service: LocalService) -> Iterator[Any]:
    context = browser.new_context(base_url=local_service.url)
    tab = context.new_page()
    yield tab
    context.close()


def sign_in(page: Any, key: str, name: str = "alice") -> None:
    page.goto("/console")
    page.fill("input[name=analyst]", name)
    page.fill("input[name=key]", key)
    page.click("button[type=submit]")


def test_signing_in_with_the_api_key_shows_the_overview(
    page: Any, local_service: LocalService, console_data: Any
) -> None:
    sign_in(page, "not-the-key")
    assert "not the console's sign-in key" in page.content()
    sign_in(page, str(local_service.api_key))
    assert page.url.endswith("/console")
    assert page.locator("h1").inner_text() == "Overview"
    assert page.locator("svg.chart").count() == 3
    cookie = next(c for c in page.context.cookies() if c["name"] == "txguard_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"


def test_filtering_decisions_and_opening_an_account(page: Any, local_service: LocalService, console_data: Any) -> None:
    sign_in(page, str(local_service.api_key))
    page.goto("/console/decisions")
    page.select_option("select[name=flagged]", "yes")
    page.fill("input[name=account]", "7001")
    page.click("form.filters button[type=submit]")
    rows = page.locator("table[data-table=decisions] tbody tr")
    assert rows.count() >= 1
    # A flagged decision's outcome is block, and the row says so.
    assert all("block" in rows.nth(i).locator("td").nth(5).inner_text() for i in range(rows.count()))
    assert all("7001" in rows.nth(i).inner_text() for i in range(rows.count()))
    page.click("table[data-table=decisions] tbody tr >> nth=0 >> a >> nth=1")
    assert page.locator("h1").inner_text() == "Account 7001"
    assert page.locator("svg.chart circle").count() == 7


def test_labelling_from_the_review_queue_writes_a_label_that_get_labels_shows(
    page: Any, local_service: LocalService, console_data: Any
) -> None:
    sign_in(page, str(local_service.api_key), "alice")
    page.goto("/console/review")
    first = page.locator("a.review-item").first
    tid = int(first.inner_text())
    first.click()
    page.click("button.fraud")
    assert "Labelled transaction" in page.content()
    answer = local_service.request("GET", f"/labels?transaction_id={tid}")
    assert answer.status == 200, answer.body
    assert [(x["fraud"], x["source"], x["in_force"]) for x in answer.body["labels"]] == [(True, "analyst:alice", True)]
    assert (
        str(tid) not in page.locator("table[data-table=open]").inner_text()
        if page.locator("table[data-table=open]").count()
        else True
    )


def test_two_analysts_do_not_get_the_same_item(browser: Any, local_service: LocalService, console_data: Any) -> None:
    alice = browser.new_context(base_url=local_service.url).new_page()
    bob = browser.new_context(base_url=local_service.url).new_page()
    sign_in(alice, str(local_service.api_key), "alice")
    sign_in(bob, str(local_service.api_key), "bob")
    alice.goto("/console/review")
    tid = alice.locator("a.review-item").first.inner_text()
    alice.click(f"text={tid}")
    assert alice.locator("button.fraud").count() == 1
    bob.goto(f"/console/review/{tid}")
    assert "alice is reviewing" in bob.locator("#held").inner_text()
    assert bob.locator("button.fraud").count() == 0


def test_promoting_a_model_with_confirmation_makes_it_champion_in_a_new_detector_version(
    page: Any, local_service: LocalService, console_data: Any, tiny_model: int, e2e_database_url: str
) -> None:
    newest = "SELECT version, champion_model_version, created_by FROM detector_versions ORDER BY version DESC LIMIT 1"
    before = admin_query(e2e_database_url, newest)[0]
    sign_in(page, str(local_service.api_key), "alice")
    page.goto("/console/models")
    row = page.locator("table[data-table=models] tbody tr", has_text="browser-candidate")
    assert "candidate" in row.inner_text()
    row.locator("a").first.click()
    assert page.locator("h1").inner_text() == f"Model {tiny_model}: browser-candidate"
    assert page.locator("svg.chart").count() == 3
    page.click("button.promote")
    assert "Nothing has changed yet" in page.locator("#what").inner_text()
    assert admin_query(e2e_database_url, newest)[0] == before
    page.click("button.confirm")
    assert "is now champion" in page.locator("#done").inner_text()
    after = admin_query(e2e_database_url, newest)[0]
    assert after[0] > before[0] and after[1:] == (tiny_model, "analyst:alice")
    page.goto("/console/models")
    assert f"champion model {tiny_model}" in page.locator("#current-detector").inner_text()
    assert "champion" in page.locator("table[data-table=models] tbody tr", has_text="browser-candidate").inner_text()


def test_no_page_answers_without_a_session(page: Any, local_service: LocalService) -> None:
    for path in PAGES:
        page.goto(path)
        assert "/console/signin" in page.url, path
        assert page.locator("input[name=key]").count() == 1
    for path in (
        "/console/review/1/label",
        "/console/rules/backtest",
        "/console/signout",
        "/console/models/1/promote",
        "/console/models/rollback",
        "/console/models/train",
    ):
        status = _post(local_service.url + path, {"csrf": "x", "verdict": "fraud"}, cookie=None)
        assert status in (401, 403), path


def _post(url: str, form: dict[str, str], cookie: str | None) -> int:
    headers = {"content-type": "application/x-www-form-urlencoded"} | ({"cookie": cookie} if cookie else {})
    request = urllib.request.Request(url, data=urlencode(form).encode(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_forged_missing_or_expired_csrf_tokens_change_nothing(
    page: Any, local_service: LocalService, console_data: Any, e2e_database_url: str
) -> None:
    sign_in(page, str(local_service.api_key), "carol")
    cookie = next(c for c in page.context.cookies() if c["name"] == "txguard_console")
    header = f"txguard_console={cookie['value']}"
    target = console_data["flagged"][-1]
    before = admin_query(e2e_database_url, "SELECT count(*) FROM labels")
    url = f"{local_service.url}/console/review/{target}/label"
    for token in (None, "forged", "1000000000.AAAA", "1.x"):
        form = {"verdict": "genuine"} | ({} if token is None else {"csrf": token})
        assert _post(url, form, header) == 403, token
    assert admin_query(e2e_database_url, "SELECT count(*) FROM labels") == before


def test_markup_in_stored_text_shows_as_text(page: Any, local_service: LocalService, console_data: Any) -> None:
    sign_in(page, str(local_service.api_key))
    page.goto("/console/accounts/7003")
    assert page.title() != "owned"
    assert HOSTILE_MERCHANT in page.locator("td.merchant").first.inner_text()
    assert page.locator("main script").count() == 0


def test_the_pages_carry_a_script_free_content_security_policy(page: Any, local_service: LocalService) -> None:
    answer = page.goto("/console/signin")
    csp = answer.headers["content-security-policy"]
    assert "script-src" not in csp and "default-src 'none'" in csp
    assert answer.headers["x-frame-options"] == "DENY"


def test_a_csv_upload_on_a_lists_page_adds_its_items_in_one_audited_version_and_a_bad_one_nothing(
    page: Any, local_service: LocalService, e2e_database_url: str
) -> None:
    created = local_service.request("POST", "/lists", {"name": "browser_cards", "kind": "card", "action": "block"})
    assert created.status in (200, 201), created.body
    sign_in(page, str(local_service.api_key), name="carol")
    page.goto("/console/lists")
    page.click("table[data-table=lists] >> text=browser_cards")
    assert page.locator("h1").inner_text() == "List browser_cards"
    before = admin_query(e2e_database_url, "SELECT version FROM lists WHERE name = 'browser_cards'")[0][0]

    page.fill("textarea[name=csv]", "value,expires_at,note\ncard_a,,first\n4111111111111111,,\ncard_b,yesterday,\n")
    page.click("button#upload")
    assert "Nothing was stored: 2 problem(s)." in page.locator("#problems").inner_text()
    assert page.locator("table[data-table=problems] tbody tr").count() == 2
    assert admin_query(e2e_database_url, "SELECT version FROM lists WHERE name = 'browser_cards'")[0][0] == before

    page.fill("textarea[name=csv]", "value,note\ncard_a,first\ncard_b,second\n")
    page.click("button#upload")
    assert page.locator("#done").inner_text() == f"Stored in version {before + 1}."
    assert page.locator("table[data-table=items] tbody tr").count() == 2
    audit = page.locator("table[data-table=changes] tbody tr >> nth=0").inner_text()
    assert "console:carol" in audit and "card_a" in audit and "card_b" in audit
    listed = local_service.request("GET", "/lists/browser_cards/items")
    assert [i["value"] for i in listed.body["items"]] == ["card_a", "card_b"]
