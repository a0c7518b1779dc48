"""Storing transactions: exactly once, decided on the history before each, atomically."""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any

import pytest

from tests.conftest import Database
from tests.integration.helpers import T0, apply_rules, recompute, rule, stats, store, tx
from txguard import db
from txguard.ingest import DuplicateIdConflict
from txguard.storage.transactions import decided_with_features

pytestmark = pytest.mark.integration

SEED = [rule("below_account_mean", "amount < 0.9 * mean_amount")]


def test_each_transaction_is_decided_on_the_history_before_it(database: Database) -> None:
    apply_rules(database, SEED)
    results = store([tx(1, T0, "100.00"), tx(1, T0 + 1000, "100.00"), tx(1, T0 + 2000, "80.00")])
    assert [r.decision.fraud for r in results] == [False, False, True]
    assert results[2].decision.reasons[0].explanation == (
        "amount 80.00 is less than 0.9 × the mean of the 2 previous transactions (100.00)"
    )
    stored = database.query("SELECT fraud, reasons->0->>'rule_id' FROM transactions ORDER BY ts")
    assert stored == [(False, None), (False, None), (True, "below_account_mean")]


def test_a_replayed_transaction_is_a_duplicate_with_its_original_decision_and_changes_nothing(
    database: Database,
) -> None:
    apply_rules(database, SEED)
    first = store([tx(1, T0, "100.00"), tx(1, T0 + 1000, "10.00", tid=555)])
    before = stats(database, 1)
    apply_rules(database, [rule("never", "amount > 1000000")])  # new rules must not re-decide a replay
    again = store([tx(1, T0 + 1000, "10.00", tid=555)])
    assert again[0].status == "duplicate"
    assert again[0].decision == first[1].decision
    assert stats(database, 1) == before
    assert database.query("SELECT count(*) FROM transactions") == [(2,)]


def test_the_same_id_with_other_content_is_refused_and_the_whole_batch_stores_nothing(
    database: Database,
) -> None:
    store([tx(1, T0, "100.00", tid=77)])
    before = stats(database, 1)
    with pytest.raises(DuplicateIdConflict) as refused:
        store([tx(2, T0, "5.00", tid=78), tx(1, T0, "100.01", tid=77)])
    assert refused.value.conflicts == [(1, 77, ["amount"])]
    assert not refused.value.in_request
    assert database.query("SELECT transaction_id FROM transactions") == [(77,)]
    assert stats(database, 1) == before and stats(database, 2) == ()


def test_a_repeated_id_inside_one_request_is_stored_once_or_refused_if_it_differs(database: Database) -> None:
    same = tx(1, T0, "10.00", tid=90)
    results = store([same, same])
    assert [r.status for r in results] == ["stored", "duplicate"]
    with pytest.raises(DuplicateIdConflict) as refused:
        store([tx(2, T0, "1.00", tid=91), tx(2, T0 + 5, "1.00", tid=91)])
    assert refused.value.in_request and refused.value.conflicts == [(1, 91, ["timestamp"])]
    assert database.query("SELECT count(*) FROM transactions") == [(1,)]


def test_a_late_transaction_is_judged_on_the_history_before_its_own_timestamp(database: Database) -> None:
    apply_rules(database, [rule("big", "amount > 3 * mean_amount"), rule("fast", "seconds_since_previous < 2")])
    store([tx(1, T0, "10.00"), tx(1, T0 + 10_000, "1000.00"), tx(1, T0 + 20_000, "1000.00")])
    late = store([tx(1, T0 + 5_000, "40.00")])[0]  # before both large ones: mean 10, previous 5 s earlier
    assert [r.rule_id for r in late.decision.reasons] == ["big"]
    assert "the mean of the 1 previous transactions (10.00)" in late.decision.reasons[0].explanation
    # and the totals equal those of the same transactions stored in time order
    store(
        [
            tx(2, T0, "10.00"),
            tx(2, T0 + 5_000, "40.00"),
            tx(2, T0 + 10_000, "1000.00"),
            tx(2, T0 + 20_000, "1000.00"),
        ]
    )
    assert stats(database, 1) == stats(database, 2)


