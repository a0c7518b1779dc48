"""Account tails kept in memory between batches (txguard.account_tails): used only while they are still the
account's stored rows, and then deciding exactly as a tail read from the database does."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from tests.conftest import Database
from tests.integration.helpers import T0, apply_rules, rule, store
from txguard import account_tails
from txguard.domain import Transaction
from txguard.storage import account_stats

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000
# Rules on every kind of tail feature (the 1-hour and 24-hour windows, the day windows, the previous transaction
# and the attribute values), recording them all, so that a stored row shows what deciding it read.
RECORDED = [
    "count",
    "mean_amount",
    "seconds_since_previous",
    "count_1h",
    "sum_1h",
    "count_24h",
    "sum_24h",
    "mean_amount_24h",
    "count_7d",
    "sum_7d",
    "count_30d",
    "amount_to_mean_30d",
    "distinct_countries_24h",
    "distinct_devices_24h",
    "distinct_cards_24h",
    "new_country",
    "new_device",
]
RULES = [
    rule("busy_hour", "count_1h >= 3", "0.4"),
    rule("busy_day", "count_24h >= 6 AND sum_24h > 200", "0.3"),
    rule("above_30d", "amount_to_mean_30d > 2", "0.3"),
    rule("countries", "distinct_countries_24h >= 3", "0.5"),
    rule("new_device", "new_device = 1 AND count_7d > 3", "0.2"),
]


@pytest.fixture
def tail_rules(database: Database) -> Database:
    apply_rules(database, RULES, features={"record": RECORDED})
    return database


@pytest.fixture
def taken() -> Iterator[list[int]]:
    """The accounts whose tails were used from memory, as the test goes."""
    hits: list[int] = []
    real = account_tails.take

    def counting(account_id: int, *args: Any) -> account_tails.Taken | None:
        found = real(account_id, *args)
        if found is not None:
            hits.append(account_id)
        return found

    account_tails.clear()
    patch = pytest.MonkeyPatch()
    patch.setattr(account_tails, "take", counting)
    yield hits
    patch.undo()
    account_tails.clear()


def batches(seed: int, accounts: int = 6, count: int = 30) -> list[list[Transaction]]:
    """Batches of 1-40 transactions over `accounts` accounts moving forward in time, with some late arrivals, an
    account switching currency, and attribute values from small pools."""
    rng = random.Random(seed)
    clock = T0
    last: dict[int, int] = {}
    tid = 0
    out = []
    for _ in range(count):
        clock += rng.randint(0, 3 * HOUR_MS)
        batch = []
        for _ in range(rng.choice([1, 2, 5, 12, 40])):
            account = rng.randint(1, accounts)
            ts = clock + rng.randint(0, HOUR_MS)
            if last.get(account) and rng.random() < 0.05:
                ts = last[account] - rng.randint(1, 6 * HOUR_MS)  # late: before the account's last stored one
            tid += 1
            batch.append(
                Transaction(
                    tid,
                    account,
                    ts,
                    Decimal(rng.randint(0, 30_000)) / 100,
                    "JPY" if account == 3 and rng.random() < 0.3 else "EUR",
                    country=rng.choice([None, "FR", "DE", "ES"]),
                    card_id=rng.choice([None, "c1", "c2"]),
                    device_id=rng.choice([None, "d1", "d2", "d3"]),
                )
            )
            last[account] = max(last.get(account, ts), ts)
        out.append(batch)
    return out


def shifted(batch: list[Transaction], accounts: int, ids: int) -> list[Transaction]:
    return [t._replace(account_id=t.account_id + accounts, transaction_id=t.transaction_id + ids) for t in batch]


def stored_decisions(database: Database, accounts: range, ids: int = 0) -> list[tuple[Any, ...]]:
    """(transaction id less `ids`, fraud, score, reasons, features) of the accounts' stored rows."""
    return database.query(
        """SELECT transaction_id - %s, fraud, score, reasons::text, features::text FROM transactions
           WHERE account_id BETWEEN %s AND %s ORDER BY transaction_id""",
        (ids, accounts.start, accounts.stop - 1),
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_batches_decided_on_kept_tails_are_stored_as_those_whose_tails_are_read(
    tail_rules: Database, taken: list[int], seed: int
) -> None:
    # Given the same batches, once with every tail read from the database, once (for other accounts) with the
    # tails kept from one batch to the next
    for batch in batches(seed):
        account_tails.clear()
        store(batch)
    read_only = len(taken)
    account_tails.clear()
    for batch in batches(seed):
        store(shifted(batch, 100, 1_000_000))

    # Then kept tails were used, and every decision and every recorded feature is the same
    assert read_only == 0 and len(taken) > 20
    assert stored_decisions(tail_rules, range(101, 107), 1_000_000) == stored_decisions(tail_rules, range(1, 7))


def _recorded(database: Database, transaction_id: int) -> dict[str, Any]:
    row = database.query("SELECT features FROM transactions WHERE transaction_id = %s", (transaction_id,))
    features: dict[str, Any] = row[0][0]
    return features


def _one(tid: int, ts: int, amount: str = "10.00", **attributes: str) -> Transaction:
    return Transaction(tid, 1, ts, Decimal(amount), "EUR", **attributes)  # type: ignore[arg-type]


def _as_another_function(monkeypatch: pytest.MonkeyPatch, work: Callable[[], object]) -> None:
    """Run `work` as another function would: with a memory of its own, which it leaves behind."""
    with monkeypatch.context() as other:
        other.setattr(account_tails, "_kept", {})
        other.setattr(account_tails, "_entries", 0)
        work()


def test_a_tail_kept_by_one_function_is_not_used_once_another_has_written_the_account(
    tail_rules: Database, taken: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given one function that stored two transactions for an account and kept its tail
    store([_one(1, T0, country="FR"), _one(2, T0 + 1000, country="FR")])
    # and another function that then stored two more for it, in other countries
    _as_another_function(
        monkeypatch, lambda: store([_one(3, T0 + 2000, country="DE"), _one(4, T0 + 3000, country="ES")])
    )

    # When the first function stores the account's next transaction
    store([_one(5, T0 + 4000, country="FR")])

    # Then it was decided on all four before it: its own kept tail, which lacks two, was not used
    assert taken == []
    recorded = _recorded(tail_rules, 5)
    assert (recorded["count_1h"], recorded["distinct_countries_24h"]) == (4, 3)
    # and the tail it keeps now is used by its next batch
    store([_one(6, T0 + 5000)])
    assert taken == [1] and _recorded(tail_rules, 6)["count_1h"] == 5


def test_a_batch_that_rolls_back_keeps_no_tail_and_the_next_reads_the_stored_rows(
    tail_rules: Database, taken: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an account's tail kept after a batch
    store([_one(1, T0), _one(2, T0 + 1000)])

    # When a batch takes it, decides on it and then fails before COMMIT
    def failing(*args: Any) -> None:
        raise RuntimeError("the batch fails after deciding")

    with monkeypatch.context() as broken:
        broken.setattr(account_stats, "add_to_daily_totals", failing)
        with pytest.raises(RuntimeError):
            store([_one(3, T0 + 2000), _one(4, T0 + 3000)])

    # Then nothing of it is kept, and the next batch is decided on the two stored transactions alone
    assert taken == [1] and account_tails.kept_entries() == 0
    store([_one(5, T0 + 4000, "30.00")])
    assert tail_rules.query("SELECT count(*) FROM transactions") == [(3,)]
    recorded = _recorded(tail_rules, 5)
    assert (recorded["count_1h"], recorded["sum_1h"], recorded["count"]) == (2, 20, 2)


def test_a_database_restored_under_a_warm_function_is_read_again(tail_rules: Database, taken: list[int]) -> None:
    # Given an account with one batch stored, and a copy of its rows as that batch left them
    store([_one(1, T0, "10.00"), _one(2, T0 + 1000, "10.00")])
    tables = ("account_stats", "account_currency_stats", "account_daily")
    copies = {table: tail_rules.query(f"SELECT * FROM {table} WHERE account_id = 1") for table in tables}
    # and a second batch stored, whose tail the function keeps
    store([_one(3, T0 + 2000, "500.00"), _one(4, T0 + 3000, "500.00")])

    # When the database is put back as the first batch left it
    tail_rules.execute("DELETE FROM transactions WHERE transaction_id IN (3, 4)")
    for table in tables:
        tail_rules.execute(f"DELETE FROM {table} WHERE account_id = 1")
        for row in copies[table]:
            placeholders = ", ".join(["%s"] * len(row))
            tail_rules.execute(f"INSERT INTO {table} VALUES ({placeholders})", row)

    # Then the next batch is decided on the rows stored now, not on the tail kept of the ones taken away
    store([_one(5, T0 + 4000, "10.00")])
    recorded = _recorded(tail_rules, 5)
    assert (recorded["count_1h"], recorded["sum_1h"]) == (2, 20)
    assert taken == [1]  # the second batch used the first one's tail; the third, after the restore, read it


def test_a_writer_that_leaves_written_by_alone_turns_the_kept_tail_off(tail_rules: Database, taken: list[int]) -> None:
    # Given a function that stored two transactions for an account and kept its tail
    store([_one(1, T0, country="FR"), _one(2, T0 + 1000, country="FR")])
    # and a writer that knows nothing of account_stats.written_by (code from before migration 0024, still serving
    # while a deploy rolls out) storing two more for it, and its running totals with them
    tail_rules.execute(
        """INSERT INTO transactions (transaction_id, account_id, ts, amount, currency, fraud, score, reasons,
                                     rule_set_version, country)
           VALUES (3, 1, txguard_ms_to_ts(%s), 10, 'EUR', false, 0, '[]', 1, 'DE'),
                  (4, 1, txguard_ms_to_ts(%s), 10, 'EUR', false, 0, '[]', 1, 'ES')""",
        (T0 + 2000, T0 + 3000),
    )
    tail_rules.execute(
        "UPDATE account_stats SET tx_count = tx_count + 2, last_ts = txguard_ms_to_ts(%s) WHERE account_id = 1",
        (T0 + 3000,),
    )
    tail_rules.execute(
        """UPDATE account_currency_stats SET tx_count = tx_count + 2, amount_sum = amount_sum + 20,
                  amount_sum_sq = amount_sum_sq + 200 WHERE account_id = 1"""
    )

    # When the function stores the account's next transaction
    store([_one(5, T0 + 4000, country="FR")])

    # Then the update cleared the number the function wrote, and the transaction was decided on all four before it
    assert taken == []
    recorded = _recorded(tail_rules, 5)
    assert (recorded["count"], recorded["count_1h"], recorded["distinct_countries_24h"]) == (4, 4, 3)


def test_a_step_after_commit_that_fails_is_logged_and_the_batch_stands(
    tail_rules: Database, monkeypatch: pytest.MonkeyPatch, log_lines: Any
) -> None:
    def failing(*args: Any) -> None:
        raise MemoryError("no room to keep the tails")

    monkeypatch.setattr(account_tails, "keep", failing)
    results = store([_one(1, T0), _one(2, T0 + 1000)])
    assert [r.status for r in results] == ["stored", "stored"]
    assert tail_rules.query("SELECT count(*) FROM transactions") == [(2,)]
    assert "a step after COMMIT failed; the unit of work is committed" in log_lines.getvalue()
    assert "no room to keep the tails" in log_lines.getvalue()
