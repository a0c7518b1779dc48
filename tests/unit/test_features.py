"""Point-in-time features from running totals and a tail, checked against a brute-force definition."""

import json
from decimal import Decimal
from random import Random

import pytest

from txguard.detection import decide_in_time_order, empty_history
from txguard.domain import Transaction
from txguard.features import (
    DAY_MS,
    AccountHistory,
    Amounts,
    CurrencyDailyTotals,
    Prior,
    StoredBefore,
    Timeline,
    constant_totals,
    features_json,
    to_units,
    window_reach_ms,
)
from txguard.rule_engine import CompiledRuleSet
from txguard.rule_language import validate_rule_set

Row = tuple[int, int, str]  # (timestamp, units, currency)


def brute_force(history: list[Row], t: int, units: int, currency: str) -> dict[str, object]:
    """The definition, straight: everything strictly before t; amounts only over those in t's currency."""
    before = [(ts, u, c) for ts, u, c in history if ts < t]
    same = [u for _, u, c in before if c == currency]
    n = len(before)
    result: dict[str, object] = {"count": n, "amount": Decimal(units).scaleb(-4)}
    result["max_amount"] = Decimal(max(same)).scaleb(-4) if same else None
    if n:
        result["seconds_since_previous"] = Decimal(t - max(ts for ts, _, _ in before)).scaleb(-3)
    for name, width in (("1m", 60_000), ("1h", 3_600_000), ("24h", DAY_MS)):
        inside = [(u, c) for ts, u, c in before if ts > t - width]
        result[f"count_{name}"] = len(inside)
        result[f"sum_{name}"] = Decimal(sum(u for u, c in inside if c == currency)).scaleb(-4)
    return result