def test_a_late_transaction_before_the_largest_amount_sees_only_earlier_maxima(database: Database) -> None:
    apply_rules(database, [rule("record", "amount > max_amount")])
    day = 86_400_000
    store([tx(1, T0, "50.00"), tx(1, T0 + 3 * day, "900.00")])
    late = store([tx(1, T0 + 2 * day, "60.00")])[0]
    assert [r.rule_id for r in late.decision.reasons] == ["record"]
    assert "(50.00)" in late.decision.reasons[0].explanation


def test_concurrent_batches_for_one_account_give_the_totals_of_serial_ones(database: Database) -> None:
    batches = [[tx(1, T0 + 1000 * (10 * b + i), f"{10 + b + i}.00") for i in range(10)] for b in range(8)]
    errors: list[BaseException] = []

    def ingest(batch: list) -> None:
        from txguard import db

        try:
            # each thread its own connection, as separate Lambda execution environments have
            holder = db.ConnectionHolder()
            from txguard.detection import DetectorCache as RuleCache
            from txguard.ingest import store_transactions

            with holder.transaction() as cur:
                store_transactions(cur, batch, RuleCache().current(cur, 0))
            holder.reset()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=ingest, args=(b,)) for b in reversed(batches)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    store([t.__class__(t.transaction_id + 10_000_000, 2, t.ts, t.amount, t.currency) for b in batches for t in b])
    assert stats(database, 1) == stats(database, 2)
    assert stats(database, 1)[0] == 80


def test_merchant_windows_count_other_accounts_at_the_same_merchant(database: Database) -> None:
    apply_rules(database, [rule("hot_merchant", "merchant_count_1h >= 2")])
    results = store([tx(1, T0, "5.00", "m1"), tx(2, T0 + 1000, "5.00", "m1"), tx(3, T0 + 2000, "5.00", "m1")])
    assert [r.decision.fraud for r in results] == [False, False, True]
    assert "merchant m1" in results[2].decision.reasons[0].explanation
    assert [j.decision.fraud for j in recompute(3)] == [True]


def test_amounts_are_stored_exactly(database: Database) -> None:
    store([tx(1, T0, "0.01"), tx(1, T0 + 1, "999999999999.99")])
    assert database.query("SELECT amount FROM transactions ORDER BY ts") == [
        (Decimal("0.0100"),),
        (Decimal("999999999999.9900"),),
    ]


