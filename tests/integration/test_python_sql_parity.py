"""The Python engine and the SQL function detect_fraud flag exactly the same transactions with the same rules.

Random histories (Hypothesis) with bursts, equal timestamps, zero amounts, gaps of days (the 7- and 30-day
windows, merchant risk), several accounts sharing merchants, each paying in one to three of EUR, BHD and JPY (amount
features are per currency, counts over all), and random rule sets drawn from
the grammar with a random `features` block (time zone, label delay); stored in random batches and, separately, in
shuffled order (late arrivals). Labels that arrive late, superseded or withdrawn, feed merchant risk. Every feature
value, not only the decisions, is compared between the Python features (ingest's stored ones, the recomputation and
the backtest replay) and transaction_features. Constants with many digits, far below one or far above any amount,
mean the same number in both, or the rule set is refused when applied. With a champion model, SQL takes the score
stored with each decision (it cannot run the model) and rules reading `model_score` decide alike. Transactions
carry random attributes (some none), rules compare them as text, with sets and with lists (one item expired), and
the attribute features (distinct values in 24 hours, first use of a country or device) agree too, late arrivals
included.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import Database
from tests.integration.helpers import (
    T0,
    apply_rules,
    python_decisions,
    rebuild_merchant_label_daily,
    recompute,
    rule,
    sql_decisions,
    sql_features,
    store,
)
from tests.model_fixtures import register, trained_artifact
from txguard import db, detection
from txguard.backtest import on_stored_features, replay
from txguard.currencies import MINOR_UNITS
from txguard.detection import detector_cache
from txguard.domain import Transaction
from txguard.feature_columns import columnar_features
from txguard.features import FEATURES
from txguard.lists import ListItem
from txguard.models import serving
from txguard.models.artifact_store import DirectoryStore
from txguard.queries import recompute_window
from txguard.rule_engine import COLUMN_ROWS, CompiledRuleSet
from txguard.rule_language import MAX_DECIMAL_PLACES, MAX_INTEGER_DIGITS, RuleSetError
from txguard.storage import lists, models

pytestmark = pytest.mark.integration

_example = itertools.count(1)

DAY = 86_400_000
gaps = st.sampled_from(
    [0, 1, 400, 1_999, 2_000, 59_999, 60_000, 61_000, 3_599_999, 3_600_000, DAY, 90_000_000, 3 * DAY + 7, 8 * DAY]
)
time_zones = st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"])
currencies = ["EUR", "BHD", "JPY"]
comparable = sorted(set(FEATURES) - {"amount"})
operators = st.sampled_from(["<", "<=", ">", ">=", "=", "!="])
constants = st.sampled_from(["0", "1", "2", "5", "10", "60", "100", "1000"])
factors = st.sampled_from(["0.5", "0.9", "1", "2", "3"])


# Text comparisons on attributes and lists (LISTS below); a missing attribute makes each of them false.
text_comparisons = st.sampled_from(
    [
        "country = 'FR'",
        "country != 'FR'",
        "country IN ('FR', 'DE')",
        "country NOT IN ('FR', 'DE')",
        "channel != 'atm'",
        "merchant_category = '7995'",
        "metadata.campaign = 'x'",
        "metadata.campaign NOT IN ('y')",
        "device_id IN LIST known_devices",
        "device_id NOT IN LIST known_devices",
        "card_id IN LIST stolen_cards",
        "card_id NOT IN LIST stolen_cards",
        "merchant_category IN LIST risky_mcc",
        "merchant_id IN LIST watched_merchants",
    ]
)
# name -> (kind, current items, items that expired)
LISTS = {
    "known_devices": ("device", ["d1"], ["d2"]),
    "stolen_cards": ("card", ["c1"], []),
    "risky_mcc": ("merchant_category", ["7995"], ["5411"]),
    "watched_merchants": ("merchant", [], []),
}


@pytest.fixture(autouse=True)
def rule_lists(database: Database) -> None:
    """The lists the text comparisons read, each with its items (and an expired one: it matches nothing)."""
    conn = psycopg2.connect(database.admin_url)
    try:
        with conn, conn.cursor() as cur:
            for name, (kind, current, expired) in LISTS.items():
                lists.create(cur, name, kind, None, None, "test")
                lists.add_items(cur, name, [ListItem(value) for value in [*current, *expired]], "test")
                cur.execute(
                    "UPDATE list_items SET added_at = now() - interval '2 days', "
                    "expires_at = date_trunc('milliseconds', now()) - interval '1 day' "
                    "WHERE list_name = %s AND value = ANY(%s)",
                    (name, expired),
                )
    finally:
        conn.close()


def amounts(currency: str) -> st.SearchStrategy[Decimal]:
    """Amounts in the currency's places, zero (a card verification) often: histories of zeros give a mean and a
    standard deviation of 0, where `amount < 0.9 * mean_amount` compares 0 with 0."""
    places = MINOR_UNITS[currency]
    return st.one_of(
        st.just(Decimal(0).scaleb(-places)),
        st.decimals(min_value=Decimal(0), max_value=Decimal("5000"), places=places),
    )


@st.composite
def extreme_constants(draw: st.DrawFn) -> str:
    """A plain decimal of up to 35 digits scaled from 10^-46 to 10^23: within the limits and beyond them."""
    coefficient = draw(st.integers(1, 10 ** draw(st.integers(1, 35))))
    return format(Decimal(f"{coefficient}E{draw(st.integers(-46, 3))}"), "f")  # the constructor never rounds


@st.composite
def near_constants(draw: st.DrawFn) -> str:
    """Many digits just around the features' values (1/3, 0.9, 1, 2, 3): where rounding would change a verdict."""
    digits = draw(st.integers(1, MAX_DECIMAL_PLACES + 3))
    return draw(
        st.sampled_from(
            [
                "0." + "3" * digits,
                "0." + "9" * digits,
                "1." + "0" * (digits - 1) + "1",
                "2." + "9" * digits,
                "3" * min(digits, MAX_INTEGER_DIGITS + 2),
            ]
        )
    )


