"""The generator in memory: reproducible, realistic rhythm, every fraud pattern, unique ids, labels kept apart."""

from __future__ import annotations

import dataclasses
import itertools
import json
import statistics
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path

import pytest

from txguard.intake import check_items
from txguard_generator import GENUINE, PATTERN_NAMES, GeneratedRun, GenerateParams, generate
from txguard_generator.accounts import SYNTHETIC_ACCOUNT_BASE, synthetic_account_id
from txguard_generator.attributes import HOME_COUNTRIES, AttributeDraw
from txguard_generator.ids import MAX_TRANSACTIONS_PER_RUN, id_range, new_run_id, run_of, transaction_id
from txguard_generator.params import EARLIEST_START_MS, MAX_ACCOUNTS
from txguard_generator.sinks import FILE_FIELDS, FileSink, transaction_record

START = 1_767_225_600_000  # 2026-01-01T00:00:00Z
NOW = 1_780_000_000_000
DAY_MS = 86_400_000


def run(seed: int = 7, run_id: int = 1000, **changes: object) -> GeneratedRun:
    params = dataclasses.replace(
        GenerateParams(num_transactions=5000, num_accounts=200, seed=seed, start=START), **changes
    )
    return generate(params, run_id=run_id, now_ms=NOW)


def content(r: GeneratedRun) -> list[tuple[object, ...]]:
    return [
        (i.transaction.account_id, i.transaction.ts, i.transaction.amount, i.transaction.merchant_id, i.pattern)
        for i in r
    ]


def test_the_same_seed_and_run_id_give_the_same_run() -> None:
    assert run(seed=7).items == run(seed=7).items


def test_the_same_seed_in_another_run_gives_the_same_traffic_under_new_ids() -> None:
    first, second = run(seed=7, run_id=1000), run(seed=7, run_id=1001)
    assert content(first) == content(second)
    assert not {i.transaction.transaction_id for i in first} & {i.transaction.transaction_id for i in second}


def test_another_seed_gives_other_traffic() -> None:
    assert content(run(seed=7)) != content(run(seed=8))


def test_exactly_the_requested_number_in_time_order() -> None:
    r = run(num_transactions=3217)
    assert len(r) == 3217
    timestamps = [i.transaction.ts for i in r]
    assert timestamps == sorted(timestamps)
    assert timestamps[0] >= START


def test_fraud_is_the_requested_share_and_every_pattern_appears_at_the_default_rate() -> None:
    r = run()  # 5000 transactions, the default fraud rate
    patterns = Counter(i.pattern for i in r)
    assert set(patterns) == {GENUINE, *PATTERN_NAMES}
    assert r.fraud_count == round(5000 * GenerateParams().fraud_rate)
    assert all(patterns[p] >= 10 for p in PATTERN_NAMES)


def test_no_fraud_when_the_rate_is_zero() -> None:
    assert run(fraud_rate=0.0).fraud_count == 0


def test_gaps_between_one_accounts_transactions_vary_like_a_random_process() -> None:
    by_account: dict[int, list[int]] = defaultdict(list)
    for item in run(num_transactions=20_000, num_accounts=100):
        if item.pattern == GENUINE:
            by_account[item.transaction.account_id].append(item.transaction.ts)
    spreads = []
    for timestamps in by_account.values():
        gaps = [b - a for a, b in itertools.pairwise(timestamps)]
        if len(gaps) >= 20:
            spreads.append(statistics.pstdev(gaps) / statistics.mean(gaps))  # coefficient of variation
    assert len(spreads) >= 50
    # A fixed rhythm would give 0, a Poisson process 1; a daily cycle on top pushes it above 1.
    assert statistics.median(spreads) > 0.8
    assert min(spreads) > 0.3


def test_accounts_have_a_daily_rhythm() -> None:
    hours = Counter(
        (i.transaction.ts % DAY_MS) // 3_600_000 for i in run(num_transactions=20_000) if i.pattern == GENUINE
    )
    assert max(hours.values()) > 2 * min(hours.values())


def test_accounts_spend_at_their_own_level() -> None:
    amounts: dict[int, list[Decimal]] = defaultdict(list)
    for item in run(num_transactions=20_000, num_accounts=50):
        if item.pattern == GENUINE:
            amounts[item.transaction.account_id].append(item.transaction.amount)
    medians = sorted(statistics.median(values) for values in amounts.values())
    assert medians[-1] > 5 * medians[0]


def test_amounts_are_positive_decimals_with_two_places() -> None:
    for item in run(num_transactions=2000):
        amount = item.transaction.amount
        assert isinstance(amount, Decimal) and amount > 0
        assert amount.as_tuple().exponent == -2


def test_ids_are_unique_positive_64_bit_and_carry_the_run() -> None:
    first, second = run(run_id=new_run_id(NOW)), run(run_id=new_run_id(NOW))  # same millisecond: still distinct
    ids = [i.transaction.transaction_id for i in (*first, *second)]
    assert len(set(ids)) == len(ids) == 10_000
    assert all(0 < tid < 2**63 for tid in ids)
    assert {run_of(i.transaction.transaction_id) for i in first} == {first.run_id}
    low, high = id_range(first.run_id)
    assert all(low <= i.transaction.transaction_id < high for i in first)


def test_the_last_index_of_a_run_stays_inside_its_range() -> None:
    low, high = id_range(5)
    assert transaction_id(5, MAX_TRANSACTIONS_PER_RUN - 1) == high - 1
    assert transaction_id(6, 0) == high and transaction_id(5, 0) == low