def test_a_failure_while_rows_stream_in_is_raised_as_itself_and_stores_nothing(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows are decided while COPY runs; a bug there must not pass for a (retryable) database error."""
    import txguard.ingest

    real = txguard.ingest.decisions_in_time_order

    def fails_after_the_first(*args: object, **options: object) -> object:
        decided = real(*args, **options)  # type: ignore[arg-type]
        yield next(decided)
        raise RuntimeError("deciding failed")

    monkeypatch.setattr(txguard.ingest, "decisions_in_time_order", fails_after_the_first)
    with pytest.raises(RuntimeError, match="deciding failed"):
        store([tx(1, T0 + i, "10.00") for i in range(3)])
    assert database.query("SELECT count(*) FROM transactions") == [(0,)]
    assert stats(database, 1) in ((), (0, None, None, ()))


def test_the_service_connection_bounds_statements_and_never_jit_compiles(database: Database) -> None:
    """Batch statements are estimated expensive enough to trigger JIT, which costs more than it saves."""
    from txguard import db

    def settings(cur: Any) -> list[Any]:
        cur.execute("SELECT current_setting('jit'), current_setting('statement_timeout') <> '0'")
        return list(cur.fetchone())

    assert db.run_in_transaction(settings) == ["off", True]


def test_deciding_inside_copy_is_not_cut_short_by_the_statement_timeout(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows are decided while COPY runs; the timeout bounds the database's work, not the deciding."""
    import time

    import txguard.ingest
    import txguard.storage.transactions
    from txguard import db
    from txguard.detection import detector_cache as rule_cache

    # 300 ms for each statement: room for the other statements of the unit of work on a loaded machine. The
    # allowance per row is raised tenfold so that, however slow this machine is, the deciding below (0.5 s of sleep,
    # past the statement timeout) stays well inside it: without the allowance, COPY would be cancelled.
    monkeypatch.setenv("TXGUARD_STATEMENT_TIMEOUT_MS", "300")
    monkeypatch.setattr(txguard.storage.transactions, "DECIDING_ALLOWANCE_MS_PER_ROW", 5.0)
    db.reset_connection()
    real = txguard.ingest.decisions_in_time_order

    def slow(*args: object, **options: object) -> object:
        for decided in real(*args, **options):  # type: ignore[arg-type]
            time.sleep(0.0005)  # 1,000 rows: 0.5 s of deciding, past the statement timeout
            yield decided

    monkeypatch.setattr(txguard.ingest, "decisions_in_time_order", slow)
    batch = [tx(1, T0 + 1000 * i, "10.00") for i in range(1000)]

    def store_then_read_timeout(cur: Any) -> tuple[int, str]:
        results = txguard.ingest.store_transactions(cur, batch, rule_cache.current(cur, 0))
        cur.execute("SELECT current_setting('statement_timeout')")
        return len(results), cur.fetchone()[0]

    assert db.run_in_transaction(store_then_read_timeout) == (1000, "300ms")
    assert database.query("SELECT count(*) FROM transactions") == [(1000,)]


def test_running_totals_of_very_large_amounts_stay_exact(database: Database) -> None:
    """A sum of squares past 28 significant digits is read back and written again without rounding."""
    store([tx(1, T0, "99999999999.9999")])  # its square has 30 significant digits
    store([tx(1, T0 + 1000, "12345678901.2345")])
    store([tx(1, T0 + 2000, "0.0001")])
    assert database.query(
        "SELECT s.amount_sum_sq = t.sq AND s.amount_sum = t.total FROM account_currency_stats s, "
        "(SELECT sum(amount * amount) AS sq, sum(amount) AS total FROM transactions) t "
        "WHERE s.account_id = 1 AND s.currency = 'EUR'"
    ) == [(True,)]


def test_the_features_reader_returns_each_decision_with_the_features_it_was_taken_on_for_a_time_window(
    database: Database,
) -> None:
    # Given transactions on three days, decided by a rule reading the 7-day count and merchant history
    apply_rules(database, [rule("busy", "count_7d >= 2 AND merchant_used_before = 1")])
    day = 86_400_000
    batch = [tx(301, T0 + i * day, "5.00", "m301", tid=30100 + i) for i in range(3)]
    store(batch)

    # When the window of the last two days is read, a page at a time
    first = db.run_in_transaction(lambda cur: decided_with_features(cur, T0 + day, T0 + 3 * day, None, 1))
    after = (first[0].transaction.ts, first[0].transaction.transaction_id)
    rest = db.run_in_transaction(lambda cur: decided_with_features(cur, T0 + day, T0 + 3 * day, after, 10))

    # Then each row is the transaction, its stored decision, and exactly the features that decision read
    rows = first + rest
    assert [r.transaction.transaction_id for r in rows] == [30101, 30102]
    assert [dict(r.features or {}) for r in rows] == [
        {"count": 1, "count_7d": 1, "merchant_used_before": 1},
        {"count": 2, "count_7d": 2, "merchant_used_before": 1},
    ]
    assert [r.decision.fraud for r in rows] == [False, True]


def test_a_few_rows_are_stored_by_insert_exactly_as_copy_stores_many(database: Database) -> None:
    """Up to INSERT_AT_MOST new rows are written by an INSERT sent with the commit, more by COPY: the stored rows
    are the same, whatever their text holds (tabs, newlines, backslashes and quotes in metadata)."""
    from txguard.storage.transactions import INSERT_AT_MOST

    apply_rules(database, SEED)
    odd = {"note": 'tab\there\nnew line \\ back\'slash "quoted"', "campaign": "é\\n\\t"}

    def batch(account: int, size: int) -> list:
        return [
            tx(account, T0 + 1000 * i, f"{100 // (i + 1)}.25", "m-1")._replace(channel="web", metadata=odd)
            for i in range(size)
        ]

    alone, many = batch(1, 2), batch(2, INSERT_AT_MOST + 1)
    for t in alone:
        store([t])  # one at a time: INSERT
    store(many)  # COPY
    columns = "fraud, score, reasons, features::text, outcome, merchant_id, channel, metadata, amount, ts"
    rows = {
        account: database.query(f"SELECT {columns} FROM transactions WHERE account_id = %s ORDER BY ts", (account,))
        for account in (1, 2)
    }
    assert rows[1] == rows[2][:2]
    assert rows[1][0][7] == odd and rows[1][1][0] is True  # the second one fires below_account_mean


def test_a_transaction_stored_alone_costs_two_round_trips_and_a_replay_three(database: Database) -> None:
    """BEGIN travels with the lock statement, which also asks which ids are stored; the row, the totals and COMMIT
    are one message. A replay takes no lock and reads its stored row in a statement of its own. Counted
    client-side, as the benchmark counts them (bench/roundtrips.py)."""
    from bench import roundtrips
    from txguard import service
    from txguard.storage.transactions import INSERT_AT_MOST

    apply_rules(database, SEED)
    store([tx(1, T0, "100.00")])
    with roundtrips.counting() as log:
        db.reset_connection()  # a connection opened inside counts
        service.store([tx(1, T0 + 1000, "10.00")])  # warm: the detector is read once, then kept
        log.clear()
        service.store([tx(1, T0 + 2000, "10.00", tid=9_001)])
        alone = list(log)
        log.clear()
        service.store([tx(1, T0 + 2000, "10.00", tid=9_001)])
        replay = list(log)
        log.clear()
        service.store([tx(2, T0 + 1000 * i, "10.00") for i in range(INSERT_AT_MOST + 1)])
        batch = list(log)
    db.reset_connection()
    assert len(alone) == 2, alone
    assert alone[0].startswith("BEGIN"), alone
    assert "INSERT INTO account_stats" in alone[0] and "INSERT INTO transactions" in alone[1], alone
    assert alone[-1].endswith("COMMIT"), alone
    # The lock statement (nothing locked: the id is stored), the stored row, then COMMIT of a transaction that
    # wrote nothing.
    assert len(replay) == 3 and replay[1].startswith("SELECT transaction_id"), replay
    assert len(batch) == 3 and batch[1].startswith("SELECT set_config") and "COPY" in batch[1], batch


def test_first_uses_move_back_for_a_late_arrival_and_stay_for_a_later_one(database: Database) -> None:
    day = 86_400_000
    first_uses = """SELECT 'merchant', merchant_id, txguard_ts_to_ms(first_ts) FROM account_merchants
                    UNION ALL SELECT attribute, value, txguard_ts_to_ms(first_ts) FROM account_values ORDER BY 1, 2"""
    store([tx(1, T0 + day, "10.00", "m-1")._replace(country="DE", device_id="d1")])
    # A later use changes nothing (the row is not rewritten either: its version stays the same)
    row_versions = "SELECT xmin::text FROM account_merchants UNION ALL SELECT xmin::text FROM account_values"
    versions = database.query(row_versions)
    store([tx(1, T0 + 2 * day, "10.00", "m-1")._replace(country="DE", device_id="d1")])
    assert database.query(first_uses) == [
        ("country", "DE", T0 + day),
        ("device_id", "d1", T0 + day),
        ("merchant", "m-1", T0 + day),
    ]
    assert database.query(row_versions) == versions
    # and an earlier one, arriving late, moves each first use back to it
    store([tx(1, T0, "10.00", "m-1")._replace(country="DE", device_id="d1")])
    assert database.query(first_uses) == [("country", "DE", T0), ("device_id", "d1", T0), ("merchant", "m-1", T0)]
