"""Rules over transaction attributes and lists: decided and explained alike through the API, by a recomputation,
a backtest and SQL's detect_fraud; a rule set naming a list that does not exist (or of another kind) refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

from tests.conftest import ROOT, Database, load_event
from tests.integration.helpers import apply_rules, python_decisions, recompute, rule, sql_decisions
from txguard import db
from txguard.backtest import backtest
from txguard.detection import detector_cache
from txguard.lists import ListItem
from txguard.rule_engine import CompiledRuleSet
from txguard.rule_language import RuleSetError, validate_rule_set
from txguard.storage import lists
from txguard_dev.local.runner import FunctionRunner, Template

pytestmark = pytest.mark.integration

T = 1714564800000


@pytest.fixture
def runner(database: Database) -> Iterator[FunctionRunner]:
    yield FunctionRunner(Template(ROOT / "template.yaml"), database_url=database.service_url)


def post(runner: FunctionRunner, items: list[dict[str, Any]]) -> tuple[int, Any]:
    event = load_event("store_data.json") | {"body": json.dumps({"transactions": items})}
    result = runner.call("IngestFunction", event)
    assert not result.failed, result.output
    response = json.loads(result.output)
    return response["statusCode"], json.loads(response["body"])


def make_list(database: Database, name: str, kind: str, values: list[str], expires_at_ms: int | None = None) -> None:
    conn = psycopg2.connect(database.admin_url)
    try:
        with conn, conn.cursor() as cur:
            lists.create(cur, name, kind, None, None, "test")
            lists.add_items(cur, name, [ListItem(v, expires_at_ms) for v in values], "test")
    finally:
        conn.close()


def item(tid: int, **attributes: Any) -> dict[str, Any]:
    return {"account_id": 9, "transaction_id": tid, "timestamp": T + tid * 1000, "amount": "10.00"} | attributes


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
    in_python = python_decisions(recompute(9))
    assert {tid: d[0] for tid, d in in_python.items()} == {tid: tid in flagged for tid in range(1, 6)}
    assert sql_decisions(database, 9) == in_python

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
    recomputed = {j.transaction.transaction_id: [j.features[n] for n in names] for j in recompute(9) if j.features}
    assert recomputed == stored | {2: [2, 3, 1, 0, 1], 3: [2, 3, 1, None, None]}
    in_sql = {
        tid: [features[n] for n in names]
        for tid, features in database.query("SELECT transaction_id, features FROM transaction_features(9)")
    }
    assert in_sql == recomputed
