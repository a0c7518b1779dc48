"""Transaction attributes through the API: validated, stored, returned, part of a transaction's content; rules
over them and over lists, decided and explained alike through the API, by a recomputation, a backtest and SQL's
detect_fraud; a rule set naming a list that does not exist (or of another kind) refused; the attribute features."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests.conftest import Database, load_event, project_template
from tests.integration.helpers import apply_rules, python_decisions, recompute, rule, sql_decisions
from txguard import db
from txguard.backtest import backtest
from txguard.detection import detector_cache
from txguard.features import RecentValues
from txguard.intake import check_items
from txguard.lists import ListItem
from txguard.rule_engine import CompiledRuleSet
from txguard.rule_language import RuleSetError, validate_rule_set
from txguard.storage import lists, transactions
from txguard_dev.cli import main
from txguard_dev.commands.replay import FIELDS, read_replay
from txguard_dev.local.runner import FunctionRunner

pytestmark = pytest.mark.integration

T = 1714564800000


@pytest.fixture
def runner(database: Database) -> Iterator[FunctionRunner]:
    yield FunctionRunner(project_template(), database_url=database.service_url)


def post(runner: FunctionRunner, items: list[dict[str, Any]]) -> tuple[int, Any]:
    result = runner.call(
        "IngestFunction", load_event("store_data.json") | {"body": json.dumps({"transactions": items})}
    )
    assert not result.failed, result.output
    response = json.loads(result.output)
    return response["statusCode"], json.loads(response["body"])


def item(tid: int, **attributes: Any) -> dict[str, Any]:
    return {"account_id": 5, "transaction_id": tid, "timestamp": T + tid * 1000, "amount": "10.00"} | attributes


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
        ("device_id", "tok:4111-1111-1111-1111", "looks like a card number"),
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
    if "card number" in reason:  # a card number is never shown back (nor logged) whole
        assert detail["value"] in ("411111******1111", "tok:4111-11**-****-1111")
    elif field != "metadata":
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


def make_list(database: Database, name: str, kind: str, values: list[str], expires_at_ms: int | None = None) -> None:
    conn = psycopg2.connect(database.admin_url)
    try:
        with conn, conn.cursor() as cur:
            lists.create(cur, name, kind, None, None, "test")
            lists.add_items(cur, name, [ListItem(v, expires_at_ms) for v in values], "test")
    finally:
        conn.close()


RULES = [
    rule("abroad", "country NOT IN ('FR', 'DE')", "0.3"),
    rule("atm_fr", "channel = 'atm' AND country = 'FR'", "0.3"),
    rule("not_web", "channel != 'ecommerce'", "0.1", mode="shadow"),
    rule("risky_mcc", "merchant_category IN LIST high_risk_mcc", "0.6"),
    rule("stolen", "card_id IN LIST stolen_cards", "1"),
    rule("untrusted_device", "device_id NOT IN LIST trusted_devices AND amount > 5", "0.2"),
    rule("campaign", "metadata.campaign = 'spring'", "0.5"),
]
ITEMS = [
    item(1, country="BR", card_id="tok_1", channel="ecommerce"),
    item(2, country="fr", channel="atm", merchant_category="7995", device_id="d1"),
    item(3),  # no attribute: no rule on attributes holds, NOT IN and != included
    item(4, country="DE", device_id="d2", metadata={"campaign": "spring"}, card_id="tok_2"),
    item(5, card_id="tok_3", merchant_category="5411", metadata={"other": "x"}),
]
EXPLAINED = {
    1: {
        "abroad": "country BR is not in FR, DE",
        "stolen": "card_id tok_1 is in list stolen_cards",
    },
    2: {
        "atm_fr": "channel atm is atm; country FR is FR",
        "not_web": "channel atm is not ecommerce",
        "risky_mcc": "merchant_category 7995 is in list high_risk_mcc",
    },
    3: {},
    4: {
        "untrusted_device": "device_id d2 is not in list trusted_devices; amount 10.00 is more than 5",
        "campaign": "metadata.campaign spring is spring",
    },
    5: {},
}


def test_rules_on_attributes_and_lists_decide_and_explain_alike_in_python_and_sql(
    runner: FunctionRunner, database: Database
) -> None:
    make_list(database, "high_risk_mcc", "merchant_category", ["7995", "4829"])
    make_list(database, "stolen_cards", "card", ["tok_1", "tok_3"])
    make_list(database, "trusted_devices", "device", ["d1"])
    # An expired item no longer applies: tok_3 expired a second after it was added (in the past by now).
    conn = psycopg2.connect(database.admin_url)
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE list_items SET expires_at = date_trunc('milliseconds', now()) - interval '1 second' "
            "WHERE value = 'tok_3'"
        )
    conn.close()
    apply_rules(database, RULES)

    status, body = post(runner, ITEMS)
    assert status == 201
    explained = {
        r["transaction_id"]: {reason["rule_id"]: reason["explanation"] for reason in r["decision"]["reasons"]}
        for r in body["results"]
    }
    assert explained == EXPLAINED
    flagged = {r["transaction_id"] for r in body["results"] if r["decision"]["fraud"]}
    assert flagged == {1, 2, 4}

    # Recomputed, and in SQL, the same decisions.
    in_python = python_decisions(recompute(5))
    assert {tid: d[0] for tid, d in in_python.items()} == {tid: tid in flagged for tid in range(1, 6)}
    assert sql_decisions(database, 5) == in_python

    # A backtest (from the stored features, and replayed) reads the attributes and lists too.
    rules = CompiledRuleSet(0, validate_rule_set({"rules": RULES}))
    assert rules.list_names == {"high_risk_mcc", "stolen_cards", "trusted_devices"}
    for replay_all in (False, True):
        report = db.run_in_transaction(lambda cur, replay_all=replay_all: backtest(cur, rules, replay_all=replay_all))
        assert (report.evaluated, report.flagged, report.changed) == (5, 3, 0)


def test_a_list_item_added_later_is_read_by_the_next_batch(runner: FunctionRunner, database: Database) -> None:
    make_list(database, "stolen_cards", "card", [])
    apply_rules(database, [rule("stolen", "card_id IN LIST stolen_cards")])
    assert post(runner, [item(1, card_id="tok_9")])[1]["results"][0]["decision"]["fraud"] is False
    conn = psycopg2.connect(database.admin_url)
    with conn, conn.cursor() as cur:
        lists.add_items(cur, "stolen_cards", [ListItem("tok_9")], "test")
    conn.close()
    assert post(runner, [item(2, card_id="tok_9")])[1]["results"][0]["decision"]["fraud"] is True


@pytest.mark.parametrize(
    ("when", "problem"),
    [
        ("card_id IN LIST nowhere", "rule 'r': the list 'nowhere' does not exist"),
        ("country IN LIST stolen_cards", "the list 'stolen_cards' holds card values, which country is never compared"),
        ("country = 'XX'", "the value 'XX' at position 11 for country is not an ISO 3166-1 alpha-2 country code"),
        ("merchant_category IN ('10000')", "for merchant_category must be an ISO 18245 merchant category code"),
    ],
)
def test_a_rule_set_naming_a_missing_or_unfit_list_or_an_impossible_value_is_refused_whole(
    database: Database, when: str, problem: str
) -> None:
    make_list(database, "stolen_cards", "card", ["tok_1"])
    before = database.query("SELECT count(*) FROM rule_sets")
    with pytest.raises(RuleSetError) as refused:
        apply_rules(database, [rule("ok", "amount > 1"), rule("r", when)])
    assert problem in str(refused.value)
    assert database.query("SELECT count(*) FROM rule_sets") == before
    detector_cache.clear()


def test_attribute_features_count_distinct_values_and_first_uses_late_arrivals_included(
    runner: FunctionRunner, database: Database
) -> None:
    reads = "distinct_countries_24h >= 0 OR distinct_devices_24h >= 0 OR distinct_cards_24h >= 0"
    apply_rules(database, [rule("reads", f"{reads} OR new_country >= 0 OR new_device >= 0", "0.1", mode="shadow")])
    hour = 3_600_000
    first = [
        item(1, country="FR", device_id="d1", card_id="c1") | {"timestamp": T},
        item(2, country="FR", device_id="d2") | {"timestamp": T + hour},
        item(3) | {"timestamp": T + 2 * hour},
        item(4, country="BR", device_id="d1", card_id="c2") | {"timestamp": T + 26 * hour},
    ]
    assert post(runner, first)[0] == 201
    # A late arrival: before transaction 2, from a new device in a new country.
    assert post(runner, [item(5, country="DE", device_id="d9") | {"timestamp": T + hour // 2}])[0] == 201
    assert post(runner, [item(6, country="DE", device_id="d9") | {"timestamp": T + 27 * hour}])[0] == 201
    names = ["distinct_countries_24h", "distinct_devices_24h", "distinct_cards_24h", "new_country", "new_device"]
    stored = {
        tid: [features[name] for name in names]
        for tid, features in database.query("SELECT transaction_id, features FROM transactions")
    }
    assert stored == {
        1: [1, 1, 1, 1, 1],
        2: [1, 2, 1, 0, 1],  # stored before the late one arrived: it saw only transaction 1
        3: [1, 2, 1, None, None],
        4: [1, 1, 1, 1, 0],  # 26 hours later: only its own values in the window
        5: [2, 2, 1, 1, 1],  # the late one sees transaction 1 only
        6: [2, 2, 1, 0, 0],  # DE and d9 were used (late) before; BR and DE, d1 and d9 in 24 hours
    }
    # Recomputed now, transaction 2 sees the late arrival too; SQL gives the same for every transaction.
    recomputed = {j.transaction.transaction_id: [j.features[n] for n in names] for j in recompute(5) if j.features}
    assert recomputed == stored | {2: [2, 3, 1, 0, 1], 3: [2, 3, 1, None, None]}
    in_sql = {
        tid: [features[n] for n in names]
        for tid, features in database.query("SELECT transaction_id, features FROM transaction_features(5)")
    }
    assert in_sql == recomputed


def test_the_windows_and_their_attribute_values_read_in_one_scan_are_what_two_reads_give(
    runner: FunctionRunner, database: Database
) -> None:
    """Ingest reads an account's rows and their attribute values in one statement (account_rows_and_values):
    the same timelines and values as account_rows and account_values, over several spans, two currencies,
    rows with some attributes, rows with none, and an account with nothing in its span."""
    apply_rules(database, [rule("any", "count >= 0", "0.1", mode="shadow")])
    minute = 60_000
    items = [
        item(i, currency="EUR" if i % 4 else "USD", amount=f"{i}.50")
        | ({"country": "FR", "device_id": f"d{i % 3}"} if i % 2 else {})
        | ({"card_id": f"c{i % 7}"} if i % 5 == 0 else {})
        | {"timestamp": T + i * 10 * minute}
        for i in range(1, 61)
    ]
    assert post(runner, items)[0] == 201
    spans = {5: [(T, T + 95 * minute), (T + 200 * minute, T + 450 * minute)], 6: [(T, T + 10**8)]}
    timelines, values = db.run_in_transaction(lambda cur: transactions.account_rows_and_values(cur, spans))
    assert timelines == db.run_in_transaction(lambda cur: transactions.account_rows(cur, spans))
    assert values == db.run_in_transaction(lambda cur: transactions.account_values(cur, spans))
    assert len(timelines[5].ts) == 34 and timelines[5].by_currency is not None  # both spans, both currencies
    assert [len(values[5][name].ts) for name in ("card_id", "country", "device_id")] == [6, 17, 17]
    assert values[6] == {name: RecentValues() for name in ("card_id", "country", "device_id")}


def test_the_default_attribute_rules_flag_new_devices_and_countries_not_an_own_second_device(
    runner: FunctionRunner, database: Database
) -> None:
    """The default rule set (as migrated): a payment from the account's own second device is not flagged; one from
    a device and a country it never used is, as are a third device in a day and a new country within a minute."""
    hour = 3_600_000
    history = [item(tid, country="FR", device_id="own-1") | {"timestamp": T + tid * hour} for tid in (1, 2, 3)]
    day = 30 * hour  # a day after transactions 1-4: out of their 24-hour window
    later = [
        item(4, country="FR", device_id="own-2") | {"timestamp": T + 4 * hour},  # its own second device, at home
        item(5, country="US", device_id="new-1") | {"timestamp": T + day},  # a new device in a new country
        item(6, country="US", device_id="new-2") | {"timestamp": T + day + 600_000},  # two in a day: not yet
        item(7, country="US", device_id="new-3") | {"timestamp": T + day + 660_000},  # three in a day
        item(8, country="BR", device_id="own-1") | {"timestamp": T + day + 680_000},  # a new country, 20 s later
    ]
    assert post(runner, history + later)[0] == 201
    fired = {
        tid: (fraud, {r["rule_id"] for r in reasons})
        for tid, fraud, reasons in database.query("SELECT transaction_id, fraud, reasons FROM transactions")
    }
    active = {tid: (flag, ids - {"below_account_mean"}) for tid, (flag, ids) in fired.items()}  # a shadow rule
    assert active == {
        1: (False, set()),
        2: (False, set()),
        3: (False, set()),
        4: (False, set()),
        5: (True, {"new_device_new_country"}),
        6: (False, set()),
        7: (True, {"new_device_many"}),
        8: (True, {"new_country_rush"}),
    }


def test_the_default_short_history_rules_flag_spikes_and_tests_on_a_second_transaction_and_rushes_at_new_merchants(
    runner: FunctionRunner, database: Database
) -> None:
    """The default rule set (as migrated), on accounts with one earlier transaction: over 220 and six times the mean
    is flagged, ten times the mean under 220 is not; a tiny amount from a new device abroad is flagged, from the
    account's own device at home it is not; twice the mean within a minute of another payment at the merchant is
    flagged at a merchant the account never used, not at one it did."""
    hour = 3_600_000

    def pay(
        tid: int, account: int, amount: str, at: int, merchant: str, country: str = "FR", device: str = "own"
    ) -> dict[str, Any]:
        return item(tid, country=country, device_id=device) | {
            "account_id": account,
            "amount": amount,
            "timestamp": T + at,
            "merchant_id": merchant,
        }

    items = [
        *(pay(tid, tid, "20.00", 0, f"home-{tid}") for tid in (1, 2, 3, 4, 5, 6)),  # each account's first
        pay(11, 1, "230.00", hour, "m1"),  # 11.5 times the mean, over 220
        pay(12, 2, "200.00", hour, "m2"),  # 10 times the mean, under 220
        pay(13, 3, "1.50", 2 * hour, "m3", country="US", device="new"),  # tiny, new device, new country
        pay(14, 4, "1.50", 2 * hour, "m4"),  # tiny, the account's own device at home
        pay(15, 7, "10.00", 3 * hour, "home-5"),  # another account at account 5's merchant
        pay(16, 5, "60.00", 3 * hour + 30_000, "home-5"),  # 30 s later, three times the mean, a merchant it used
        pay(17, 8, "10.00", 4 * hour, "shop"),
        pay(18, 6, "60.00", 4 * hour + 30_000, "shop"),  # 30 s later, three times the mean, a merchant it never used
    ]
    assert post(runner, items)[0] == 201
    rows = database.query("SELECT transaction_id, fraud, reasons FROM transactions WHERE transaction_id > 10")
    shadow = {"below_account_mean", "large_amount"}  # a shadow rule, and one that only ranks
    active = {tid: (fraud, {r["rule_id"] for r in reasons} - shadow) for tid, fraud, reasons in rows}
    assert active == {
        11: (True, {"amount_spike_large"}),
        12: (False, set()),
        13: (True, {"card_testing_short_history"}),
        14: (False, set()),
        15: (False, set()),
        16: (False, set()),
        17: (False, set()),
        18: (True, {"merchant_rush_large"}),
    }


@pytest.mark.parametrize("command", ["rules apply", "backtest"])
def test_the_cli_refuses_a_rule_set_naming_a_list_that_does_not_exist(
    database: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"rules": [rule("stolen", "card_id IN LIST stolen_cards")]}))
    versions = database.query("SELECT count(*) FROM rule_sets")
    args = ["rules", "apply", str(path)] if command == "rules apply" else ["backtest", "--rules", str(path)]
    assert main([*args, "--database-url", database.admin_url]) == 1
    err = capsys.readouterr().err
    assert "rule set rejected" in err and "rule 'stolen': the list 'stolen_cards' does not exist" in err
    assert "Traceback" not in err
    assert database.query("SELECT count(*) FROM rule_sets") == versions
