"""Shared fixtures: a real PostgreSQL database of this run's own, migrated once and emptied per test."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pgserver
import psycopg2
import pytest

from txguard import db
from txguard.local.postgres import Server, create_database, drop_database, find_or_start_server
from txguard.migrate import migrate
from txguard.settings import SERVICE_ROLE

ROOT = Path(__file__).resolve().parent.parent
EVENTS_DIR = ROOT / "events"


def load_event(name: str) -> dict[str, Any]:
    """A sample event from events/, the same files `sam local invoke -e` and `txguard invoke` take."""
    return json.loads((EVENTS_DIR / name).read_text())


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


@contextmanager
def scratch_database(server: Server, prefix: str) -> Iterator[str]:
    """The administrative URL of an empty database of this run's own, dropped afterwards."""
    name = create_database(server, prefix=prefix)
    try:
        yield server.database_url(name)
    finally:
        drop_database(server, name)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    with find_or_start_server() as server:
        yield server


@pytest.fixture(scope="session")
def migrated_database(pg_server: Server) -> Iterator[Database]:
    name = create_database(pg_server, prefix="txguard_test")
    admin_url = pg_server.database_url(name)
    try:
        migrate(admin_url, SERVICE_ROLE)
        yield Database(pg_server, name, admin_url, pg_server.database_url(name, user=SERVICE_ROLE))
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


_TABLES_TO_EMPTY = ("transactions", "account_stats", "account_daily", "rule_sets")


@pytest.fixture
def database(migrated_database: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    """An empty, migrated database with the default rule set; the code under test connects as the service role."""
    present = {row[0] for row in migrated_database.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    tables = [t for t in (*_TABLES_TO_EMPTY, "fraud_labels") if t in present]
    migrated_database.execute(f"TRUNCATE {', '.join(tables)} CASCADE")
    migrate(migrated_database.admin_url, SERVICE_ROLE)  # re-seeds the default rule set
    monkeypatch.setenv("DATABASE_URL", migrated_database.service_url)
    db.reset_connection()
    yield migrated_database
    db.reset_connection()
