"""Migrations: applied once each, safe to run again and from several processes at once; and the roles they
leave: each database's privileges belong to that database's own roles alone."""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import psycopg2
import psycopg2.errors
import psycopg2.extras
import pytest

from tests.conftest import EmbeddedPostgres, admin_query, scratch_database
from txguard.migrate import (
    NOT_FOR_THE_SERVICE,
    SERVICE_GRANTS,
    SHARED_ROLE,
    MigrationError,
    available_migrations,
    drop_service_roles,
    migrate,
    role_name,
    service_group_role,
    service_login_role,
)
from txguard_dev.cli import main
from txguard_dev.local.postgres import Server, create_database, database_in_url, with_database

pytestmark = pytest.mark.integration

TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


def _login(url: str) -> str:
    database = database_in_url(url)
    assert database is not None
    return service_login_role(database)


def _as(url: str, user: str) -> str:
    database = database_in_url(url)
    assert database is not None
    return with_database(url, database, user)


@contextmanager
def _migrated(server: Server, prefix: str = "txguard_iso") -> Iterator[str]:
    with scratch_database(server, prefix) as url:
        migrate(url)
        yield url


def test_concurrent_migrate_runs_apply_each_migration_exactly_once(pg_server: Server) -> None:
    with scratch_database(pg_server, "txguard_migrate") as url:
        applied: list[list[int]] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                applied.append([m.version for m in migrate(url, _login(url))])
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert errors == []
        every_version = [m.version for m in available_migrations()]
        assert sorted(v for versions in applied for v in versions) == every_version
        assert migrate(url, _login(url)) == []  # and once more: nothing to do

        conn = psycopg2.connect(url)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT version FROM schema_migrations ORDER BY version")
                assert [row[0] for row in cur.fetchall()] == every_version
                cur.execute("SELECT count(*) FROM rule_sets")
                assert cur.fetchone() == (1,)  # the default rule set, seeded once
                cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (_login(url),))
                assert cur.fetchone() == (False,)
        finally:
            conn.close()


def test_two_databases_on_one_server_each_login_reaches_only_its_own(pg_server: Server) -> None:
    with _migrated(pg_server) as first, _migrated(pg_server) as second:
        for own, other in ((first, second), (second, first)):
            login = _login(own)
            assert admin_query(_as(own, login), "SELECT count(*) FROM rule_sets") == [(1,)]

            with pytest.raises(psycopg2.OperationalError, match="permission denied for database"):
                psycopg2.connect(_as(other, login)).close()
            # Nor would it read anything there if it were let in.
            (granted,) = admin_query(
                other,
                "SELECT array_agg(c.relname) FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace "
                "AND c.relkind = 'r' AND has_table_privilege(%s, c.oid, 'SELECT, INSERT, UPDATE')",
                (login,),
            )[0]
            assert granted is None


def test_a_login_of_another_database_is_refused_and_left_as_it_was(pg_server: Server) -> None:
    with _migrated(pg_server) as first, scratch_database(pg_server, "txguard_iso") as second:
        login = _login(first)
        migrate(first, login, "first-stack-password")
        password_before = admin_query(first, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (login,))

        with pytest.raises(MigrationError) as refused:
            migrate(second, login, "second-stack-password")

        assert login in str(refused.value) and repr(database_in_url(first)) in str(refused.value)
        assert admin_query(first, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (login,)) == password_before
        assert admin_query(second, "SELECT to_regclass('schema_migrations')") == [(None,)]  # nothing applied
        group = service_group_role(database_in_url(second) or "")
        assert admin_query(second, "SELECT count(*) FROM pg_roles WHERE rolname = %s", (group,)) == [(0,)]
        assert admin_query(_as(first, login), "SELECT count(*) FROM rule_sets") == [(1,)]