long_constants = st.one_of(extreme_constants(), near_constants())


def beyond_the_limits(constant: str) -> bool:
    whole, _, fraction = constant.partition(".")
    return len(whole.lstrip("0")) > MAX_INTEGER_DIGITS or len(fraction.rstrip("0")) > MAX_DECIMAL_PLACES


@st.composite
def comparisons(
    draw: st.DrawFn,
    constants: st.SearchStrategy[str] = constants,
    factors: st.SearchStrategy[str] = factors,
    features: list[str] = comparable,
) -> str:
    if draw(st.integers(0, 3)) == 0:
        return draw(text_comparisons)
    left = draw(st.sampled_from(["amount", *features]))
    if draw(st.booleans()):
        return f"{left} {draw(operators)} {draw(constants)}"
    return f"{left} {draw(operators)} {draw(factors)} * {draw(st.sampled_from(features))}"


@st.composite
def conditions(draw: st.DrawFn, **numbers: st.SearchStrategy[str]) -> str:
    parts = draw(st.lists(comparisons(**numbers), min_size=1, max_size=3))
    joiners = [draw(st.sampled_from([" AND ", " OR "])) for _ in parts[1:]]
    return parts[0] + "".join(j + p for j, p in zip(joiners, parts[1:], strict=True))


def feature_options() -> st.SearchStrategy[dict[str, object]]:
    return st.fixed_dictionaries({"time_zone": time_zones, "label_delay_days": st.sampled_from([0, 1, 2, 7])})


@st.composite
def rule_sets(draw: st.DrawFn, **numbers: st.SearchStrategy[str]) -> list[dict[str, object]]:
    rules = []
    for index in range(draw(st.integers(1, 4))):
        rules.append(
            {
                "id": f"r{index}",
                "description": "generated",
                "when": draw(conditions(**numbers)),
                "score": draw(st.sampled_from(["0.2", "0.5", "0.75", "1"])),
                "mode": draw(st.sampled_from(["active", "active", "shadow"])),
                "enabled": draw(st.booleans()) or index == 0,
            }
        )
    return rules


Row = tuple[int, int, Decimal, str, str | None, tuple[object, ...]]


