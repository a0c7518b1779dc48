"""Shared fixtures: a real PostgreSQL database of this run's own, migrated once and emptied per test."""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pgserver
import psycopg2
import pytest

from txguard import db
from txguard.detection import detector_cache
from txguard.migrate import migrate, service_login_role
from txguard_dev.local.postgres import Server, create_database, drop_database, find_or_start_server
from txguard_dev.local.runner import Template

ROOT = Path(__file__).resolve().parent.parent

# What every decision in the API says (POST /store_data, GET /is_fraud): the rules' verdict and the detector
# version and models behind it.
DECISION_FIELDS = frozenset(
    {
        "fraud",
        "outcome",
        "score",
        "reasons",
        "rule_set_version",
        "detector_version",
        "model_version",
        "model_score",
        "model_threshold",
        "model_fallback",
        "shadow_scores",
    }
)
EVENTS_DIR = ROOT / "events"


def load_event(name: str) -> dict[str, Any]:
    """A sample event from events/, the same files `sam local invoke -e` and `txguard invoke` take."""
    return json.loads((EVENTS_DIR / name).read_text())


@functools.cache
def project_template(**parameter_overrides: str) -> Template:
    """The project's template.yaml as `sam local` reads it, read once per run for each set of overrides: SAM CLI's
    providers take about half a second to read it, and the tests that invoke functions would pay that each."""
    return Template(ROOT / "template.yaml", parameter_overrides)


