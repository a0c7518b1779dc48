"""Every request's reads are bounded by the rules' window around what it decides, never by the history's length.

Reads are counted by PostgreSQL itself: the rows its scans of `transactions` (table and indexes) returned within
the request's own database transaction (pg_stat_get_xact_tuples_returned). Each test builds a history far longer
than the bound it asserts, and checks the decisions against a replay of the whole history.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2.extensions
import pytest

import txguard.service
from tests.conftest import Database
from tests.integration.helpers import T0, apply_rules, recompute, rule, store, tx
from txguard import db, queries, service
from txguard.storage import transactions

pytestmark = pytest.mark.integration

DAY = 86_400_000
HISTORY = 3_000  # transactions, one every ~2.4 hours over ~300 days
GAP = 300 * DAY // HISTORY

# Rules that fire on every transaction (in shadow mode), so that each decision's explanations carry the values
# of every feature: comparing explanations compares features.
EVERY_FEATURE = [
    rule(name, when, mode="shadow", score="0.1")
    for name, when in [
        ("count", "count >= 0"),
        ("mean", "amount > 0 * mean_amount"),
        ("std", "std_amount >= 0"),
        ("max", "max_amount >= 0"),
        ("previous", "seconds_since_previous >= 0"),
        ("age", "account_age_seconds >= 0"),
        ("c1m", "count_1m >= 0"),
        ("s1h", "sum_1h >= 0"),
        ("c24h", "count_24h >= 0"),
        ("s24h", "sum_24h >= 0"),
        ("mc1h", "merchant_count_1h >= 0"),
        ("ms24h", "merchant_sum_24h >= 0"),
    ]
] + [rule("spike", "amount > 2 * mean_amount AND count >= 3")]

_READS = """SELECT pg_stat_get_xact_tuples_returned('transactions'::regclass)
                   + coalesce(sum(pg_stat_get_xact_tuples_returned(indexrelid)), 0)
            FROM pg_index WHERE indrelid = 'transactions'::regclass"""


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Rows of `transactions` read by each service call (store, account_view), in order."""
    counted: list[int] = []
    real = db.run_in_transaction

    def counting(work: Callable[[psycopg2.extensions.cursor], Any], *args: Any, **kwargs: Any) -> Any:
        def unit(cur: psycopg2.extensions.cursor) -> tuple[Any, int]:
            # The counters may still hold earlier transactions' reads (they are flushed at most once a second).
            cur.execute(_READS)
            before = int(cur.fetchone()[0])
            result = work(cur)
            cur.execute(_READS)
            return result, int(cur.fetchone()[0]) - before

        result, count = real(unit, *args, **kwargs)
        counted.append(count)
        return result

    monkeypatch.setattr(txguard.service, "run_in_transaction", counting)
    yield counted