# channel, country, merchant_category, card_id, ip_address, device_id, metadata: few values, so that repeats,
# first uses and distinct counts all happen.
attribute_values = st.tuples(
    st.sampled_from([None, "atm", "ecommerce"]),
    st.sampled_from([None, "FR", "DE", "BR"]),
    st.sampled_from([None, "5411", "7995"]),
    st.sampled_from([None, "c1", "c2"]),
    st.just(None),
    st.sampled_from([None, "d1", "d2", "d3"]),
    st.sampled_from([None, {"campaign": "x"}, {"campaign": "y"}, {"other": "x"}]),
)


@st.composite
def histories(draw: st.DrawFn) -> list[Row]:
    """(account slot 0-2, timestamp, amount, currency, merchant slot) in time order; each account pays in one to
    three currencies (a card used abroad), so accounts and merchants see EUR, BHD and JPY mixed."""
    account_currencies = [
        draw(st.lists(st.sampled_from(currencies), min_size=1, max_size=3, unique=True)) for _ in range(3)
    ]
    ts = T0
    rows = []
    for _ in range(draw(st.integers(1, 30))):
        ts += draw(gaps)
        merchant = draw(st.sampled_from([None, "a", "b"]))
        slot = draw(st.integers(0, 2))
        currency = draw(st.sampled_from(account_currencies[slot]))
        rows.append((slot, ts, draw(amounts(currency)), currency, merchant, draw(attribute_values)))
    event("mixed currencies" if any(len(set(c)) > 1 for c in account_currencies) else "one currency each")
    return rows


def materialise(rows: list[Row]) -> tuple[list[Transaction], list[int]]:
    example = next(_example)  # fresh accounts and merchants per example: no clean-up needed between them
    accounts = [example * 10 + slot for slot in range(3)]
    batch = [
        Transaction(
            example * 1000 + i,
            accounts[slot],
            ts,
            amount,
            currency,
            None if m is None else f"m{example}{m}",
            *attributes,  # type: ignore[arg-type]
        )
        for i, (slot, ts, amount, currency, m, attributes) in enumerate(rows)
    ]
    return batch, accounts


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=histories(), rules=rule_sets(), cuts=st.lists(st.integers(1, 30), max_size=4), options=feature_options())
def test_stored_decisions_python_and_sql_agree_for_histories_stored_in_order(
    database: Database,
    rows: list[Row],
    rules: list[dict[str, object]],
    cuts: list[int],
    options: dict[str, object],
) -> None:
    apply_rules(database, rules, threshold="0.5", features=options)
    batch, accounts = materialise(rows)
    stored = {}
    start = 0
    for cut in [*sorted(cuts), len(batch)]:
        for result in store(batch[start:cut]) if batch[start:cut] else []:
            stored[result.transaction.transaction_id] = result.decision
        start = max(start, cut)
    for account in accounts:
        in_python = python_decisions(recompute(account))
        in_sql = sql_decisions(database, account)
        assert in_python == in_sql
        for tid, (fraud, score, active, _shadow) in in_python.items():
            decision = stored[tid]
            assert (decision.fraud, decision.score) == (fraud, score)
            assert sorted(r.rule_id for r in decision.reasons if r.mode == "active") == active


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=histories(), rules=rule_sets(), order=st.randoms(use_true_random=False), options=feature_options())
def test_python_and_sql_agree_whatever_order_the_history_arrived_in(
    database: Database,
    rows: list[Row],
    rules: list[dict[str, object]],
    order: object,
    options: dict[str, object],
) -> None:
    apply_rules(database, rules, features=options)
    batch, accounts = materialise(rows)
    order.shuffle(batch)  # type: ignore[attr-defined]
    for start in range(0, len(batch), 4):
        store(batch[start : start + 4])
    for account in accounts:
        assert python_decisions(recompute(account)) == sql_decisions(database, account)