def history_of(rows: list[Row], t: int) -> AccountHistory:
    """The account as ingest loads it for a transaction at t: running totals when t is newer than every row;
    otherwise per-day totals (per currency) plus the rows from the start of t's day and within a day before t."""
    last_ts = max(ts for ts, _, _ in rows)
    near_from = min(t - DAY_MS + 1, t - t % DAY_MS)
    near_rows = sorted((ts, u, c) for ts, u, c in rows if near_from <= ts < t)
    near = Timeline.mixed(near_from, [r[0] for r in near_rows], [r[1] for r in near_rows], [r[2] for r in near_rows])
    amounts: dict[str, Amounts] = {}
    for ts, u, c in sorted(rows):
        amounts.setdefault(c, Amounts()).add(ts, u)
    stored_before: StoredBefore
    if t > last_ts:
        whole = Prior(len(rows), 0, 0, None, last_ts)
        stored_before = constant_totals(whole, {c: a.prior() for c, a in amounts.items()})
    else:
        days: dict[str, dict[int, Prior]] = {}
        for ts, u, c in sorted(rows):
            per_day = days.setdefault(c, {})
            per_day[ts // DAY_MS] = per_day.get(ts // DAY_MS, Prior()).plus((ts,), (u,))
        # part of the days summed up front, the rest one by one, as ingest reads them
        all_days = sorted({d for per_day in days.values() for d in per_day})
        first = min(t // DAY_MS, all_days[len(all_days) // 2])
        before: dict[str, Prior] = {}
        listed: dict[str, list[tuple[int, Prior]]] = {}
        for c, per_day in days.items():
            for d, p in sorted(per_day.items()):
                if d < first:
                    b = before.get(c, Prior())
                    before[c] = Prior(
                        b.count + p.count,
                        b.sum_units + p.sum_units,
                        b.sum_sq_units + p.sum_sq_units,
                        max(b.max_units or 0, p.max_units or 0),
                        p.last_ts,
                    )
                elif d < t // DAY_MS:
                    listed.setdefault(c, []).append((d, p))
        stored_before = CurrencyDailyTotals(before, listed, near.copy()).before
    return AccountHistory(
        count=len(rows),
        first_ts=min(ts for ts, _, _ in rows),
        last_ts=last_ts,
        amounts=amounts,
        tail=near,
        stored_before=stored_before,
    )


@pytest.mark.parametrize("currencies", [["EUR"], ["EUR", "JPY", "BHD"]])
def test_features_match_the_definition_for_late_and_on_time_arrivals(currencies: list[str]) -> None:
    rng = Random(7)
    for _ in range(200):
        rows = []
        ts = 1_700_000_000_000
        for _ in range(rng.randint(1, 40)):
            ts += rng.choice([0, 1, 500, 59_999, 60_000, 60_001, 3_600_000, DAY_MS, 2 * DAY_MS, 400 * DAY_MS])
            rows.append((ts, rng.randint(1, 5_000_000), rng.choice(currencies)))
        t = rng.choice([ts + rng.randint(0, 100_000), rng.choice(rows)[0], rows[0][0] + rng.randint(-5, 5)])
        units, currency = rng.randint(1, 5_000_000), rng.choice(currencies)
        history = history_of(rows, t)
        got = history.features(t, units, currency)
        expected = brute_force(rows, t, units, currency)
        for name, value in expected.items():
            assert got.get(name) == value, (name, rows, t)


def test_the_mean_and_standard_deviation_are_exact_to_six_places() -> None:
    history = history_of(
        [(1, to_units(Decimal("10")), "EUR"), (2, to_units(Decimal("20")), "EUR"), (3, to_units(Decimal("31")), "EUR")],
        10,
    )
    got = history.features(10, 1, "EUR")
    assert got["mean_amount"] == Decimal("20.333333")
    assert got["std_amount"] == Decimal("8.576454")  # population standard deviation of 10, 20, 31


def test_transactions_sharing_a_timestamp_do_not_see_each_other() -> None:
    rules = CompiledRuleSet(
        1,
        validate_rule_set({"rules": [{"id": "seen", "description": "d", "when": "count >= 1", "score": "1"}]}),
    )
    same_time = [Transaction(i, 1, 5_000, Decimal("1.00"), "EUR") for i in (1, 2, 3)]
    decisions = decide_in_time_order(same_time, {1: empty_history()}, {}, rules)
    assert not any(d.fraud for d in decisions.values())
    later = decide_in_time_order([Transaction(4, 1, 5_001, Decimal("1.00"), "EUR")], {1: empty_history()}, {}, rules)
    assert not later[4].fraud


def test_timeline_windows_are_open_at_both_ends() -> None:
    timeline = Timeline.of(0, [(1_000, 1), (40_000, 2), (61_000, 4)])
    assert timeline.window(61_000, 60_000) == (1, 2)  # 1_000 is exactly 60 s before: outside
    assert timeline.window(61_001, 60_000) == (2, 6)


def test_a_timeline_stays_correct_when_entries_arrive_out_of_order() -> None:
    rng = Random(3)
    timeline = Timeline.of(-(10**9), [])  # complete for every window asked below
    entries: list[tuple[int, int]] = []
    for _ in range(300):
        entry = (rng.randint(0, 10_000), rng.randint(1, 1_000))
        timeline.add(*entry)
        entries.append(entry)
        t, width = rng.randint(0, 11_000), rng.randint(1, 5_000)
        inside = [u for ts, u in entries if t - width < ts < t]
        assert timeline.window(t, width) == (len(inside), sum(inside))


def test_a_window_wider_than_the_loaded_tail_is_refused_rather_than_undercounted() -> None:
    timeline = Timeline.of(50_000, [(55_000, 1)])
    assert timeline.window(100_000, 50_000) == (1, 1)
    with pytest.raises(ValueError, match="does not reach back"):
        timeline.window(100_000, 60_000)


def test_the_tail_reaches_only_as_far_back_as_the_rules_read() -> None:
    assert window_reach_ms(frozenset({"amount", "count"})) == 1
    assert window_reach_ms(frozenset({"count_1m"})) == 60_000
    assert window_reach_ms(frozenset({"count_1m", "merchant_sum_1h"})) == 3_600_000
    assert window_reach_ms(frozenset({"sum_24h"})) == DAY_MS


def test_mean_and_standard_deviation_round_exactly_like_the_decimal_definition() -> None:
    """Integer arithmetic (isqrt) against the definition: 60-digit decimals, rounded half up to six places."""
    from decimal import ROUND_HALF_UP, Context

    from txguard.features import _mean, _std

    exact, six = Context(prec=60, rounding=ROUND_HALF_UP), Decimal("0.000001")
    rng = Random(11)
    for _ in range(20_000):
        amounts = [
            rng.choice([rng.randint(1, 10 ** rng.randint(1, 12)), 5_000, 15_000]) for _ in range(rng.randint(1, 40))
        ]
        n, total, total_sq = len(amounts), sum(amounts), sum(u * u for u in amounts)
        mean = exact.divide(Decimal(total), Decimal(n * 10_000)).quantize(six, context=exact)
        spread = Decimal(n * total_sq - total * total)
        std = exact.divide(exact.sqrt(spread), Decimal(n * 10_000)).quantize(six, context=exact)
        assert (str(_mean(total, n)), str(_std(total, total_sq, n))) == (str(mean), str(std)), amounts


def test_a_timeline_in_several_currencies_counts_every_entry_and_sums_each_currency_alone() -> None:
    rng = Random(5)
    timeline = Timeline(complete_from=-(10**9), days={})
    entries: list[tuple[int, int, str]] = []
    for step in range(400):
        # one currency for a while (the timeline is not split), then three, arriving out of order
        entry = (
            rng.randint(0, 5 * DAY_MS),
            rng.randint(0, 1_000),
            "EUR" if step < 50 else rng.choice(["EUR", "JPY", "BHD"]),
        )
        timeline.add(*entry)
        entries.append(entry)
        t, width, currency = rng.randint(0, 6 * DAY_MS), rng.randint(1, DAY_MS), rng.choice(["EUR", "JPY", "BHD"])
        inside = [(u, c) for ts, u, c in entries if t - width < ts < t]
        same = [u for u, c in inside if c == currency]
        assert timeline.window_in(t, width, currency) == (len(inside), len(same), sum(same))
        day = t // DAY_MS
        for (_, days), got in zip((("7d", 7), ("30d", 30)), timeline.day_windows_in(t, currency), strict=True):
            window = [(u, c) for ts, u, c in entries if (day - days + 1) * DAY_MS <= ts < t]
            in_currency = [u for u, c in window if c == currency]
            assert got == (len(window), len(in_currency), sum(in_currency))
    assert timeline.by_currency is not None and set(timeline.by_currency) == {"EUR", "JPY", "BHD"}


@pytest.mark.parametrize(
    "value",
    ["0", "-0", "0.00", "12.50", "-3.25", "1E+2", "1.5E+7", "1E-7", "-2.5E-10", "0.000001", "123456789012345.678901",
     "2.333333333333333333333333333", "7E+30"],
)  # fmt: skip
def test_stored_features_write_exact_numbers_in_plain_notation(value: str) -> None:
    number = Decimal(value)
    written = features_json({"amount": number, "count": 3, "mean_amount": None}, ["amount", "count", "mean_amount"])
    assert written == '{"amount":' + format(number, "f") + ',"count":3,"mean_amount":null}'
    assert "E" not in written.split(",")[0]
    assert Decimal(json.loads(written, parse_float=Decimal)["amount"]) == number