def admin_query(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read or change a database as its administrator, outside the code under test."""
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


@dataclass(frozen=True)
class Database:
    server: Server
    name: str
    admin_url: str
    service_url: str

    def query(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read with the administrative connection, outside the code under test."""
        return admin_query(self.admin_url, statement, params)

    def execute(self, statement: str, params: tuple[Any, ...] = ()) -> None:
        self.query(statement, params)


def _create_database(server: Server, prefix: str) -> str:
    """A new empty database of this run's own, whose commits do not wait for their WAL to reach the disk: what
    every other session sees is the same, and only a crash of the shared server (which no test causes; tests that
    stop a server start their own) could lose its last commits. tests/integration/test_label_steps.py took 20 s
    instead of 28 s, measured under load."""
    name = create_database(server, prefix=prefix)
    admin_query(server.database_url(name), f"ALTER DATABASE {name} SET synchronous_commit = off")
    return name


@contextmanager
def scratch_database(server: Server, prefix: str) -> Iterator[str]:
    """The administrative URL of an empty database of this run's own, dropped afterwards."""
    name = _create_database(server, prefix=prefix)
    try:
        yield server.database_url(name)
    finally:
        drop_database(server, name)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """Under pytest-xdist (make test), refuse tests that share a node id: it would run only one of them, silently.
    schemathesis names every operation's fuzz test alike (pytest 9 leaves no way to rename a collected test), so
    make test runs that one in a process of its own."""
    counts = Counter(ids)
    repeated = sorted(nodeid for nodeid, count in counts.items() if count > 1)
    if repeated:
        raise pytest.UsageError(
            "pytest-xdist runs each node id once, and these name several tests: "
            + ", ".join(f"{nodeid} ({counts[nodeid]})" for nodeid in repeated)
            + "; run them in a process of their own (see FUZZ_TEST in the Makefile)"
        )


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    with find_or_start_server() as server:
        yield server


@pytest.fixture(scope="session")
def migrated_database(pg_server: Server) -> Iterator[Database]:
    name = _create_database(pg_server, prefix="txguard_test")
    admin_url = pg_server.database_url(name)
    try:
        migrate(admin_url, service_login_role(name))
        yield Database(pg_server, name, admin_url, pg_server.database_url(name, user=service_login_role(name)))
    finally:
        db.reset_connection()
        drop_database(pg_server, name)


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server of the test's own, which it may stop and start again on the same files."""

    directory: Path
    instance: Any

    @property
    def url(self) -> str:
        return str(self.instance.get_uri())

    def stop(self) -> None:
        self.instance.cleanup()

    def start(self) -> None:
        self.instance = pgserver.get_server(self.directory, cleanup_mode="stop")


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server (embedded) of this test's own, which it may stop and start: never the shared one."""
    directory = Path(tempfile.mkdtemp(prefix="txg-pg-"))  # short: the Unix socket path has a length limit
    server = EmbeddedPostgres(directory, pgserver.get_server(directory, cleanup_mode="stop"))
    try:
        yield server
    finally:
        pgserver.get_server(directory, cleanup_mode="stop").cleanup()
        shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class Pooler:
    """PgBouncer in transaction mode in front of the test server, as RDS Proxy sits in front of Aurora."""

    host: str
    port: int

    def url(self, database: str, user: str | None = None) -> str:
        """A URL through the pooler; by default as the database's own service login."""
        return f"postgresql://{user or service_login_role(database)}@{self.host}:{self.port}/{database}"


def _pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None)
    if found is None:
        pytest.fail("pgbouncer is not installed: `make pgbouncer` installs Debian's package")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def pooler(pg_server: Server, migrated_database: Database) -> Iterator[Pooler]:
    """PgBouncer (pool_mode=transaction) started on a free port with an ini of its own, stopped at the end.

    It refuses startup parameters it does not know ("unsupported startup parameter: options") the way
    RDS Proxy refuses command-line options, and hands each transaction to whichever server connection is
    free, so nothing set outside a transaction may be relied on.
    """
    target = psycopg2.extensions.parse_dsn(pg_server.admin_url)
    directory = Path(tempfile.mkdtemp(prefix="txg-pgb-"))
    users = {service_login_role(migrated_database.name): "", target.get("user", "postgres"): target.get("password", "")}
    (directory / "users.txt").write_text("".join(f'"{u}" "{p}"\n' for u, p in users.items()))
    port = _free_port()
    (directory / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={target.get("host", "127.0.0.1")} port={target.get("port", "5432")}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {directory / "users.txt"}
pool_mode = transaction
log_connections = 0
log_disconnections = 0
default_pool_size = 2
max_client_conn = 200
ignore_startup_parameters = extra_float_digits
"""
    )
    command = [_pgbouncer_binary(), str(directory / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        nobody = pwd.getpwnam("nobody")
        os.chown(directory, nobody.pw_uid, nobody.pw_gid)
        command[1:1] = ["-u", "nobody"]
    log_path = directory / "pgbouncer.log"  # a file, not a pipe: an unread pipe would block it once full
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"pgbouncer did not start: {log_path.read_text()}")
                time.sleep(0.05)
        yield Pooler("127.0.0.1", port)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(directory, ignore_errors=True)


_TABLES_TO_EMPTY = (
    "transactions",
    "account_stats",
    "account_currency_stats",
    "account_daily",
    "account_merchants",
    "account_values",
    "merchant_daily",
    "rule_sets",
    "alert_outbox",
    "labels",
    "merchant_label_daily",
    "model_versions",
    "detector_versions",
    "lists",
    "list_items",
    "list_changes",
    "rule_snoozes",
    "rule_snooze_changes",
)
# What the migrations create and every test starts with as they left it.
_TABLES_KEPT = frozenset({"schema_migrations"})
# The console's rollups and review claims (the rollups count what the truncated tables held).
_CONSOLE_TABLES = (
    "review_claims",
    "console_rollup_state",
    "console_hourly",
    "console_rule_daily",
    "console_label_hourly",
    "console_rule_label_daily",
)


# A table holding more rows than this is truncated rather than deleted from: a DELETE leaves its rows dead until
# vacuum, and the next test's scans would read them.
_DELETE_AT_MOST = 5_000


def _empty(database: Database, tables: list[str]) -> None:
    """Empty `tables` and restart every sequence, as TRUNCATE ... RESTART IDENTITY CASCADE would.

    TRUNCATE gives each table and index new files: 0.15-0.45 s for these tables on a loaded machine, before every
    test. Most tests leave a few rows, which a DELETE and a VACUUM remove in about 10-20 ms; with the replica role no
    trigger or foreign-key check runs, since every table is emptied at once."""
    counts = database.query(
        " UNION ALL ".join(f"SELECT count(*) FROM (SELECT 1 FROM {t} LIMIT {_DELETE_AT_MOST + 1}) AS s" for t in tables)
    )
    if any(count > _DELETE_AT_MOST for (count,) in counts):
        database.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
        return
    sequences = [row[0] for row in database.query("SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'")]
    database.execute(
        "SET LOCAL session_replication_role = replica; "
        + "".join(f"DELETE FROM {t}; " for t in tables)
        + "".join(f"ALTER SEQUENCE {s} RESTART; " for s in sequences)
    )
    # The deleted rows are removed and the tables' sizes counted again, as after a TRUNCATE: left dead (and the
    # tables never analysed), a detect_fraud call over a few live rows took seconds.
    conn = psycopg2.connect(database.admin_url)
    try:
        conn.autocommit = True  # VACUUM runs outside a transaction
        with conn.cursor() as cur:
            cur.execute(f"VACUUM (ANALYZE) {', '.join(tables)}")
    finally:
        conn.close()


@pytest.fixture
def database(migrated_database: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    """An empty, migrated database with the default rule set; the code under test connects as the service role."""
    present = {row[0] for row in migrated_database.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    tables = [t for t in (*_TABLES_TO_EMPTY, "fraud_labels", *_CONSOLE_TABLES) if t in present]
    # A table a migration adds must be emptied between tests too, or one test's rows leak into the next.
    assert present - set(tables) <= _TABLES_KEPT, f"tests/conftest.py does not empty {present - set(tables)}"
    _empty(migrated_database, tables)
    migrate(migrated_database.admin_url, service_login_role(migrated_database.name))  # re-seeds the default rule set
    monkeypatch.setenv("DATABASE_URL", migrated_database.service_url)
    db.reset_connection()
    # The detector read by an earlier test would otherwise serve for the rules cache period: a test that relies on
    # the migrated default rule set would be decided by the rules an earlier one applied.
    detector_cache.clear()
    yield migrated_database
    db.reset_connection()


@pytest.fixture
def log_lines(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """What the service's Powertools Logger writes during the test.

    The logger keeps the stdout it was created with, which under pytest is the capture of whichever test first
    imported it: `capsys` sees its lines only when that was the same test. Imported here first, so that its
    handler exists to be redirected whichever tests ran before in this process.
    """
    import txguard.observability  # noqa: F401

    buffer = io.StringIO()
    for handler in logging.getLogger("txguard").handlers:
        if isinstance(handler, logging.StreamHandler):
            monkeypatch.setattr(handler, "stream", buffer)
    return buffer