def test_zero_amounts_give_a_mean_and_deviation_of_zero_and_the_same_verdicts_in_python_and_sql(
    database: Database,
) -> None:
    apply_rules(
        database,
        [
            rule("below_mean", "amount < 0.9 * mean_amount", "0.6"),
            rule("above_mean", "amount > 2 * mean_amount AND std_amount = 0", "0.6"),
        ],
    )
    history = [Decimal("0.00"), Decimal("0.00"), Decimal("5.00"), Decimal("0.00")]
    stored = store([Transaction(1220 + i, 122, T0 + i * 1000, amount, "EUR") for i, amount in enumerate(history)])
    # 0 after zeros: below nothing (0 < 0.9 × 0 is false); 5.00 after zeros: more than 2 × 0 with a spread of 0;
    # 0 after a mean of 1.666667: below it.
    assert [[r.rule_id for r in s.decision.reasons] for s in stored] == [[], [], ["above_mean"], ["below_mean"]]
    assert "the mean of the 2 previous transactions (0.00)" in stored[2].decision.reasons[0].explanation
    assert stored[3].decision.reasons[0].explanation.startswith("amount 0.00 is less than 0.9 × the mean")
    assert sql_decisions(database, 122) == python_decisions(recompute(122))
    assert [sql_decisions(database, 122)[1220 + i][2] for i in range(4)] == [[], [], ["above_mean"], ["below_mean"]]


def test_a_constant_with_more_digits_than_python_s_default_precision_means_the_same_in_sql(
    database: Database,
) -> None:
    # 0.333...3 (31 digits) × the mean 3.00 is just below 1.00: rounded to 28 digits it was 1, and not exceeded.
    apply_rules(database, [rule("third", "amount > 0.3333333333333333333333333333333 * mean_amount", "0.9")])
    stored = store(
        [Transaction(1210, 121, T0, Decimal("3.00"), "EUR"), Transaction(1211, 121, T0 + 1000, Decimal("1.00"), "EUR")]
    )
    assert [(r.decision.fraud, r.decision.score) for r in stored] == [(False, Decimal("0")), (True, Decimal("0.9"))]
    assert sql_decisions(database, 121)[1211] == (True, Decimal("0.9000"), ["third"], [])
    assert python_decisions(recompute(121)) == sql_decisions(database, 121)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=histories(), rules=rule_sets(constants=long_constants, factors=long_constants))
def test_long_and_extreme_constants_mean_the_same_in_python_and_sql_or_are_refused_when_applied(
    database: Database, rows: list[Row], rules: list[dict[str, object]]
) -> None:
    numbers = [token for r in rules for token in str(r["when"]).replace("*", " ").split() if token[0].isdigit()]
    too_long = [number for number in numbers if beyond_the_limits(number)]
    event("refused" if too_long else "applied")
    if too_long:
        versions = database.query("SELECT max(version) FROM rule_sets")
        with pytest.raises(RuleSetError) as refused:
            apply_rules(database, rules)
        shown = too_long[0] if len(too_long[0]) <= 60 else f"{too_long[0][:28]}...{too_long[0][-28:]}"
        assert f"the constant {shown} at position" in str(refused.value)
        assert "at most" in str(refused.value)
        assert database.query("SELECT max(version) FROM rule_sets") == versions
        return
    apply_rules(database, rules)
    batch, accounts = materialise(rows)
    stored = {r.transaction.transaction_id: r.decision for r in store(batch)}
    for account in accounts:
        in_python = python_decisions(recompute(account))
        assert in_python == sql_decisions(database, account)
        assert {tid: (d.fraud, d.score) for tid, d in stored.items() if tid in in_python} == {
            tid: (fraud, score) for tid, (fraud, score, _, _) in in_python.items()
        }


# One shadow rule reading every feature: each is computed (and stored) for every transaction, none is decided on.
EVERY_FEATURE = [
    rule("reads_everything", " OR ".join(f"{name} >= 0" for name in comparable), "0.1", mode="shadow"),
]

Label = tuple[int, int, bool]  # (index of the transaction in the history, ms after it the label became known, fraud)


@st.composite
def late_labels(draw: st.DrawFn, size: int) -> list[Label]:
    """Labels known from the same millisecond to 12 days after their transaction; some relabelled or withdrawn."""
    labels = []
    for _ in range(draw(st.integers(0, min(size * 2, 25)))):
        after = draw(st.sampled_from([0, 1, DAY - 1, DAY, 2 * DAY + 5, 7 * DAY, 12 * DAY]))
        labels.append((draw(st.integers(0, size - 1)), after, draw(st.booleans())))
    return labels