def build_history(
    database: Database, account_id: int, start: int, count: int = HISTORY, merchant: str | None = "m-0"
) -> int:
    rng = random.Random(account_id)
    ts, batch = start, []
    for _ in range(count):
        ts += rng.randint(GAP // 2, GAP * 3 // 2)
        batch.append(tx(account_id, ts, f"{rng.randint(100, 9_999) / 100:.2f}", merchant_id=merchant))
    for i in range(0, count, 1000):
        store(batch[i : i + 1000])
    database.execute("ANALYZE transactions")  # as autovacuum keeps a live table analysed
    return ts


def assert_decided_like_a_replay(results: list[Any], account_id: int) -> None:
    """Each new transaction's decision is the one a replay of the account's whole history gives it."""
    replayed = {j.transaction.transaction_id: j.decision for j in recompute(account_id)}
    for r in results:
        assert r.status == "stored"
        assert r.decision.reasons == replayed[r.transaction.transaction_id].reasons, r.transaction


def test_a_transaction_dated_2000_reads_nothing_of_the_history_after_it(database: Database, reads: list[int]) -> None:
    apply_rules(database, EVERY_FEATURE)
    build_history(database, 1, T0)
    results = service.store([tx(1, 946_684_800_000, "25.00", merchant_id="m-0")])  # 2000-01-01T00:00:00Z
    assert reads[-1] <= 5, f"{reads[-1]} rows read"
    assert "the number of previous transactions (0) is at least 0" in [
        r.explanation for r in results[0].decision.reasons
    ]
    assert_decided_like_a_replay(results, 1)


def test_a_backfill_two_years_back_reads_only_the_days_around_it(database: Database, reads: list[int]) -> None:
    apply_rules(database, EVERY_FEATURE)
    build_history(database, 1, T0)
    backfill = [tx(1, T0 - 730 * DAY + i * 600_000, "12.50", merchant_id="m-0") for i in range(500)]
    results = service.store(backfill)
    assert reads[-1] <= 5, f"{reads[-1]} rows read"
    assert_decided_like_a_replay(results, 1)


def test_late_transactions_inside_the_history_read_only_a_day_around_each(database: Database, reads: list[int]) -> None:
    apply_rules(database, EVERY_FEATURE)
    build_history(database, 1, T0)
    rng = random.Random(5)
    # Spread over the whole history: each lands between stored transactions, some on the same day as others.
    late = sorted(rng.sample(range(T0, T0 + 300 * DAY), 20))
    results = service.store([tx(1, ts, f"{rng.randint(1, 50_000) / 100:.2f}", merchant_id="m-0") for ts in late])
    # at most two days of transactions (~20 a day) before each late one, and nothing after it
    assert reads[-1] <= 20 * 2 * 20, f"{reads[-1]} rows read"
    assert_decided_like_a_replay(results, 1)
    daily = database.query(
        "SELECT account_id, day, currency, tx_count, amount_sum, amount_sum_sq, amount_max, last_ts "
        "FROM account_daily ORDER BY 1, 2, 3"
    )
    assert daily == database.query(
        "SELECT account_id, div(txguard_ts_to_ms(ts), 86400000)::integer, currency, count(*), sum(amount), "
        "sum(amount * amount), max(amount), max(ts) FROM transactions GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    )


def test_a_small_account_at_a_busy_merchant_reads_only_the_merchants_window(
    database: Database, reads: list[int]
) -> None:
    apply_rules(database, EVERY_FEATURE)
    build_history(database, 1, T0, merchant="m-busy")  # another account's 3,000 transactions at the merchant
    results = service.store([tx(2, T0 + 150 * DAY, "30.00", merchant_id="m-busy")])
    assert reads[-1] <= 30, f"{reads[-1]} rows read"  # the merchant's last 24 hours: about ten
    assert "merchant m-busy" in " ".join(r.explanation for r in results[0].decision.reasons)
    assert_decided_like_a_replay(results, 2)


def test_recompute_reads_a_bounded_window_and_its_pages_give_the_whole_history(
    database: Database, reads: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    apply_rules(database, [rule("spike", "amount > 1.5 * mean_amount AND count_24h >= 1 AND merchant_count_1h >= 0")])
    build_history(database, 1, T0)
    build_history(database, 2, T0 + GAP // 3)  # another account at the same merchant
    monkeypatch.setattr(queries, "RECOMPUTE_WINDOW", 400, raising=False)
    expected = [j.transaction.transaction_id for j in reversed(recompute(1)) if j.decision.fraud]
    assert len(expected) > 100
    seen: list[int] = []
    cursor = None
    reads.clear()
    while True:
        view = service.account_view(1, limit=50, cursor=cursor, recompute=True)
        seen.extend(j.transaction.transaction_id for j in view.page.items)
        cursor = view.page.next_cursor
        if cursor is None:
            break
    assert seen == expected
    # a window of 400, its day before, and the merchant's windows around each: far below the 6,000 stored
    assert max(reads) <= 2_500, reads


def test_a_merchant_is_read_only_as_far_back_as_the_merchant_rules_look(database: Database, reads: list[int]) -> None:
    # The account's windows reach a day, the merchant's a minute: a merchant busy all day is read for a minute.
    apply_rules(database, [rule("busy_day", "count_24h >= 0"), rule("busy_minute", "merchant_count_1m >= 0")])
    busy = [tx(1, T0 + i * 29_000, "10.00", merchant_id="m-busy") for i in range(HISTORY)]  # a day of it
    for i in range(0, HISTORY, 1000):
        store(busy[i : i + 1000])
    results = service.store([tx(2, T0 + HISTORY * 29_000, "30.00", merchant_id="m-busy")])
    assert reads[-1] <= 5, f"{reads[-1]} rows read"  # the merchant's last minute: two or three
    assert "merchant m-busy in the previous minute (2)" in " ".join(r.explanation for r in results[0].decision.reasons)
    assert_decided_like_a_replay(results, 2)


def test_the_windows_read_give_back_every_stored_timestamp_to_the_millisecond(database: Database) -> None:
    """Tail reads turn timestamps into epoch ms through date_part's float8 epoch (cheaper than numeric): exact for
    timestamps stored as whole milliseconds, from the earliest accepted to decades ahead."""
    now = int(time.time() * 1000)
    stamps = sorted(
        {946_684_800_000, 946_684_800_001, 946_684_800_999, 1_700_000_000_123, now - 1, now, now + 999}
        | {random.Random(7).randrange(946_684_800_000, 4_102_444_800_000) for _ in range(200)}
    )
    store([tx(77, ms, "1.00", merchant_id="m-77") for ms in stamps])
    spans = {77: [(stamps[0], stamps[-1] + 1)]}
    read = db.run_in_transaction(lambda cur: transactions.account_rows(cur, spans))
    assert read[77].ts == stamps
    _, values = db.run_in_transaction(lambda cur: transactions.account_rows_and_values(cur, spans))
    assert values[77]["card_id"].ts == []
    merchant = db.run_in_transaction(
        lambda cur: transactions.merchant_windows(cur, [tx(78, stamps[-1] + 1, "1.00", "m-77")], 10**13)
    )
    assert merchant["m-77"].ts == stamps
