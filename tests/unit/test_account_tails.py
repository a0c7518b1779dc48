"""txguard.account_tails on its own: what a kept tail gives back, when it gives nothing, and its bound."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator

import pytest

from txguard import account_tails
from txguard.features import AccountHistory, Prior, RecentValues, Timeline, constant_totals


@pytest.fixture(autouse=True)
def empty() -> Iterator[None]:
    account_tails.clear()
    yield
    account_tails.clear()


def history(ts: list[int], currency: str = "EUR", countries: list[str] | None = None) -> AccountHistory:
    tail = Timeline(complete_from=ts[0] if ts else 0)
    for t in ts:
        tail.add(t, 100 * t, currency)
    found = AccountHistory(0, None, None, {}, tail, constant_totals(Prior(0, 0, 0, None, None), {}))
    if countries is not None:
        found.recent_values = {"country": RecentValues(list(ts), countries)}
    return found


def test_a_kept_tail_comes_back_from_low_on_once_and_only_for_its_writer() -> None:
    account_tails.keep(7, {1: history([10, 20, 30, 40])}, [1], with_values=False)
    assert account_tails.take(1, 8, 10, False) is None  # another writer since: and it is gone
    assert account_tails.take(1, 7, 10, False) is None

    account_tails.keep(7, {1: history([10, 20, 30, 40])}, [1], with_values=False)
    taken = account_tails.take(1, 7, 25, False)
    assert taken is not None and taken.values is None
    assert (taken.tail.complete_from, taken.tail.ts, taken.tail.units, taken.tail.currency) == (
        25,
        [30, 40],
        [3000, 4000],
        "EUR",
    )
    assert taken.tail.window(41, 16) == (2, 7000)
    assert account_tails.take(1, 7, 25, False) is None and account_tails.kept_entries() == 0


def test_a_kept_tail_that_does_not_reach_back_far_enough_or_lacks_the_values_is_not_given() -> None:
    account_tails.keep(3, {1: history([10, 20])}, [1], with_values=False)
    assert account_tails.take(1, 3, 9, False) is None  # kept from 10 on: 9 is not in it
    account_tails.keep(3, {1: history([10, 20])}, [1], with_values=False)
    assert account_tails.take(1, 3, 10, True) is None  # read without the attribute values
    account_tails.keep(3, {1: history([10, 20])}, [1], with_values=False)
    assert account_tails.take(1, None, 10, False) is None  # the account's writer is not known
    account_tails.keep(3, {1: history([10, 20])}, [1], with_values=False)
    assert account_tails.take(1, 3, 10, False) is not None


def test_values_come_back_from_low_on_and_an_empty_tail_as_the_database_gives_it() -> None:
    account_tails.keep(5, {1: history([10, 20, 30], countries=["FR", "DE", "ES"])}, [1], with_values=True)
    taken = account_tails.take(1, 5, 15, True)
    assert taken is not None and taken.values is not None
    assert (taken.values["country"].ts, taken.values["country"].values) == ([20, 30], ["DE", "ES"])
    assert (taken.values["card_id"].ts, taken.values["device_id"].values) == ([], [])

    account_tails.keep(5, {1: history([10, 20])}, [1], with_values=True)
    nothing_left = account_tails.take(1, 5, 21, True)
    assert nothing_left is not None
    assert (nothing_left.tail.ts, nothing_left.tail.currency, nothing_left.values) == ([], None, None)


def test_a_tail_in_several_currencies_is_not_kept() -> None:
    mixed = history([10, 20])
    mixed.tail.add(30, 5, "JPY")
    account_tails.keep(1, {1: mixed, 2: history([10])}, [1, 2], with_values=False)
    assert account_tails.kept_entries() == 1
    assert account_tails.take(1, 1, 10, False) is None


def test_the_oldest_kept_tails_go_first_beyond_the_bound_on_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(account_tails, "MAX_ENTRIES", 10)
    histories = {a: history([1, 2, 3, 4]) for a in range(1, 5)}
    account_tails.keep(9, histories, [1, 2], with_values=False)
    account_tails.keep(9, histories, [3, 4], with_values=False)  # 16 timestamps: account 1 goes, then 2
    assert account_tails.kept_entries() == 8
    assert [account_tails.take(a, 9, 1, False) is not None for a in range(1, 5)] == [False, False, True, True]
    assert account_tails.kept_entries() == 0


def test_attribute_values_count_against_the_bound_and_so_do_accounts(monkeypatch: pytest.MonkeyPatch) -> None:
    account_tails.keep(1, {1: history([1, 2, 3], countries=["FR", "DE", "ES"])}, [1], with_values=True)
    assert account_tails.kept_entries() == 6  # three timestamps, three countries

    account_tails.clear()
    monkeypatch.setattr(account_tails, "MAX_ACCOUNTS", 3)
    account_tails.keep(2, {a: history([5]) for a in range(1, 6)}, range(1, 6), with_values=False)
    assert (account_tails.kept_accounts(), account_tails.kept_entries()) == (3, 3)
    assert [account_tails.take(a, 2, 5, False) is not None for a in range(1, 6)] == [False, False, True, True, True]


@pytest.mark.parametrize(("rows", "with_values"), [(1, True), (4, True), (200, True)])
def test_a_full_memory_holds_less_than_40_mib(rows: int, with_values: bool) -> None:
    # Kept to the bounds with tails of every shape: many accounts of one row (each account's own lists and
    # records), or long tails; each row with three attribute values, each value a string of its own.
    def shaped(a: int) -> AccountHistory:
        ts = [1_700_000_000_000 + a * 1_000 + i for i in range(rows)]
        found = history(ts)
        if with_values:
            found.recent_values = {
                name: RecentValues(list(ts), [f"{name}-{a:08d}-{i}" for i in range(rows)])
                for name in ("card_id", "country", "device_id")
            }
        return found

    accounts = min(account_tails.MAX_ACCOUNTS, account_tails.MAX_ENTRIES // rows) + 100
    gc.collect()
    tracemalloc.start()
    try:
        for first in range(0, accounts, 5_000):
            histories = {a: shaped(a) for a in range(first, min(first + 5_000, accounts))}
            account_tails.keep(1, histories, list(histories), with_values)
            del histories
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert account_tails.kept_accounts() <= account_tails.MAX_ACCOUNTS
    assert account_tails.kept_entries() <= account_tails.MAX_ENTRIES
    assert held < 40 * 2**20, f"{held / 2**20:.1f} MiB held"


def test_a_writer_is_a_positive_63_bit_number_drawn_anew_each_time() -> None:
    drawn = {account_tails.new_writer() for _ in range(1000)}
    assert len(drawn) == 1000 and all(0 < w < 2**63 for w in drawn)