def insert_labels(database: Database, batch: list[Transaction], labels: list[Label]) -> None:
    for index, after, fraud in labels:
        t = batch[index]
        database.execute(
            "INSERT INTO labels (transaction_id, fraud, source, labelled_at) "
            "VALUES (%s, %s, 'analyst', txguard_ms_to_ts(%s)) ON CONFLICT DO NOTHING",
            (t.transaction_id, fraud, t.ts + after),
        )
    rebuild_merchant_label_daily(database)


def exact(value: object) -> object:
    return None if value is None else Decimal(str(value))


def assert_same_features(
    python: dict[int, dict[str, object]], sql: dict[int, dict[str, object]], names: list[str]
) -> None:
    assert set(python) == set(sql)
    for tid, features in python.items():
        got = {name: exact(features.get(name)) for name in names}
        want = {name: exact(sql[tid].get(name)) for name in names}
        assert got == want, tid


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), rows=histories(), options=feature_options(), in_order=st.booleans())
def test_every_feature_value_agrees_in_ingest_recomputation_and_sql_with_labels_arriving_late(
    database: Database, data: st.DataObject, rows: list[Row], options: dict[str, object], in_order: bool
) -> None:
    apply_rules(database, EVERY_FEATURE, features=options)
    time_zone, delay = str(options["time_zone"]), int(str(options["label_delay_days"]))
    batch, accounts = materialise(rows)
    arrival = list(batch) if in_order else data.draw(st.permutations(batch))
    for start in range(0, len(arrival), 5):
        store(arrival[start : start + 5])
    names = [name for name in FEATURES if name in comparable]
    if in_order:
        # What ingest stored with each decision is what the definition gives (no label was known yet).
        for account in accounts:
            stored = {
                tid: json.loads(text, parse_float=Decimal)
                for tid, text in database.query(
                    "SELECT transaction_id, features::text FROM transactions WHERE account_id = %s", (account,)
                )
            }
            assert_same_features(stored, sql_features(database, account, time_zone, delay), names)
    insert_labels(database, batch, data.draw(late_labels(len(batch))))
    event("labels" if database.query("SELECT 1 FROM merchant_label_daily LIMIT 1") else "no label steps")
    for account in accounts:
        recomputed = {j.transaction.transaction_id: dict(j.features or {}) for j in recompute(account)}
        risky = any(f.get("merchant_risk_30d") for f in recomputed.values())
        event("some merchant risk above 0" if risky else "no merchant risk above 0")
        assert_same_features(recomputed, sql_features(database, account, time_zone, delay), names)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), rows=histories(), rules=rule_sets(), options=feature_options())
def test_backtest_replay_decides_as_sql_does_once_labels_have_arrived(
    database: Database, data: st.DataObject, rows: list[Row], rules: list[dict[str, object]], options: dict[str, object]
) -> None:
    apply_rules(database, rules, features=options)
    batch, accounts = materialise(rows)
    store(batch)
    insert_labels(database, batch, data.draw(late_labels(len(batch))))
    ours = {t.transaction_id for t in batch}

    def replayed(cur: object) -> dict[int, tuple[bool, Decimal, list[str], list[str]]]:
        rules_now = detector_cache.current(cur, 0)  # type: ignore[arg-type]
        return {
            t.transaction_id: (
                d.fraud,
                d.score,
                sorted(r.rule_id for r in d.reasons if r.mode == "active"),
                sorted(r.rule_id for r in d.reasons if r.mode == "shadow"),
            )
            for t, _, d in replay(cur, rules_now)  # type: ignore[arg-type]
            if t.transaction_id in ours
        }

    in_backtest = db.run_in_transaction(replayed)
    for account in accounts:
        in_sql = sql_decisions(database, account)
        assert {tid: in_backtest[tid] for tid in in_sql} == in_sql
        assert python_decisions(recompute(account)) == in_sql


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), rows=histories(), options=feature_options(), size=st.integers(1, 6))
def test_a_recomputation_window_starting_mid_history_gives_every_feature_as_sql_does(
    database: Database, data: st.DataObject, rows: list[Row], options: dict[str, object], size: int
) -> None:
    apply_rules(database, EVERY_FEATURE, features=options)
    time_zone, delay = str(options["time_zone"]), int(str(options["label_delay_days"]))
    batch, accounts = materialise(rows)
    store(data.draw(st.permutations(batch)))
    insert_labels(database, batch, data.draw(late_labels(len(batch))))
    names = [name for name in FEATURES if name in comparable]
    for account in accounts:
        # Windows of `size` transactions, newest first, each starting from the per-day totals before it.
        paged: dict[int, dict[str, object]] = {}
        before = None
        while True:
            judged, before = db.run_in_transaction(
                lambda cur, a=account, b=before: recompute_window(cur, a, detector_cache.current(cur, 0), b, size)
            )
            paged.update({j.transaction.transaction_id: dict(j.features or {}) for j in judged})
            if before is None:
                break
        assert_same_features(paged, sql_features(database, account, time_zone, delay), names)