def test_two_databases_racing_for_one_new_login_give_it_to_exactly_one(pg_server: Server) -> None:
    login = f"txguard_raced_{uuid.uuid4().hex[:8]}"
    with scratch_database(pg_server, "txguard_iso") as first, scratch_database(pg_server, "txguard_iso") as second:
        outcomes: dict[str, BaseException | None] = {}
        start = threading.Barrier(2)

        def run(url: str) -> None:
            start.wait()
            try:
                migrate(url, login, "raced-password")
                outcomes[url] = None
            except BaseException as exc:  # reported below
                outcomes[url] = exc

        threads = [threading.Thread(target=run, args=(url,)) for url in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        winners = [url for url, error in outcomes.items() if error is None]
        (loser_error,) = [error for error in outcomes.values() if error is not None]
        assert len(winners) == 1 and isinstance(loser_error, MigrationError), outcomes
        (winner,) = winners
        assert repr(database_in_url(winner)) in str(loser_error)
        assert admin_query(_as(winner, login), "SELECT count(*) FROM rule_sets") == [(1,)]
    assert admin_query(pg_server.admin_url, "SELECT count(*) FROM pg_roles WHERE rolname = %s", (login,)) == [(0,)]


def test_the_command_line_reports_a_refused_login_in_one_line(
    pg_server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    with _migrated(pg_server) as first, scratch_database(pg_server, "txguard_iso") as second:
        code = main(["db", "migrate", "--database-url", second, "--role", _login(first)])

        assert code == 1
        err = capsys.readouterr().err
        assert err.startswith(f"txguard db migrate: role '{_login(first)}' is the login role of database")
        assert "Traceback" not in err


def test_a_role_that_is_not_txguards_is_refused(pg_server: Server) -> None:
    with scratch_database(pg_server, "txguard_iso") as url:
        stranger = f"someone_{uuid.uuid4().hex[:8]}"
        admin_query(url, f'CREATE ROLE "{stranger}" LOGIN')
        try:
            with pytest.raises(MigrationError, match=f"role '{stranger}' exists and is not a txguard role"):
                migrate(url, stranger, "taken-over")
            (admin,) = admin_query(url, "SELECT current_user")[0]
            with pytest.raises(MigrationError, match="superuser or the administrator"):
                migrate(url, admin, "taken-over")
            assert admin_query(url, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (stranger,)) == [(None,)]
        finally:
            admin_query(url, f'DROP ROLE "{stranger}"')


def test_the_group_role_name_of_a_database_held_by_another_role_is_refused(pg_server: Server) -> None:
    with scratch_database(pg_server, "txguard_iso") as url:
        group = service_group_role(database_in_url(url) or "")
        admin_query(url, f'CREATE ROLE "{group}"')
        try:
            with pytest.raises(MigrationError, match=f"role '{group}' exists and is not a txguard role"):
                migrate(url)
        finally:
            admin_query(url, f'DROP ROLE "{group}"')


def test_a_login_made_when_every_database_shared_one_group_role_is_adopted_and_leaves_it(
    pg_server: Server,
) -> None:
    with scratch_database(pg_server, "txguard_iso") as url:
        login = _login(url)
        admin_query(url, f'CREATE ROLE "{login}" LOGIN')
        admin_query(url, f'GRANT "{SHARED_ROLE}" TO "{login}"')  # txguard_service exists: roles are cluster-wide

        migrate(url, login)

        assert admin_query(
            url,
            "SELECT pg_has_role(%s, %s, 'MEMBER'), pg_has_role(%s, %s, 'MEMBER')",
            (login, SHARED_ROLE, login, service_group_role(database_in_url(url) or "")),
        ) == [(False, True)]
        # The shared role keeps nothing in this database.
        assert admin_query(
            url,
            "SELECT count(*) FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace "
            "AND has_table_privilege(%s, c.oid, 'SELECT, INSERT, UPDATE, DELETE')",
            (SHARED_ROLE,),
        ) == [(0,)]


def test_what_a_migration_grants_to_the_shared_role_reaches_the_databases_own_group(pg_server: Server) -> None:
    with _migrated(pg_server) as url:
        # What a migration written for the shared role does.
        admin_query(url, "CREATE TABLE outbox_example (id bigint PRIMARY KEY)")
        admin_query(url, f'GRANT SELECT, INSERT, DELETE ON outbox_example TO "{SHARED_ROLE}"')

        migrate(url)

        login = _login(url)
        admin_query(_as(url, login), "INSERT INTO outbox_example VALUES (1)")
        assert admin_query(_as(url, login), "DELETE FROM outbox_example RETURNING id") == [(1,)]
        assert admin_query(
            url, "SELECT has_table_privilege(%s, 'outbox_example', 'SELECT, INSERT, DELETE')", (SHARED_ROLE,)
        ) == [(False,)]


def test_every_table_is_listed_and_the_login_has_exactly_the_listed_privileges(pg_server: Server) -> None:
    with _migrated(pg_server) as url:
        login = _login(url)
        tables = {t for (t,) in admin_query(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}

        assert tables <= set(SERVICE_GRANTS) | NOT_FOR_THE_SERVICE, "list every new table in SERVICE_GRANTS"
        for table in tables:
            held = {
                p
                for p in TABLE_PRIVILEGES
                if admin_query(url, "SELECT has_table_privilege(%s, %s, %s)", (login, f"public.{table}", p))[0][0]
            }
            assert held == set(SERVICE_GRANTS.get(table, ())), table


def test_the_login_cannot_create_in_schema_public_even_where_public_may(pg_server: Server) -> None:
    with scratch_database(pg_server, "txguard_iso") as url:
        # PostgreSQL 14 and older grant this by default.
        admin_query(url, "GRANT CREATE ON SCHEMA public TO PUBLIC")

        migrate(url)

        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            admin_query(_as(url, _login(url)), "CREATE TABLE public.planted (id int)")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            admin_query(_as(url, _login(url)), "CREATE FUNCTION public.planted() RETURNS int LANGUAGE sql RETURN 1")


def test_a_login_outlives_its_dropped_database_until_another_takes_it_and_is_dropped_with_that_one(
    pg_server: Server,
) -> None:
    login = f"txguard_moving_{uuid.uuid4().hex[:8]}"
    first = create_database(pg_server, prefix="txguard_iso")
    migrate(pg_server.database_url(first), login)
    # Dropped behind txguard's back: its roles stay (they are cluster-wide), marked for a database gone.
    _drop_database_only(pg_server, first)

    with scratch_database(pg_server, "txguard_iso") as url:
        migrate(url, login)
        assert admin_query(_as(url, login), "SELECT count(*) FROM rule_sets") == [(1,)]
        second = database_in_url(url) or ""

    assert (
        admin_query(
            pg_server.admin_url,
            "SELECT rolname FROM pg_roles WHERE rolname IN (%s, %s)",
            (login, service_group_role(second)),
        )
        == []
    )
    assert drop_service_roles(pg_server.admin_url, first) == [service_group_role(first)]


def _drop_database_only(server: Server, name: str) -> None:
    conn = psycopg2.connect(server.admin_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        conn.close()


def test_role_names_fit_postgresql_and_stay_distinct() -> None:
    long_a, long_b = "d" * 63, "d" * 62 + "e"

    assert service_login_role("txguard") == "txguard_app"
    assert service_group_role("txguard") == "txguard_access"
    for name in (role_name(long_a, "_app"), role_name(long_b, "_app"), role_name("é" * 31 + "x", "_access")):
        assert len(name.encode()) <= 63
    assert role_name(long_a, "_app") != role_name(long_b, "_app")


# --- the service password: never in clear ------------------------------------------------------------------


def _scram_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """RFC 5802 / 7677: StoredKey and ServerKey, from the standard library alone."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return hashlib.sha256(client_key).digest(), server_key


@pytest.fixture
def scram_server(own_postgres: EmbeddedPostgres) -> Iterator[tuple[EmbeddedPostgres, Path]]:
    """The test's own server, logging every statement, and its log file."""
    url = own_postgres.url
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("ALTER SYSTEM SET log_statement = 'all'")
        cur.execute("SELECT pg_reload_conf()")
    conn.close()
    yield own_postgres, Path(own_postgres.instance.log)


def test_the_password_is_sent_as_a_scram_verifier_and_logs_in_over_scram(
    scram_server: tuple[EmbeddedPostgres, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, log = scram_server
    password = f"Clear-{uuid.uuid4().hex}"
    admin_url = with_database(server.url, "postgres")
    url = with_database(server.url, create_database(Server(admin_url, embedded=True), prefix="txguard_scram"))
    login = _login(url)

    sent: list[str] = []
    connect = psycopg2.connect

    def capturing(*args: object, **kwargs: object) -> psycopg2.extensions.connection:
        conn = connect(*args, connection_factory=psycopg2.extras.LoggingConnection, **kwargs)  # type: ignore[misc]
        conn.initialize(_Sink(sent))
        return conn

    monkeypatch.setattr(psycopg2, "connect", capturing)
    migrate(url, login, password)
    monkeypatch.undo()

    assert any("ALTER ROLE" in statement for statement in sent)
    assert not [statement for statement in sent if password in statement]
    assert password not in log.read_text(errors="replace")
    assert any("SCRAM-SHA-256$" in line for line in log.read_text(errors="replace").splitlines())

    (stored,) = admin_query(url, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (login,))[0]
    method, iterations_salt, keys = stored.split("$")
    iterations, salt = iterations_salt.split(":")
    stored_key, server_key = keys.split(":")
    assert (method, int(iterations)) == ("SCRAM-SHA-256", 4096)
    expected = _scram_keys(password, base64.b64decode(salt), 4096)
    assert (base64.b64decode(stored_key), base64.b64decode(server_key)) == expected

    # Only SCRAM for this login from now on: the password must do, and the wrong one must not.
    hba = Path(server.directory) / "pg_hba.conf"
    hba.write_text(f"local all {login} scram-sha-256\n" + hba.read_text())
    admin_query(admin_url, "SELECT pg_reload_conf()")
    service = psycopg2.connect(_as(url, login), password=password)
    try:
        with service.cursor() as cur:
            cur.execute("SELECT system_user, (SELECT count(*) FROM rule_sets)")
            assert cur.fetchone() == (f"scram-sha-256:{login}", 1)
    finally:
        service.close()
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(_as(url, login), password="not-" + password).close()


class _Sink:
    """A file for LoggingConnection: keeps each statement as sent."""

    def __init__(self, into: list[str]) -> None:
        self._into = into

    def write(self, text: str | bytes) -> None:
        self._into.append(text.decode() if isinstance(text, bytes) else text)


def test_the_generators_fraud_labels_are_kept_as_labels_when_0009_folds_them(
    pg_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    import txguard.migrate

    every = available_migrations()
    with scratch_database(pg_server, "txguard_fold") as url:
        monkeypatch.setattr(txguard.migrate, "available_migrations", lambda: [m for m in every if m.version <= 8])
        migrate(url)
        admin_query(
            url,
            """INSERT INTO transactions (transaction_id, account_id, ts, amount, currency, merchant_id, fraud, score,
                                         reasons, rule_set_version)
               VALUES (8388609, 1, '2026-01-01T10:00:00Z', 5, 'EUR', 'm-1', false, 0, '[]', 1)""",
        )
        admin_query(
            url,
            """INSERT INTO fraud_labels (transaction_id, pattern, run_id, labelled_at)
               VALUES (8388609, 'card_testing', 1, '2026-01-02T00:00:00.123456Z'),
                      (8388610, 'genuine', 1, '2026-01-02T00:00:01Z')""",
        )
        monkeypatch.setattr(txguard.migrate, "available_migrations", lambda: every)
        migrate(url)

        assert admin_query(
            url,
            """SELECT transaction_id, fraud, source, reason, labelled_at = '2026-01-02T00:00:00.123Z'::timestamptz
               FROM labels ORDER BY label_id""",
        ) == [(8388609, True, "generator", "card_testing", True), (8388610, False, "generator", None, False)]
        assert admin_query(url, "SELECT to_regclass('fraud_labels')") == [(None,)]
        daily = admin_query(url, "SELECT merchant_id, tx_day, known_day, frauds FROM merchant_label_daily")
        assert daily == admin_query(url, "SELECT * FROM merchant_label_steps") == [("m-1", 20454, 20455, 1)]


def test_0012_keeps_amount_totals_per_currency_rebuilt_from_the_stored_transactions(
    pg_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    import txguard.migrate

    every = available_migrations()
    with scratch_database(pg_server, "txguard_currencies") as url:
        # Given a database at 0011 whose account 1 paid in EUR and JPY (its totals then added the two up)
        monkeypatch.setattr(txguard.migrate, "available_migrations", lambda: [m for m in every if m.version <= 11])
        migrate(url)
        admin_query(
            url,
            """INSERT INTO transactions (transaction_id, account_id, ts, amount, currency, merchant_id, fraud, score,
                                         reasons, rule_set_version)
               VALUES (1, 1, '2026-01-01T10:00:00Z', 10, 'EUR', 'm-1', false, 0, '[]', 1),
                      (2, 1, '2026-01-01T11:00:00Z', 30, 'EUR', 'm-1', false, 0, '[]', 1),
                      (3, 1, '2026-01-01T12:00:00Z', 5000, 'JPY', 'm-1', false, 0, '[]', 1),
                      (4, 1, '2026-01-02T09:00:00Z', 7000, 'JPY', 'm-1', false, 0, '[]', 1),
                      (5, 2, '2026-01-01T10:00:00Z', 1.125, 'BHD', NULL, false, 0, '[]', 1)""",
        )
        admin_query(
            url,
            """INSERT INTO account_stats
                   (account_id, tx_count, amount_sum, amount_sum_sq, amount_max, first_ts, last_ts)
               VALUES (1, 4, 12040, 74001000, 7000, '2026-01-01T10:00:00Z', '2026-01-02T09:00:00Z'),
                      (2, 1, 1.125, 1.265625, 1.125, '2026-01-01T10:00:00Z', '2026-01-01T10:00:00Z')""",
        )
        # When 0012 is applied
        monkeypatch.setattr(txguard.migrate, "available_migrations", lambda: every)
        migrate(url)

        # Then the amounts are totalled per currency, the counts and times stay per account
        expected_totals = [
            (1, "EUR", 2, Decimal("40"), Decimal("1000"), Decimal("30.0000")),
            (1, "JPY", 2, Decimal("12000"), Decimal("74000000"), Decimal("7000.0000")),
            (2, "BHD", 1, Decimal("1.125"), Decimal("1.265625"), Decimal("1.1250")),
        ]
        totals_query = """SELECT account_id, currency, tx_count, amount_sum, amount_sum_sq, amount_max
                          FROM account_currency_stats ORDER BY 1, 2"""
        assert admin_query(url, totals_query) == expected_totals
        assert admin_query(
            url,
            """SELECT column_name FROM information_schema.columns
               WHERE table_name = 'account_stats' ORDER BY ordinal_position""",
        ) == [("account_id",), ("tx_count",), ("first_ts",), ("last_ts",), ("written_by",)]  # 0024's last
        daily_query = "SELECT account_id, day, currency, tx_count, amount_sum FROM account_daily ORDER BY 1, 2, 3"
        expected_daily = [
            (1, 20454, "EUR", 2, Decimal("40")),
            (1, 20454, "JPY", 1, Decimal("5000")),
            (1, 20455, "JPY", 1, Decimal("7000")),
            (2, 20454, "BHD", 1, Decimal("1.125")),
        ]
        assert admin_query(url, daily_query) == expected_daily
        # and the SQL reference gives the second JPY payment the JPY history alone
        features = admin_query(url, "SELECT features FROM transaction_features(1) WHERE transaction_id = 4")[0][0]
        assert (features["count"], features["mean_amount"], features["count_24h"], features["sum_24h"]) == (
            3,
            5000,
            3,
            5000,
        )
        # and running the file again changes nothing
        again = next(m for m in every if m.version == 12)
        admin_query(url, again.sql)
        assert admin_query(url, totals_query) == expected_totals
        assert admin_query(url, daily_query) == expected_daily


# 0001's definitions of the millisecond <-> timestamptz functions, which 0022 replaces.
_TIME_FUNCTIONS_0001 = """
    CREATE FUNCTION pg_temp.ms_to_ts_0001(ms bigint) RETURNS timestamptz
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
        RETURN timestamptz 'epoch' + ms * interval '1 millisecond';
    CREATE FUNCTION pg_temp.ts_to_ms_0001(ts timestamptz) RETURNS bigint
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
        RETURN (extract(epoch FROM ts) * 1000)::bigint;
"""


def test_0022_time_functions_give_0001s_values_in_every_time_zone_and_are_inlined(pg_server: Server) -> None:
    with _migrated(pg_server, "txguard_time") as url:
        conn = psycopg2.connect(url)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(_TIME_FUNCTIONS_0001)
                for zone in ("UTC", "Europe/Berlin", "America/St_Johns", "Pacific/Chatham", "Asia/Kathmandu"):
                    cur.execute("SET LOCAL TimeZone = %s", (zone,))
                    # Milliseconds around the epoch, across DST changes and far out; timestamps with microseconds
                    # (rounded to the millisecond alike) and both ends of the range 0001 can convert.
                    cur.execute(
                        """WITH ms(v) AS (
                               SELECT unnest(ARRAY[0, 1, -1, 999, -999, 1000, 86399999, 86400000, -86400001,
                                                   1700000000000, 1711846799999, 1711846800000, 1729990800001,
                                                   253402300799999, -62135596800000, 9223372036854])
                               UNION ALL SELECT (random() * 4e12 - 1e12)::bigint FROM generate_series(1, 20000)),
                           ts(v) AS (
                               SELECT pg_temp.ms_to_ts_0001(v) + (random() * 2000 - 1000)::int * interval '1 us'
                               FROM ms)
                           SELECT (SELECT count(*) FROM ms),
                                  (SELECT count(*) FROM ms
                                   WHERE txguard_ms_to_ts(v) IS DISTINCT FROM pg_temp.ms_to_ts_0001(v)
                                      OR txguard_ms_to_ts(v)::text IS DISTINCT FROM pg_temp.ms_to_ts_0001(v)::text),
                                  (SELECT count(*) FROM ts
                                   WHERE txguard_ts_to_ms(v) IS DISTINCT FROM pg_temp.ts_to_ms_0001(v)),
                                  (SELECT count(*) FROM ms
                                   WHERE txguard_day(txguard_ms_to_ts(v))
                                         IS DISTINCT FROM div(pg_temp.ts_to_ms_0001(pg_temp.ms_to_ts_0001(v)),
                                                              86400000)::integer),
                                  txguard_ms_to_ts(NULL) IS NULL AND txguard_ts_to_ms(NULL) IS NULL"""
                    )
                    assert cur.fetchone() == (20016, 0, 0, 0, True), zone
                # Inlined: the plan computes the expressions itself, no call of a SQL function per row.
                cur.execute(
                    """EXPLAIN (VERBOSE, COSTS OFF)
                       SELECT txguard_ts_to_ms(txguard_ms_to_ts(g)), txguard_day(txguard_day_start(g::integer))
                       FROM generate_series(1, 3) g"""
                )
                plan = " ".join(row[0] for row in cur.fetchall())
                assert "txguard_" not in plan and "AT TIME ZONE" in plan
        finally:
            conn.close()
        # Running the file again changes nothing.
        again = next(m for m in available_migrations() if m.version == 22)
        admin_query(url, again.sql)
        assert admin_query(url, "SELECT txguard_ts_to_ms(txguard_ms_to_ts(1700000000123))") == [(1700000000123,)]
