"""The history features on hand-computable examples: day-aligned windows, merchant history, local time, and
merchant risk, which never reads a label from the future."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from txguard.detection import decisions_in_time_order, empty_history, empty_timeline
from txguard.domain import Transaction
from txguard.features import DAY_MS, Features, FeatureSettings, Timeline, local_time_features
from txguard.rule_engine import CompiledRuleSet
from txguard.rule_language import RuleSetError, validate_rule_set

D0 = 19_800 * DAY_MS  # 2024-03-19 00:00 UTC, a Tuesday
HOUR = 3_600_000


def detector(*features: str, options: dict[str, object] | None = None) -> CompiledRuleSet:
    """A rule set reading these features (one shadow rule), with an optional `features` block."""
    when = " OR ".join(f"{name} >= 0" for name in features)
    document: dict[str, object] = {"rules": [{"id": "r", "description": "r", "when": when, "score": "0.1"}]}
    if options is not None:
        document["features"] = options
    return CompiledRuleSet(1, validate_rule_set(document))


def features_of(
    history: list[Transaction], *names: str, merchants: dict[str, Timeline] | None = None, **options: object
) -> list[Features]:
    """The features of each transaction (in time order) replayed from nothing, as a backtest does."""
    ordered = sorted(history, key=lambda t: (t.ts, t.transaction_id))
    shops = merchants if merchants is not None else {}
    for t in ordered:
        if t.merchant_id is not None and t.merchant_id not in shops:
            shops[t.merchant_id] = empty_timeline()
    histories = {t.account_id: empty_history() for t in ordered}
    rules = detector(*names, options=options or None)
    return [d.features for d in decisions_in_time_order(ordered, histories, shops, rules)]


def tx(tid: int, ts: int, amount: str, merchant: str | None = None, account: int = 1) -> Transaction:
    return Transaction(tid, account, ts, Decimal(amount), "EUR", merchant)


def test_the_7_day_window_is_this_day_up_to_the_transaction_plus_the_6_days_before() -> None:
    history = [
        tx(1, D0 - 7 * DAY_MS + DAY_MS - 1, "1.00"),  # last ms of day d-7: outside
        tx(2, D0 - 6 * DAY_MS, "2.00"),  # first ms of day d-6: inside
        tx(3, D0 + 5 * HOUR, "4.00"),  # same day, before: inside
        tx(4, D0 + 9 * HOUR, "8.00"),  # the transaction decided
    ]
    last = features_of(history, "count_7d", "sum_7d", "mean_amount_7d", "count_30d", "sum_30d")[-1]
    assert (last["count_7d"], last["sum_7d"], last["mean_amount_7d"]) == (2, Decimal("6.00"), Decimal("3.000000"))
    assert (last["count_30d"], last["sum_30d"]) == (3, Decimal("7.00"))


def test_amount_to_mean_30d_divides_by_the_exact_30_day_mean_and_is_missing_without_one() -> None:
    history = [tx(1, D0, "1.00"), tx(2, D0 + 1, "2.00"), tx(3, D0 + 2, "3.00"), tx(4, D0 + 3, "5.00")]
    ratios = [f["amount_to_mean_30d"] for f in features_of(history, "amount_to_mean_30d")]
    # 2 ÷ 1; 3 ÷ 1.5; 5 ÷ 2
    assert ratios == [None, Decimal("2.000000"), Decimal("2.000000"), Decimal("2.500000")]
    zeros = features_of([tx(5, D0, "0.00"), tx(6, D0 + 1, "4.00")], "amount_to_mean_30d")
    assert [f["amount_to_mean_30d"] for f in zeros] == [None, None]  # a mean of 0 divides nothing


def test_mean_amount_24h_is_the_mean_of_the_previous_24_hours_only() -> None:
    history = [
        tx(1, D0, "100.00"),
        tx(2, D0 + 2 * HOUR, "1.00"),
        tx(3, D0 + 25 * HOUR, "3.00"),
        tx(4, D0 + 26 * HOUR, "9"),
    ]
    means = [f["mean_amount_24h"] for f in features_of(history, "mean_amount_24h")]
    # At 26 h, 1.00 (exactly 24 hours earlier) is out: the window (t - 24 h, t) is open.
    assert means == [None, Decimal("100.000000"), Decimal("1.000000"), Decimal("3.000000")]


def test_merchant_used_before_counts_only_strictly_earlier_transactions_of_the_same_account() -> None:
    history = [
        tx(1, D0, "1.00", "a"),
        tx(2, D0, "1.00", "a"),  # the same millisecond: not before
        tx(3, D0 + 1, "1.00", "a"),
        tx(4, D0 + 2, "1.00", "b"),
        tx(5, D0 + 3, "1.00", "a", account=2),  # another account's first time at a
        tx(6, D0 + 4, "1.00"),  # no merchant: missing
    ]
    used = [f["merchant_used_before"] for f in features_of(history, "merchant_used_before")]
    assert used == [0, 0, 1, 0, 0, None]


def test_merchant_counts_over_days_count_every_account_at_the_merchant() -> None:
    history = [
        tx(1, D0 - 29 * DAY_MS, "1.00", "a", account=1),
        tx(2, D0 - 7 * DAY_MS, "1.00", "a", account=2),
        tx(3, D0 - 1, "1.00", "a", account=3),
        tx(4, D0 + HOUR, "1.00", "a", account=1),
    ]
    last = features_of(history, "merchant_count_7d", "merchant_count_30d")[-1]
    assert (last["merchant_count_7d"], last["merchant_count_30d"]) == (1, 3)


@pytest.mark.parametrize(
    ("utc", "zone", "hour", "night", "weekend"),
    [
        ("2024-03-31T00:30:00", "Europe/Paris", 1, 1, 1),  # CET, before the clocks go forward
        ("2024-03-31T01:30:00", "Europe/Paris", 3, 1, 1),  # CEST: 02:xx does not exist that day
        ("2024-10-27T04:59:59.999", "Europe/Paris", 5, 1, 1),  # after the clocks go back, still night
        ("2024-10-28T05:59:59.999", "Europe/Paris", 6, 1, 0),  # 06:59 local: the last minute of night
        ("2024-10-28T06:00:00", "Europe/Paris", 7, 0, 0),  # 07:00 local: day
        ("2024-05-04T03:59:00", "America/New_York", 23, 0, 0),  # Friday 23:59 in New York, Saturday in UTC
        ("2024-05-04T03:59:00", "UTC", 3, 1, 1),
        ("2024-05-05T23:59:59.999", "UTC", 23, 0, 1),  # the last ms of Sunday
        ("2024-05-06T00:00:00", "UTC", 0, 1, 0),  # Monday
        ("2024-05-05T19:00:00", "Asia/Kolkata", 0, 1, 0),  # UTC+05:30: Monday 00:30
    ],
)
def test_local_time_features_follow_the_time_zone_across_daylight_saving_changes(
    utc: str, zone: str, hour: int, night: int, weekend: int
) -> None:
    ms = int(datetime.fromisoformat(utc).replace(tzinfo=UTC).timestamp() * 1000)
    names = frozenset({"hour_of_day", "is_night", "is_weekend"})
    assert local_time_features(ms, names, zone) == {"hour_of_day": hour, "is_night": night, "is_weekend": weekend}


def test_merchant_risk_counts_a_label_only_from_the_day_after_it_became_known() -> None:
    # Two transactions at merchant a on day d-8 (one fraud, labelled on day d at 01:00), one decided on day d and one
    # on day d+1, with the default delay of 7 days: risk_1d reads tx day d-8 for d, and d-7 for d+1 (nothing there).
    d = D0 // DAY_MS
    shop = empty_timeline()
    shop.use_label_steps([(d - 8, d, 1)])  # known on day d: counts before day d+1 only
    history = [
        tx(1, D0 - 8 * DAY_MS + HOUR, "1.00", "a", account=1),
        tx(2, D0 - 8 * DAY_MS + 2 * HOUR, "1.00", "a", account=2),
        tx(3, D0 + 2 * HOUR, "1.00", "a", account=3),
        tx(4, D0 + DAY_MS + HOUR, "1.00", "a", account=4),
    ]
    names = ("merchant_risk_1d", "merchant_risk_7d", "merchant_risk_30d")
    got = [[f[n] for n in names] for f in features_of(history, *names, merchants={"a": shop})]
    zero, half = Decimal("0.000000"), Decimal("0.500000")
    assert got[2] == [zero, zero, zero]  # on day d the label is not known yet, though labelled at 01:00
    assert got[3] == [zero, half, half]  # on day d+1: 1 fraud of 2 transactions in days [d-7-7, d-7)


def test_merchant_risk_uses_the_rule_set_s_label_delay() -> None:
    d = D0 // DAY_MS
    shop = empty_timeline()
    shop.use_label_steps([(d - 2, d - 1, 1)])
    history = [tx(1, D0 - 2 * DAY_MS, "1.00", "a", account=1), tx(2, D0 + HOUR, "1.00", "a", account=2)]
    got = features_of(history, "merchant_risk_1d", merchants={"a": shop}, label_delay_days=1)[-1]
    assert got["merchant_risk_1d"] == Decimal("1.000000")  # tx day d-2 is [d-1-1, d-1); known on d-1 < d


def test_the_features_block_is_validated_strictly_and_pins_the_settings() -> None:
    rules = detector("hour_of_day", options={"time_zone": "Asia/Tokyo", "label_delay_days": 3})
    assert rules.feature_settings == FeatureSettings("Asia/Tokyo", 3)
    assert detector("hour_of_day").feature_settings == FeatureSettings("UTC", 7)
    for bad, named in [
        ({"time_zone": "Mars/Base"}, "features.time_zone"),
        ({"label_delay_days": -1}, "features.label_delay_days"),
        ({"label_delay_days": 7.0}, "features.label_delay_days"),
        ({"label_delay_days": 366}, "features.label_delay_days"),
        ({"zone": "UTC"}, "features.zone"),
    ]:
        with pytest.raises(RuleSetError, match=named):
            detector("hour_of_day", options=bad)


def paid(tid: int, ts: int, amount: str, currency: str, merchant: str | None = "shop") -> Transaction:
    return Transaction(tid, 1, ts, Decimal(amount), currency, merchant)


AMOUNT_AND_COUNT_FEATURES = (
    "count",
    "mean_amount",
    "std_amount",
    "max_amount",
    "count_24h",
    "sum_24h",
    "mean_amount_24h",
    "count_7d",
    "sum_7d",
    "mean_amount_7d",
    "count_30d",
    "sum_30d",
    "mean_amount_30d",
    "amount_to_mean_30d",
    "merchant_count_24h",
    "merchant_sum_24h",
    "seconds_since_previous",
)


def test_a_first_payment_in_another_currency_counts_but_has_no_amount_history() -> None:
    # Given two EUR payments, then one in JPY an hour later
    history = [
        paid(1, D0 + HOUR, "10.00", "EUR"),
        paid(2, D0 + 2 * HOUR, "30.00", "EUR"),
        paid(3, D0 + 3 * HOUR, "5000", "JPY"),
    ]
    jpy = features_of(history, *AMOUNT_AND_COUNT_FEATURES)[-1]
    # then counts and times include the EUR payments, and no amount feature adds yen to euros
    assert (jpy["count"], jpy["count_24h"], jpy["count_7d"], jpy["count_30d"]) == (2, 2, 2, 2)
    assert jpy["merchant_count_24h"] == 2
    assert jpy["seconds_since_previous"] == Decimal(3600)
    assert jpy.get("mean_amount") is None and jpy.get("std_amount") is None and jpy.get("max_amount") is None
    assert (jpy["sum_24h"], jpy["sum_7d"], jpy["sum_30d"], jpy["merchant_sum_24h"]) == (0, 0, 0, 0)
    assert jpy["mean_amount_24h"] is None and jpy["mean_amount_7d"] is None and jpy["mean_amount_30d"] is None
    assert jpy["amount_to_mean_30d"] is None


def test_each_currency_keeps_its_own_amount_history_on_one_account_and_one_merchant() -> None:
    # Given EUR 10 and 30, JPY 5000, then EUR 20 and JPY 7000, all on one day at one merchant
    history = [
        paid(1, D0 + HOUR, "10.00", "EUR"),
        paid(2, D0 + 2 * HOUR, "30.00", "EUR"),
        paid(3, D0 + 3 * HOUR, "5000", "JPY"),
        paid(4, D0 + 4 * HOUR, "20.00", "EUR"),
        paid(5, D0 + 5 * HOUR, "7000", "JPY"),
    ]
    decided = features_of(history, *AMOUNT_AND_COUNT_FEATURES)
    eur, jpy = decided[3], decided[4]
    # EUR 20 sees the EUR 10 and 30 only: mean 20, deviation 10, largest 30; four earlier transactions counted
    assert eur["count"] == eur["count_24h"] == 3
    assert (eur["mean_amount"], eur["std_amount"], eur["max_amount"]) == (
        Decimal("20.000000"),
        Decimal("10.000000"),
        Decimal("30.00"),
    )
    assert (eur["sum_24h"], eur["mean_amount_24h"], eur["merchant_sum_24h"]) == (
        Decimal("40.00"),
        Decimal("20.000000"),
        Decimal("40.00"),
    )
    assert eur["amount_to_mean_30d"] == Decimal("1.000000")
    # JPY 7000 sees the JPY 5000 alone: mean 5000, ratio 1.4; counts of every currency
    assert (jpy["count"], jpy["count_7d"], jpy["merchant_count_24h"]) == (4, 4, 4)
    assert (jpy["mean_amount"], jpy["std_amount"], jpy["max_amount"]) == (Decimal("5000.000000"), 0, Decimal(5000))
    assert (jpy["sum_7d"], jpy["mean_amount_7d"], jpy["merchant_sum_24h"]) == (
        Decimal(5000),
        Decimal("5000.000000"),
        Decimal(5000),
    )
    assert jpy["amount_to_mean_30d"] == Decimal("1.400000")


def test_an_account_in_one_currency_gets_the_same_features_whichever_currency_it_is() -> None:
    history = [paid(i, D0 + i * HOUR, amount, "EUR") for i, amount in enumerate(["10.00", "0.00", "30.00", "7.50"], 1)]
    in_eur = features_of(history, *AMOUNT_AND_COUNT_FEATURES)
    in_usd = features_of([t._replace(currency="USD") for t in history], *AMOUNT_AND_COUNT_FEATURES)
    assert in_eur == in_usd
    assert in_eur[-1]["mean_amount"] == Decimal("13.333333")
