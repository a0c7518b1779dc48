"""Concurrent writers on real, separate connections: every collision has a defined answer, never an error.

Each writer has a connection of its own, as separate Lambda execution environments have. Where the order of
events matters, the test holds one writer's transaction open and waits until the other is seen waiting on it in
pg_stat_activity, so the collision happens every run instead of by chance.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import psycopg2
import pytest

from tests.conftest import Database, EmbeddedPostgres, admin_query
from tests.integration.helpers import T0, store, tx
from txguard import db
from txguard.detection import DetectorCache as RuleCache
from txguard.domain import StoreResult, Transaction
from txguard.ingest import DuplicateIdConflict, store_transactions
from txguard.migrate import migrate, service_login_role
from txguard_dev.local.postgres import with_database

pytestmark = pytest.mark.integration


def store_on_own_connection(batch: list[Transaction]) -> list[StoreResult]:
    """The batch through run_in_transaction, on a connection of this caller's own."""
    holder = db.ConnectionHolder()
    try:
        return db.run_in_transaction(
            lambda cur: store_transactions(cur, batch, RuleCache().current(cur, 0)), holder=holder
        )
    finally:
        holder.reset()


class Outcome:
    """What a writer running in a thread returned or raised."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], Any]) -> None:
        try:
            self.value = work()
        except BaseException as exc:  # reported by result()
            self.error = exc

    def result(self, timeout_s: float = 30) -> Any:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the writer did not finish"
        if self.error is not None:
            raise self.error
        return self.value


def wait_until_a_writer_waits_on_a_lock(database: Database, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        waiting = database.query(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND application_name = 'txguard'"
        )[0][0]
        if waiting:
            return
        time.sleep(0.01)
    raise AssertionError("the second writer never waited on the first")


@contextmanager
def open_writer(batch: list[Transaction]) -> Iterator[None]:
    """The batch stored in a transaction that stays open (uncommitted) until the block ends, then commits."""
    holder = db.ConnectionHolder()
    try:
        with holder.transaction() as cur:
            store_transactions(cur, batch, RuleCache().current(cur, 0))
            # A few rows are written with the unit of work's next statement or its COMMIT: send them now, so
            # that they are in the table, uncommitted, while the block runs.
            cur.execute("SELECT 1")
            yield
    finally:
        holder.reset()


def stored_ids(database: Database) -> list[tuple[int, int]]:
    return database.query("SELECT transaction_id, account_id FROM transactions ORDER BY transaction_id")


def test_an_id_reused_with_other_content_by_a_concurrent_batch_is_a_conflict(database: Database) -> None:
    # Two batches for different accounts take no lock in common; both find id 500 free and race to store it.
    winner = [tx(1, T0, "10.00", tid=500)]
    loser = [tx(2, T0, "99.00", tid=501), tx(2, T0 + 1000, "20.00", tid=500)]
    with open_writer(winner):
        racing = Outcome(lambda: store_on_own_connection(loser))
        wait_until_a_writer_waits_on_a_lock(database)
    with pytest.raises(DuplicateIdConflict) as refused:
        racing.result()
    assert refused.value.conflicts == [(1, 500, ["account_id", "timestamp", "amount"])]
    assert stored_ids(database) == [(500, 1)]
    assert database.query("SELECT count(*) FROM account_stats WHERE account_id = 2 AND tx_count > 0") == [(0,)]


def test_an_id_stored_by_a_concurrent_batch_with_the_same_content_is_a_duplicate(database: Database) -> None:
    # The same content means the same account: the second batch waits on the account, then finds the id stored.
    shared = tx(1, T0, "10.00", tid=600)
    with open_writer([shared]):
        racing = Outcome(lambda: store_on_own_connection([tx(2, T0, "5.00", tid=601), shared]))
        wait_until_a_writer_waits_on_a_lock(database)
    results = racing.result()
    assert [(r.transaction.transaction_id, r.status) for r in results] == [(601, "stored"), (600, "duplicate")]
    assert stored_ids(database) == [(600, 1), (601, 2)]


def test_ids_crossing_in_order_end_in_a_deadlock_that_is_answered_by_content(database: Database) -> None:
    # A stores x then y; B stores y then x: each ends up waiting on the other, and PostgreSQL aborts one.
    a_x, a_y = tx(1, T0, "10.00", tid=700), tx(1, T0 + 1000, "11.00", tid=701)
    b_y, b_x = tx(1, T0 + 1000, "11.00", tid=701), tx(2, T0 + 2000, "12.00", tid=700)
    first = psycopg2.connect(database.admin_url)
    try:
        with first.cursor() as cur:
            # B, the service's connection, detects the deadlock first and is the one aborted: the case to handle.
            cur.execute("SET deadlock_timeout = '60s'")
            cur.execute(_INSERT, _row(a_x))
        racing = Outcome(lambda: store_on_own_connection([b_y, b_x]))
        wait_until_a_writer_waits_on_a_lock(database)
        second_insert = Outcome(lambda: first.cursor().execute(_INSERT, _row(a_y)))
        second_insert.result()  # returns once B was aborted
        wait_until_a_writer_waits_on_a_lock(database)  # B's next attempt waits on A again
        first.commit()
    finally:
        first.close()
    with pytest.raises(DuplicateIdConflict) as refused:
        racing.result()
    assert refused.value.conflicts == [(1, 700, ["account_id", "timestamp", "amount"])]
    assert stored_ids(database) == [(700, 1), (701, 1)]


_INSERT = """INSERT INTO transactions (transaction_id, account_id, ts, amount, currency, merchant_id, fraud, score,
                                       reasons, rule_set_version)
             VALUES (%s, %s, txguard_ms_to_ts(%s), %s, %s, %s, false, 0, '[]', 1)"""


def _row(t: Transaction) -> tuple[Any, ...]:
    return (t.transaction_id, t.account_id, t.ts, t.amount, t.currency, t.merchant_id)


def test_a_batch_of_replays_is_answered_while_another_writer_holds_its_accounts(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = [tx(a, T0 + a, "10.00", merchant_id=f"m-{a}") for a in range(1, 21)]
    store(batch)
    monkeypatch.setenv("TXGUARD_STATEMENT_TIMEOUT_MS", "300")
    blocker = psycopg2.connect(database.admin_url)
    try:
        with blocker.cursor() as cur:  # a writer in the middle of a batch for the same accounts
            cur.execute("SELECT * FROM account_stats FOR UPDATE")
        replays = [Outcome(lambda: store_on_own_connection(batch)) for _ in range(8)]
        answers = [r.result() for r in replays]
    finally:
        blocker.close()
    for answer in answers:
        assert [(r.transaction.transaction_id, r.status) for r in answer] == [
            (t.transaction_id, "duplicate") for t in batch
        ]
    assert database.query("SELECT count(*) FROM transactions") == [(20,)]


def test_an_id_reused_with_other_content_is_refused_while_another_writer_holds_its_account(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lock statement takes no lock for a stored id: the conflict is answered without waiting for the writer.
    stored = tx(1, T0, "10.00", tid=800)
    store([stored])
    monkeypatch.setenv("TXGUARD_STATEMENT_TIMEOUT_MS", "300")
    blocker = psycopg2.connect(database.admin_url)
    try:
        with blocker.cursor() as cur:
            cur.execute("SELECT * FROM account_stats FOR UPDATE")
        with pytest.raises(DuplicateIdConflict) as refused:
            store_on_own_connection([stored._replace(amount=Decimal("11.00"))])
    finally:
        blocker.close()
    assert refused.value.conflicts == [(0, 800, ["amount"])]
    assert stored_ids(database) == [(800, 1)]


def test_one_transaction_sent_again_while_its_first_send_is_uncommitted_is_a_duplicate(database: Database) -> None:
    # The second send waits on the account's lock, then finds the id stored under it: stored once, answered with
    # the decision stored.
    alone = tx(1, T0, "10.00", tid=900)
    with open_writer([alone]):
        racing = Outcome(lambda: store_on_own_connection([alone]))
        wait_until_a_writer_waits_on_a_lock(database)
    results = racing.result()
    assert [(r.transaction.transaction_id, r.status) for r in results] == [(900, "duplicate")]
    assert stored_ids(database) == [(900, 1)]
    assert database.query("SELECT tx_count FROM account_stats WHERE account_id = 1") == [(1,)]


def test_a_batch_of_5000_merchants_takes_a_bounded_number_of_locks(own_postgres: EmbeddedPostgres) -> None:
    # A private server with a lock table far smaller than 5,000 entries; never the shared one.
    conn = psycopg2.connect(own_postgres.url)
    conn.autocommit = True  # ALTER SYSTEM runs outside a transaction block
    with conn.cursor() as cur:
        cur.execute("ALTER SYSTEM SET max_locks_per_transaction = 10")
        cur.execute("ALTER SYSTEM SET max_connections = 10")
    conn.close()
    own_postgres.stop()
    own_postgres.start()
    assert admin_query(own_postgres.url, "SHOW max_locks_per_transaction") == [("10",)]
    migrate(own_postgres.url)
    service_url = with_database(own_postgres.url, "postgres", user=service_login_role("postgres"))
    batch = [tx(1 + i % 50, T0 + i, "10.00", merchant_id=f"m-{i}") for i in range(5000)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DATABASE_URL", service_url)
        results = store_on_own_connection(batch)
    assert [r.status for r in results] == ["stored"] * 5000
    assert admin_query(own_postgres.url, "SELECT count(*) FROM transactions") == [(5000,)]


@pytest.mark.parametrize(
    ("statement", "retry_after_s"),
    [
        ("SELECT 1 / 0", 30),  # class 22, a data exception
        ("SELECT * FROM no_such_table", 30),  # class 42
        ("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40001'; END $$", 1),  # serialization failure
        ("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '53200'; END $$", 1),  # out of (shared) memory
        ("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'XX000'; END $$", 30),  # internal error
    ],
)
def test_every_database_error_is_a_database_unavailable_never_a_raw_error(
    database: Database, statement: str, retry_after_s: int
) -> None:
    with pytest.raises(db.DatabaseUnavailable) as failed:
        db.run_in_transaction(lambda cur: cur.execute(statement))
    assert failed.value.retry_after_s == retry_after_s
    assert db.run_in_transaction(lambda cur: cur.execute("SELECT 1") or "usable") == "usable"


def test_two_batches_sent_at_once_that_reuse_an_id_store_it_once_and_refuse_the_other(database: Database) -> None:
    # No forced order: ten rounds of the race as clients produce it, each batch on its own connection. The
    # batches are large enough that both look for the shared id before either has committed.
    big = 999
    for round_ in range(10):
        shared = 10_000 + round_
        batches = [
            [tx(100 + round_, T0 + i, "10.00", tid=100_000 + 1000 * round_ + i) for i in range(big)]
            + [tx(100 + round_, T0 + big, "10.00", tid=shared)],
            [tx(200 + round_, T0 + i, "20.00", tid=200_000 + 1000 * round_ + i) for i in range(big)]
            + [tx(200 + round_, T0 + big, "20.00", tid=shared)],
        ]
        start = threading.Barrier(2)

        def send(batch: list[Transaction], start: threading.Barrier = start) -> list[StoreResult]:
            start.wait()
            return store_on_own_connection(batch)

        racing = [Outcome(lambda b=b: send(b)) for b in batches]
        outcomes = []
        for outcome in racing:
            try:
                outcomes.append(("stored", outcome.result()))
            except DuplicateIdConflict as refused:
                outcomes.append(("conflict", refused.conflicts))
        assert sorted(kind for kind, _ in outcomes) == ["conflict", "stored"], round_
        assert database.query("SELECT count(*) FROM transactions WHERE transaction_id = %s", (shared,)) == [(1,)]
    assert database.query("SELECT count(*) FROM transactions") == [(10 * (big + 1),)]