# --- decisions with a champion model's score ------------------------------------------------------------------
# SQL cannot run a tree model: detect_fraud takes the score stored with each decision and combines it with the
# rules as serving does. Rules here also read model_score, near the scores the fixture model gives.

model_constants = st.sampled_from(["0", "0.05", "0.1", "0.3", "0.5", "0.7", "0.9", "0.99", "1"])


@st.composite
def model_conditions(draw: st.DrawFn) -> str:
    own = f"model_score {draw(operators)} {draw(model_constants)}"
    if draw(st.booleans()):
        return own
    return f"{own} {draw(st.sampled_from(['AND', 'OR']))} {draw(comparisons())}"


@st.composite
def rule_sets_with_model_score(draw: st.DrawFn) -> list[dict[str, object]]:
    rules = draw(rule_sets())
    for index in range(draw(st.integers(1, 2))):
        rules.append(
            {
                "id": f"m{index}",
                "description": "reads the model",
                "when": draw(model_conditions()),
                "score": draw(st.sampled_from(["0.2", "0.5", "0.75", "1"])),
                "mode": draw(st.sampled_from(["active", "active", "shadow"])),
            }
        )
    return rules


@pytest.fixture
def fixture_champion(database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A small trained model, registered and promoted (artifacts under a temporary TXGUARD_MODEL_DIR)."""
    monkeypatch.setenv("TXGUARD_MODEL_DIR", str(tmp_path))
    serving._LOADED.clear()
    conn = psycopg2.connect(database.admin_url)
    try:
        with conn, conn.cursor() as cur:
            version = register(cur, tmp_path, trained_artifact(threshold=0.5))
            models.promote(cur, version, DirectoryStore(tmp_path))
    finally:
        conn.close()
    detector_cache.clear()
    yield version
    serving._LOADED.clear()
    detector_cache.clear()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=histories(),
    rules=rule_sets_with_model_score(),
    cuts=st.lists(st.integers(1, 30), max_size=4),
    options=feature_options(),
    threshold=st.sampled_from(["0.5", "0.9", "1"]),
)
def test_decisions_with_a_champion_score_agree_in_ingest_recomputation_backtest_and_sql(
    database: Database,
    fixture_champion: int,
    rows: list[Row],
    rules: list[dict[str, object]],
    cuts: list[int],
    options: dict[str, object],
    threshold: str,
) -> None:
    apply_rules(database, rules, threshold=threshold, features=options)
    batch, accounts = materialise(rows)
    stored = {}
    start = 0
    for cut in [*sorted(cuts), len(batch)]:
        for result in store(batch[start:cut]) if batch[start:cut] else []:
            stored[result.transaction.transaction_id] = result.decision
        start = max(start, cut)
    assert all(d.model_version == fixture_champion and d.model_score is not None for d in stored.values())
    by_model = any(d.fraud and not any(r.mode == "active" for r in d.reasons) for d in stored.values())
    event("some flagged by the model alone" if by_model else "none flagged by the model alone")
    event(
        "a rule read model_score and fired"
        if any(r.rule_id.startswith("m") and r.mode != "model" for d in stored.values() for r in d.reasons)
        else "no model_score rule fired"
    )
    ours = {t.transaction_id for t in batch}

    def in_backtest(cur: object) -> dict[int, tuple[bool, Decimal]]:
        candidate = CompiledRuleSet(0, detector_cache.current(cur, 0).rule_set)  # type: ignore[arg-type,attr-defined]
        return {
            t.transaction_id: (d.fraud, d.score)
            for t, _, d in on_stored_features(cur, candidate, None, None)  # type: ignore[arg-type]
            if t.transaction_id in ours
        }

    backtested = db.run_in_transaction(in_backtest)
    for account in accounts:
        in_sql = sql_decisions(database, account)
        assert python_decisions(recompute(account)) == in_sql
        for tid, (fraud, score, active, _shadow) in in_sql.items():
            decision = stored[tid]
            assert (decision.fraud, decision.score) == (fraud, score)
            assert sorted(r.rule_id for r in decision.reasons if r.mode == "active") == active
            assert backtested[tid] == (fraud, score)


# Outcomes: rule actions, the review threshold, a snooze and allow and block lists, decided alike at ingest, by the
# recomputation and by detect_fraud (which reads the lists and snoozes as they stand, as ingest did).
actions = st.sampled_from(["score", "score", "review", "block", "allow"])


@st.composite
def rule_sets_with_actions(draw: st.DrawFn) -> list[dict[str, object]]:
    rules = draw(rule_sets())
    for found in rules:
        found["action"] = draw(actions)
        if found["action"] != "score" and draw(st.booleans()):
            del found["score"]
    return rules


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=histories(),
    rules=rule_sets_with_actions(),
    review=st.sampled_from([None, "0.2", "0.45"]),
    snoozed_slot=st.sampled_from([None, 0, 1]),
    allowed_slot=st.sampled_from([None, 0, 2]),
    blocked_merchant=st.sampled_from([None, "a", "b"]),
)
def test_outcomes_agree_in_ingest_recomputation_and_sql_with_actions_snoozes_and_lists(
    database: Database,
    rows: list[Row],
    rules: list[dict[str, object]],
    review: str | None,
    snoozed_slot: int | None,
    allowed_slot: int | None,
    blocked_merchant: str | None,
) -> None:
    apply_rules(database, rules, threshold="0.5", **({} if review is None else {"review_threshold": review}))
    batch, accounts = materialise(rows)
    example = batch[0].transaction_id // 1000
    admin = psycopg2.connect(database.admin_url)
    try:
        with admin, admin.cursor() as cur:
            if snoozed_slot is not None:
                cur.execute(
                    "INSERT INTO rule_snoozes (rule_id, kind, value, until, created_by) "
                    "VALUES ('r0', 'account', %s, now() + interval '1 day', 'tests')",
                    (str(accounts[snoozed_slot]),),
                )
            for name, kind, action, value in (
                (f"allow_{example}", "account", "allow", None if allowed_slot is None else str(accounts[allowed_slot])),
                (
                    f"block_{example}",
                    "merchant",
                    "block",
                    None if blocked_merchant is None else f"m{example}{blocked_merchant}",
                ),
            ):
                if value is not None:
                    lists.create(cur, name, kind, action, None, "tests")
                    lists.add_items(cur, name, [ListItem(value)], "tests")
        stored = {r.transaction.transaction_id: r.decision for r in store(batch)}
        for account in accounts:
            in_sql = {
                r[0]: (r[1], r[2], r[3], sorted(r[4]), sorted(r[5]))
                for r in database.query(
                    "SELECT transaction_id, outcome, fraud, score, rule_ids, snoozed_rule_ids FROM detect_fraud(%s)",
                    (account,),
                )
            }
            at_ingest = {
                tid: (
                    d.outcome,
                    d.fraud,
                    d.score,
                    sorted(r.rule_id for r in d.reasons if r.mode == "active"),
                    sorted(r.rule_id for r in d.reasons if r.mode == "snoozed"),
                )
                for tid, d in stored.items()
                if tid in in_sql
            }
            recomputed = {
                j.transaction.transaction_id: (
                    j.decision.outcome,
                    j.decision.fraud,
                    j.decision.score,
                    sorted(r.rule_id for r in j.decision.reasons if r.mode == "active"),
                    sorted(r.rule_id for r in j.decision.reasons if r.mode == "snoozed"),
                )
                for j in recompute(account)
            }
            assert at_ingest == in_sql
            assert recomputed == in_sql
            for outcome, fraud, _score, _active, snoozed in in_sql.values():
                event(f"outcome {outcome}")
                if snoozed:
                    event("a snooze suppressed a rule")
                assert fraud == (outcome == "block")
            for d in stored.values():
                for r in d.reasons:
                    if r.mode == "list":
                        event(f"decided by a list: {d.outcome}")
    finally:
        with admin, admin.cursor() as cur:
            cur.execute("DELETE FROM rule_snoozes")
            cur.execute("DELETE FROM list_items")
            cur.execute("UPDATE lists SET action = NULL")
        admin.close()


@st.composite
def columnar_rule_sets(draw: st.DrawFn) -> list[dict[str, object]]:
    return [
        {
            "id": f"r{index}",
            "description": "generated",
            "when": " OR ".join(draw(st.lists(comparisons(features=comparable), min_size=1, max_size=3))),
            "score": draw(st.sampled_from(["0.2", "0.5", "1"])),
            "mode": draw(st.sampled_from(["active", "active", "shadow"])),
        }
        for index in range(draw(st.integers(1, 4)))
    ]


@st.composite
def one_currency_histories(draw: st.DrawFn) -> list[Row]:
    """Histories in EUR alone, long enough for a chunk to be decided as columns (rule_engine.COLUMN_ROWS)."""
    ts = T0
    rows = []
    for _ in range(draw(st.integers(COLUMN_ROWS, 40))):
        ts += draw(gaps)
        merchant = draw(st.sampled_from([None, "a", "b"]))
        rows.append((draw(st.integers(0, 2)), ts, draw(amounts("EUR")), "EUR", merchant, draw(attribute_values)))
    return rows


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=one_currency_histories(),
    rules=columnar_rule_sets(),
    cut=st.integers(COLUMN_ROWS, 40),
    options=feature_options(),
)
def test_batches_decided_as_columns_store_what_sql_and_the_recomputation_decide(
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
    rows: list[Row],
    rules: list[dict[str, object]],
    cut: int,
    options: dict[str, object],
) -> None:
    # Given one-currency histories stored in two batches (the second over a stored history), with rules
    # reading the features the columns compute,
    taken: list[bool] = []

    def recording(*args: Any) -> Any:
        columns = columnar_features(*args)
        taken.append(columns is not None)
        return columns

    monkeypatch.setattr(detection, "columnar_features", recording)
    apply_rules(database, rules, threshold="0.5", features=options)
    batch, accounts = materialise(rows)
    stored = {}
    for part in (batch[:cut], batch[cut:]):
        for result in store(part) if part else []:
            stored[result.transaction.transaction_id] = result.decision
    # then the first batch (at least COLUMN_ROWS transactions of new accounts) was decided as columns,
    assert taken and taken[0]
    event("second batch as columns" if len(taken) > 1 and taken[1] else "one batch as columns")
    # and what was stored is what SQL and the recomputation decide, with the features the recomputation gives
    # (stored as the columns wrote them: the same decimals, 0 and 0.000 told apart).
    features = {
        tid: {name: str(value) for name, value in json.loads(text, parse_float=Decimal).items()}
        for tid, text in database.query("SELECT transaction_id, features::text FROM transactions")
    }
    for account in accounts:
        recomputed = recompute(account)
        for j in recomputed:
            stored_features = features[j.transaction.transaction_id]
            assert stored_features == {name: str((j.features or {}).get(name)) for name in stored_features}
        in_python = python_decisions(recomputed)
        assert in_python == sql_decisions(database, account)
        for tid, (fraud, score, active, shadow) in in_python.items():
            decision = stored[tid]
            assert (decision.fraud, decision.score) == (fraud, score)
            assert sorted(r.rule_id for r in decision.reasons if r.mode == "active") == active
            assert sorted(r.rule_id for r in decision.reasons if r.mode == "shadow") == shadow