def test_without_a_start_the_run_ends_in_the_day_before_now_and_stays_in_the_apis_range() -> None:
    r = generate(GenerateParams(num_transactions=3000, num_accounts=300, seed=1), run_id=1, now_ms=NOW)
    timestamps = [i.transaction.ts for i in r]
    assert NOW - DAY_MS < max(timestamps) <= NOW  # continues "now", never in the future
    assert min(timestamps) >= EARLIEST_START_MS


def test_the_help_of_start_says_where_a_run_without_one_ends(capsys: pytest.CaptureFixture[str]) -> None:
    # What the test above checks, as `txguard generate --help` tells it (it once said the run ends now).
    from txguard_dev.cli import main

    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "moved by whole days to end within the 24 hours before now" in help_text


@pytest.mark.parametrize("later_ms", [61_000, 3_600_000 + 17, 5 * DAY_MS + 12_345_678, 400 * DAY_MS + 1])
def test_the_same_seed_without_a_start_gives_the_same_run_whatever_the_clock(later_ms: int) -> None:
    # `txguard generate --num-transactions 3000 --seed 7` run now and again later: only a whole-day shift.
    params = GenerateParams(num_transactions=3000, num_accounts=500, seed=7)
    first = generate(params, run_id=1, now_ms=NOW)
    second = generate(params, run_id=1, now_ms=NOW + later_ms)
    shift = second.items[0].transaction.ts - first.items[0].transaction.ts
    assert shift % DAY_MS == 0 and 0 <= shift <= later_ms
    assert [i.transaction._replace(ts=i.transaction.ts + shift) for i in first] == [i.transaction for i in second]
    assert [i.pattern for i in first] == [i.pattern for i in second]
    assert second.start_ms == first.start_ms + shift
    assert NOW + later_ms - DAY_MS < second.items[-1].transaction.ts <= NOW + later_ms


def test_generated_accounts_are_in_the_reserved_range_apart_from_real_ones() -> None:
    r = run(num_transactions=3000, num_accounts=200)
    accounts = {i.transaction.account_id for i in r}
    assert accounts <= set(range(SYNTHETIC_ACCOUNT_BASE + 1, SYNTHETIC_ACCOUNT_BASE + 201))
    assert len(accounts) > 150
    assert synthetic_account_id(MAX_ACCOUNTS) < 2**63  # the largest population still fits the API's ids


def test_a_small_scheduled_run_covers_minutes_not_days() -> None:
    # 100 transactions of 10,000 accounts at one every 8 hours each: about five minutes of traffic.
    r = generate(GenerateParams(num_transactions=100, num_accounts=10_000, seed=2), run_id=1, now_ms=NOW)
    span = r.items[-1].transaction.ts - r.items[0].transaction.ts
    assert 60_000 < span < 30 * 60_000


def test_records_sent_or_written_carry_no_label(tmp_path: Path) -> None:
    r = run(num_transactions=500)
    fields = {"account_id", "transaction_id", "timestamp", "amount", "currency", "merchant_id", *FILE_FIELDS}
    assert all(set(transaction_record(i.transaction)) <= fields for i in r)
    assert not hasattr(r.items[0].transaction, "pattern")
    for name in ("out.jsonl", "out.csv"):
        sink = FileSink(str(tmp_path / name))
        sink.send([i.transaction for i in r])
        sink.close()
        text = (tmp_path / name).read_text()
        assert not any(p in text for p in (*PATTERN_NAMES, GENUINE))
    first = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])
    assert set(first) <= fields and isinstance(first["amount"], str)


@pytest.mark.parametrize("size", [1, 2, 3, 11])
def test_tiny_runs_still_give_exactly_what_was_asked(size: int) -> None:
    r = run(num_transactions=size, num_accounts=1, fraud_rate=0.5)
    assert len(r) == size
    assert r.fraud_count == round(size * 0.5)


def test_generated_attributes_are_valid_and_fraud_looks_like_fraud_where_it_would() -> None:
    r = run(num_transactions=4000, num_accounts=100)
    items = [(i.transaction, i.pattern) for i in r]
    (checked,) = check_items([transaction_record(t) for t, _ in items[:1]])
    assert checked.transaction == items[0][0]  # what is sent reads back as generated
    assert all(c.transaction is not None for c in check_items([transaction_record(t) for t, _ in items]))
    seen: dict[int, set[str | None]] = {}
    genuine_home = genuine = 0
    for t, pattern in items:
        devices = seen.setdefault(t.account_id, set())
        if pattern in ("card_testing", "account_takeover"):
            assert t.device_id not in devices and t.country not in HOME_COUNTRIES and t.channel == "ecommerce"
        elif pattern == GENUINE:
            genuine += 1
            genuine_home += t.country in HOME_COUNTRIES
            devices.add(t.device_id)
    assert genuine_home / genuine > 0.95


def test_attributes_change_no_amount_time_or_label_of_a_seeded_run(monkeypatch: pytest.MonkeyPatch) -> None:
    with_attributes = [(i.transaction[:6], i.pattern) for i in run(num_transactions=1500)]
    monkeypatch.setattr(AttributeDraw, "attributes", lambda self, account, merchant, pattern: ())
    without = [(i.transaction, i.pattern) for i in run(num_transactions=1500)]
    assert all(t.attributes() == (None,) * 7 for t, _ in without)
    assert with_attributes == [(t[:6], pattern) for t, pattern in without]
