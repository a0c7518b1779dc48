"""storage.lists against the real database, as the service's role: memberships (what ingest asks once per batch),
list definitions (what the detector cache reads), versions and the audit of every change, idempotent retries,
the COPY import, and the plan of a membership lookup (index probes, never a scan of the list)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg2
import pytest

from tests.conftest import Database
from txguard.lists import ListDefinition, ListExists, ListItem, ListNotFound
from txguard.storage import lists
from txguard_dev.local.postgres import with_database

pytestmark = pytest.mark.integration
T = TypeVar("T")
HOUR = 3_600_000


def service_connection(database: Database) -> Iterator[Any]:
    connection = psycopg2.connect(database.service_url)
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def conn(database: Database) -> Iterator[Any]:
    yield from service_connection(database)


def run(conn: Any, work: Callable[[Any], T]) -> T:
    with conn, conn.cursor() as cur:
        return work(cur)


def now_ms() -> int:
    return int(time.time() * 1000)


def audit(database: Database, name: str) -> list[tuple[Any, ...]]:
    """(version, operation, value, note, actor) of each item changed, or of each change of the definition."""
    return database.query(
        """SELECT version, operation, v, n, actor
           FROM list_changes LEFT JOIN LATERAL unnest(item_values, notes) WITH ORDINALITY AS i(v, n, k) ON true
           WHERE list_name = %s ORDER BY change_id, k""",
        (name,),
    )


def test_memberships_answer_every_list_asked_with_current_unexpired_items_only(conn: Any, database: Database) -> None:
    run(conn, lambda cur: lists.create(cur, "blocked_cards", "card", "block", None, "tester"))
    run(conn, lambda cur: lists.create(cur, "risky_countries", "country", None, "for rules", "tester"))
    run(
        conn,
        lambda cur: lists.add_items(
            cur,
            "blocked_cards",
            [ListItem("card_1"), ListItem("card_2", now_ms() + HOUR, "until reviewed"), ListItem("card_3")],
            "tester",
        ),
    )
    run(conn, lambda cur: lists.add_items(cur, "risky_countries", [ListItem("KP"), ListItem("IR")], "tester"))
    # An item that expired since it was added stays stored (until removed) and no longer applies.
    database.execute(
        "UPDATE list_items SET expires_at = date_trunc('milliseconds', now()) - interval '1 second' "
        "WHERE list_name = 'blocked_cards' AND value = 'card_3'"
    )

    found = run(
        conn,
        lambda cur: lists.memberships(
            cur,
            {
                "blocked_cards": ["card_1", "card_2", "card_3", "card_9"],
                "risky_countries": {"FR", "IR"},
                "no_such_list": ["x"],
                "empty_ask": [],
            },
        ),
    )

    assert found == {
        "blocked_cards": frozenset({"card_1", "card_2"}),
        "risky_countries": frozenset({"IR"}),
        "no_such_list": frozenset(),
        "empty_ask": frozenset(),
    }
    assert run(conn, lambda cur: lists.memberships(cur, {})) == {}


def test_list_definitions_carry_kind_action_and_a_version_every_change_increments(
    conn: Any, database: Database
) -> None:
    run(conn, lambda cur: lists.create(cur, "trusted_accounts", "account", "allow", None, "alice"))
    run(conn, lambda cur: lists.create(cur, "high_risk_mcc", "merchant_category", None, None, "alice"))
    assert run(conn, lists.list_definitions) == {
        "high_risk_mcc": ListDefinition("high_risk_mcc", "merchant_category", None, 1),
        "trusted_accounts": ListDefinition("trusted_accounts", "account", "allow", 1),
    }

    run(conn, lambda cur: lists.add_items(cur, "high_risk_mcc", [ListItem("7995")], "bob"))
    run(conn, lambda cur: lists.redefine(cur, "high_risk_mcc", "bob", action="block"))
    run(conn, lambda cur: lists.remove_items(cur, "high_risk_mcc", ["7995"], "carol"))

    assert run(conn, lists.list_definitions)["high_risk_mcc"] == ListDefinition(
        "high_risk_mcc", "merchant_category", "block", 4
    )
    assert audit(database, "high_risk_mcc") == [
        (1, "create", None, None, "alice"),
        (2, "add", "7995", None, "bob"),
        (3, "update", None, None, "bob"),
        (4, "remove", "7995", None, "carol"),
    ]
    stored = run(conn, lambda cur: lists.get(cur, "high_risk_mcc"))
    assert (stored.version, stored.items, stored.created_by, stored.updated_by) == (4, 0, "alice", "carol")


def test_retries_change_nothing_and_a_changed_expiry_or_note_is_a_new_audited_version(
    conn: Any, database: Database
) -> None:
    created, first = run(conn, lambda cur: lists.create(cur, "devices", "device", None, None, "alice"))
    again, second = run(conn, lambda cur: lists.create(cur, "devices", "device", None, None, "bob"))
    assert (first, second, created.version, again.version) == (True, False, 1, 1)
    with pytest.raises(ListExists, match="action"):
        run(conn, lambda cur: lists.create(cur, "devices", "device", "block", None, "bob"))

    expiry = now_ms() + HOUR
    batch = [ListItem("dev-1", expiry, "seen in a ring"), ListItem("dev-2")]
    added = run(conn, lambda cur: lists.add_items(cur, "devices", batch, "alice"))
    retried = run(conn, lambda cur: lists.add_items(cur, "devices", batch, "alice"))
    changed = run(
        conn,
        lambda cur: lists.add_items(
            cur, "devices", [ListItem("dev-1", None, "seen in a ring"), ListItem("dev-2")], "bob"
        ),
    )
    removed_twice = [run(conn, lambda cur: lists.remove_items(cur, "devices", ["dev-2", "dev-9"], "bob")) for _ in "ab"]

    assert added == lists.ItemsChanged(2, added=2)
    assert retried == lists.ItemsChanged(2, unchanged=2)
    assert changed == lists.ItemsChanged(3, changed=1, unchanged=1)
    assert removed_twice == [lists.ItemsChanged(4, removed=1, unchanged=1), lists.ItemsChanged(4, unchanged=2)]
    assert audit(database, "devices") == [
        (1, "create", None, None, "alice"),
        (2, "add", "dev-1", "seen in a ring", "alice"),
        (2, "add", "dev-2", None, "alice"),
        (3, "change", "dev-1", "seen in a ring", "bob"),
        (4, "remove", "dev-2", None, "bob"),
    ]
    assert database.query("SELECT value, expires_at, note FROM list_items ORDER BY value") == [
        ("dev-1", None, "seen in a ring")
    ]


def test_writes_to_a_list_that_does_not_exist_are_refused(conn: Any, database: Database) -> None:
    for write in (
        lambda cur: lists.add_items(cur, "nope", [ListItem("x")], "a"),
        lambda cur: lists.remove_items(cur, "nope", ["x"], "a"),
        lambda cur: lists.import_items(cur, "nope", iter([ListItem("x")]), "a"),
        lambda cur: lists.items(cur, "nope", None, None, 10),
        lambda cur: lists.changes(cur, "nope", None, None, 10),
        lambda cur: lists.redefine(cur, "nope", "a", action="block"),
    ):
        with pytest.raises(ListNotFound):
            run(conn, write)
    assert database.query("SELECT count(*) FROM list_changes") == [(0,)]


def test_concurrent_writers_of_one_list_number_versions_without_gaps(database: Database) -> None:
    setup = psycopg2.connect(database.service_url)
    try:
        run(setup, lambda cur: lists.create(cur, "cards", "card", None, None, "setup"))
    finally:
        setup.close()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        connection = psycopg2.connect(database.service_url)
        try:
            for round_ in range(5):
                items = [ListItem(f"c{n}-{round_}-{i}") for i in range(20)]
                run(connection, lambda cur, items=items: lists.add_items(cur, "cards", items, f"writer{n}"))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert database.query("SELECT version, (SELECT count(*) FROM list_items) FROM lists") == [(21, 400)]
    versions = database.query("SELECT DISTINCT version FROM list_changes WHERE list_name = 'cards' ORDER BY 1")
    assert [v for (v,) in versions] == list(range(1, 22))


def test_import_copies_a_large_batch_as_one_version_and_audits_each_item(conn: Any, database: Database) -> None:
    run(conn, lambda cur: lists.create(cur, "ips", "ip", "block", None, "alice"))
    run(conn, lambda cur: lists.add_items(cur, "ips", [ListItem("10.0.0.1", None, "old note")], "alice"))
    expiry = now_ms() + HOUR
    items = [
        ListItem(f"10.0.{i // 250}.{i % 250 + 1}", expiry if i % 2 else None, f"tab\there {i}") for i in range(5000)
    ]

    result = run(conn, lambda cur: lists.import_items(cur, "ips", iter(items), "bob"))

    assert result == lists.ItemsChanged(3, added=4999, changed=1)
    assert database.query("SELECT count(*), count(expires_at) FROM list_items") == [(5000, 2500)]
    assert database.query("SELECT note FROM list_items WHERE value = '10.0.0.1'") == [("tab\there 0",)]
    # The audit holds every item, at most 1,000 to a row.
    assert database.query(
        "SELECT operation, count(*), sum(cardinality(item_values)), max(cardinality(item_values)) "
        "FROM list_changes WHERE version = 3 GROUP BY 1 ORDER BY 1"
    ) == [("add", 5, 4999, 1000), ("change", 1, 1, 1)]
    again = run(conn, lambda cur: lists.import_items(cur, "ips", iter(items), "bob"))
    assert again == lists.ItemsChanged(3, unchanged=5000)

    # A list's first import inserts without looking anything up: the same rows, the same audit.
    run(conn, lambda cur: lists.create(cur, "fresh_ips", "ip", None, None, "alice"))
    first = run(conn, lambda cur: lists.import_items(cur, "fresh_ips", iter(items), "bob"))
    assert first == lists.ItemsChanged(2, added=5000)
    assert database.query(
        """SELECT count(*) FROM list_items a JOIN list_items b USING (value)
           WHERE a.list_name = 'ips' AND b.list_name = 'fresh_ips'
             AND a.expires_at IS NOT DISTINCT FROM b.expires_at AND a.note = b.note"""
    ) == [(5000,)]
    assert sorted(audit(database, "fresh_ips")[1:]) == sorted((2, "add", i.value, i.note, "bob") for i in items)


def test_an_import_that_changes_items_keeps_who_added_them_and_when_and_readers_never_miss_them(
    conn: Any, database: Database
) -> None:
    batch = [ListItem(f"tok_{i}", None, "first") for i in range(300)]
    for name in ("cards", "other_cards"):
        run(conn, lambda cur, n=name: lists.create(cur, n, "card", "block", None, "alice"))
        run(conn, lambda cur, n=name: lists.import_items(cur, n, iter(batch), "alice"))
    before = database.query("SELECT list_name, value, added_at, added_by FROM list_items ORDER BY 1, 2")
    changed = [ListItem(f"tok_{i}", None, "second") for i in range(0, 300, 2)] + [ListItem("tok_new")]
    values = [item.value for item in batch]

    writer = psycopg2.connect(database.service_url)
    try:
        with writer, writer.cursor() as cur:
            result = lists.import_items(cur, "cards", iter(changed), "bob")
            # Not committed yet: a reader sees every item as it was, none missing.
            seen = run(conn, lambda c: lists.memberships(c, {"cards": values}))
            assert seen == {"cards": frozenset(values)}
    finally:
        writer.close()

    assert result == lists.ItemsChanged(3, added=1, changed=150)
    after = database.query(
        "SELECT list_name, value, added_at, added_by FROM list_items WHERE value <> 'tok_new' ORDER BY 1, 2"
    )
    assert after == before
    assert database.query("SELECT list_name, count(*) FROM list_items WHERE note = 'second' GROUP BY 1") == [
        ("cards", 150)
    ]
    assert database.query("SELECT count(*) FROM list_items WHERE list_name = 'other_cards' AND note = 'first'") == [
        (300,)
    ]
    assert sorted(row for row in audit(database, "cards") if row[0] == 3) == sorted(
        [(3, "add", "tok_new", None, "bob")] + [(3, "change", i.value, "second", "bob") for i in changed[:-1]]
    )


def test_a_membership_lookup_probes_the_primary_key_and_never_scans_the_list(conn: Any, database: Database) -> None:
    run(conn, lambda cur: lists.create(cur, "big", "account", None, None, "alice"))
    run(conn, lambda cur: lists.import_items(cur, "big", (ListItem(str(i)) for i in range(1, 50_001)), "alice"))
    database.execute("ANALYZE list_items")
    asked = [str(i) for i in range(1, 2001, 2)]

    def plan(cur: Any) -> Any:
        cur.execute("EXPLAIN (FORMAT JSON) " + lists.MEMBERSHIPS_SQL, lists.membership_arguments({"big": asked}))
        return cur.fetchone()[0]

    text = json.dumps(run(conn, plan))
    assert "Index" in text and "list_items_pkey" in text, text
    assert "Seq Scan" not in text.replace('"Function Scan"', ""), text
    assert run(conn, lambda cur: lists.memberships(cur, {"big": asked}))["big"] == frozenset(asked)


def test_the_same_batch_sent_concurrently_is_stored_once_in_one_version(database: Database) -> None:
    setup = psycopg2.connect(database.service_url)
    try:
        run(setup, lambda cur: lists.create(cur, "devices", "device", "block", None, "setup"))
    finally:
        setup.close()
    batch = [ListItem(f"dev-{i}", None, "ring") for i in range(200)]
    results: list[lists.ItemsChanged] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def sender() -> None:
        connection = psycopg2.connect(database.service_url)
        try:
            start.wait()
            results.append(run(connection, lambda cur: lists.add_items(cur, "devices", batch, "retrying-client")))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sorted(results, key=lambda r: r.added) == [lists.ItemsChanged(2, unchanged=200)] * 3 + [
        lists.ItemsChanged(2, added=200)
    ]
    assert database.query("SELECT version FROM lists") == [(2,)]
    assert database.query("SELECT count(*), count(DISTINCT value) FROM list_items") == [(200, 200)]
    assert sorted(audit(database, "devices")[1:]) == sorted(
        (2, "add", item.value, "ring", "retrying-client") for item in batch
    )


@pytest.fixture
def reader(database: Database) -> Iterator[Any]:
    """A second connection for import_items' lookups, as the service's role like `conn`."""
    yield from service_connection(database)


@pytest.mark.parametrize("lookups", ["in the writing session", "in a reader session"])
def test_an_import_into_a_stored_list_adds_changes_and_leaves_items_in_one_audited_version(
    conn: Any, reader: Any, database: Database, monkeypatch: pytest.MonkeyPatch, lookups: str
) -> None:
    looker = reader if lookups == "in a reader session" else None
    # Given a list of 1,000 cards, every tenth with a note
    run(conn, lambda cur: lists.create(cur, "cards", "card", "block", None, "alice"))
    stored = [ListItem(f"tok_{i:04d}", None, "old" if i % 10 == 0 else None) for i in range(1000)]
    assert run(conn, lambda cur: lists.import_items(cur, "cards", iter(stored), "alice")) == lists.ItemsChanged(
        2, added=1000
    )
    before = dict(database.query("SELECT value, (added_at, added_by)::text FROM list_items"))
    expiry = now_ms() + HOUR
    # When an import in chunks of 7 items gives 60 new cards, 100 with another note or expiry (every tenth: a new
    # note, an expiry, or the note dropped), and 140 as they are
    monkeypatch.setattr(lists, "_COPY_CHUNK", 7)
    changes = {
        i: ListItem(f"tok_{i:04d}", *((None, "new"), (expiry, "old"), (None, None))[i // 10 % 3])
        for i in range(0, 1000, 10)
    }
    same = [stored[i] for i in range(1, 281, 2)]
    new = [ListItem(f"tok_{i:04d}", expiry if i % 2 else None, "fresh" if i % 3 else None) for i in range(1000, 1060)]
    batch = sorted([*changes.values(), *same, *new], key=lambda item: hash(item.value))  # any order

    def work(cur: Any) -> tuple[lists.ItemsChanged, Any]:
        result = lists.import_items(cur, "cards", iter(batch), "bob", reader=looker)
        # Every change was an update in place: a new version beside the old one, no new index entry.
        cur.execute(
            "SELECT n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_xact_user_tables WHERE relname = 'list_items'"
        )
        return result, cur.fetchone()

    result, writes = run(conn, work)

    # Then one version holds them all, with the counts of each
    assert result == lists.ItemsChanged(3, added=60, changed=100, unchanged=140)
    assert writes == (100, 100, 0)
    assert run(conn, lambda cur: lists.definition(cur, "cards")) == ListDefinition("cards", "card", "block", 3)
    # the items are as given, the changed ones still added when and by whom they first were
    rows = database.query("SELECT value, txguard_ts_to_ms(expires_at), note, added_by FROM list_items ORDER BY 1")
    expected = {item.value: (*item, "alice") for item in stored}
    expected |= {item.value: (*item, "alice") for item in changes.values()}
    expected |= {item.value: (*item, "bob") for item in new}
    assert rows == sorted(expected.values())
    after = dict(database.query("SELECT value, (added_at, added_by)::text FROM list_items"))
    assert {value: after[value] for value in before} == before
    # and the audit names each added and changed item once, with its expiry and note after the change
    audited = database.query(
        """SELECT operation, v, txguard_ts_to_ms(e), n, actor
           FROM list_changes, unnest(item_values, expiries, notes) AS i(v, e, n) WHERE version = 3"""
    )
    assert sorted(audited) == sorted(
        [("add", *item, "bob") for item in new] + [("change", *item, "bob") for item in changes.values()]
    )
    with pytest.raises(ListNotFound):
        run(conn, lambda cur: lists.definition(cur, "no_such_list"))
    # and the reader's session is left as it was: no transaction open, no staging table
    assert reader.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    assert (
        run(reader, lambda cur: cur.execute("SELECT to_regclass('pg_temp.list_items_asked')") or cur.fetchone())[0]
        is None
    )


def test_an_import_whose_reader_fails_goes_on_in_one_session_and_stores_what_a_serial_import_stores(
    conn: Any, reader: Any, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a list of 50 cards
    run(conn, lambda cur: lists.create(cur, "cards", "card", "block", None, "alice"))
    run(conn, lambda cur: lists.import_items(cur, "cards", (ListItem(f"tok_{i}") for i in range(50)), "alice"))
    batch = [ListItem(f"tok_{i}", None, "changed") for i in range(0, 100, 2)]
    # When the reader's session ends during the import's second chunk, after the first was written
    monkeypatch.setattr(lists, "_COPY_CHUNK", 20)
    original = lists._Lookups.classified
    calls: list[int] = []

    def classified_then_gone(self: Any, lines: list[str]) -> str:
        calls.append(len(lines))
        if len(calls) == 2:
            with reader.cursor() as cur:
                cur.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return original(self, lines)

    monkeypatch.setattr(lists._Lookups, "classified", classified_then_gone)
    lost: list[Exception] = []

    def importing(cur: Any) -> Any:
        return lists.import_items(cur, "cards", iter(batch), "bob", reader=reader, on_reader_lost=lost.append)

    result = run(conn, importing)

    # Then the writing session looked the remaining chunks up itself, and the caller was told once
    assert len(calls) >= 2 and len(lost) == 1 and isinstance(lost[0], psycopg2.OperationalError)
    assert (result.added, result.changed, result.unchanged) == (25, 25, 0)
    # and the list, its version and its audit are what an import without a reader stores
    assert database.query("SELECT count(*), count(*) FILTER (WHERE note = 'changed') FROM list_items") == [(75, 50)]
    assert run(conn, lambda cur: lists.definition(cur, "cards")).version == 3
    audited = """SELECT operation, sum(cardinality(item_values)), count(*) FILTER (WHERE 'changed' <> ALL (notes))
                 FROM list_changes WHERE list_name = 'cards' AND version = 3 GROUP BY 1 ORDER BY 1"""
    assert database.query(audited) == [("add", 25, 0), ("change", 25, 0)]


def test_an_import_refuses_a_reader_of_another_database(conn: Any, database: Database) -> None:
    run(conn, lambda cur: lists.create(cur, "cards", "card", "block", None, "alice"))
    run(conn, lambda cur: lists.import_items(cur, "cards", iter([ListItem("tok_1")]), "alice"))
    elsewhere = psycopg2.connect(with_database(database.admin_url, "postgres"))
    try:
        with pytest.raises(ValueError, match="not to"):
            run(conn, lambda cur: lists.import_items(cur, "cards", iter([ListItem("tok_2")]), "bob", reader=elsewhere))
    finally:
        elsewhere.close()
    assert database.query("SELECT value FROM list_items ORDER BY 1") == [("tok_1",)]


def test_an_import_takes_a_reader_in_autocommit_mode_and_puts_the_mode_back_but_refuses_a_busy_one(
    conn: Any, reader: Any, database: Database
) -> None:
    run(conn, lambda cur: lists.create(cur, "cards", "card", "block", None, "alice"))
    run(conn, lambda cur: lists.import_items(cur, "cards", iter([ListItem("tok_1")]), "alice"))
    reader.autocommit = True

    result = run(
        conn,
        lambda cur: lists.import_items(
            cur, "cards", iter([ListItem("tok_1", None, "n"), ListItem("tok_2")]), "b", reader=reader
        ),
    )

    assert result == lists.ItemsChanged(3, added=1, changed=1)
    assert reader.autocommit is True
    reader.autocommit = False
    with reader.cursor() as cur:
        cur.execute("SELECT 1")  # a transaction open on the reader: its work is not the import's to end
    with pytest.raises(ValueError, match="idle"):
        run(conn, lambda cur: lists.import_items(cur, "cards", iter([ListItem("tok_3")]), "b", reader=reader))
    assert reader.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_INTRANS
    assert database.query("SELECT value, note FROM list_items ORDER BY 1") == [("tok_1", "n"), ("tok_2", None)]
