"""Finding a PostgreSQL server for local runs and tests, and making a database on it.

Order: DATABASE_URL when set; else the server on 127.0.0.1:5432; else an embedded server (pgserver)
started in a directory of ours and stopped when we are done.

A database created here is marked as a development one (`ALTER DATABASE ... SET txguard.environment =
'development'`, kept by the server beside the database, not in its schema): `txguard db reset` refuses any
database without the mark, so it can never wipe one it did not make for development.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

LOCAL_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
MAINTENANCE_DATABASE = "postgres"
DEVELOPMENT_SETTING = "txguard.environment"
DEVELOPMENT_VALUE = "development"


@dataclass(frozen=True)
class Server:
    """A reachable server: `admin_url` points at its maintenance database with rights to create databases."""

    admin_url: str
    embedded: bool

    def database_url(self, database: str, user: str | None = None) -> str:
        return with_database(self.admin_url, database, user)


def with_database(url: str, database: str, user: str | None = None) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc
    if user is not None:
        host = netloc.rsplit("@", 1)[-1]
        netloc = f"{user}@{host}"
    return urlunsplit((parts.scheme, netloc, "/" + database, parts.query, parts.fragment))


def reachable(url: str) -> bool:
    try:
        psycopg2.connect(url, connect_timeout=2).close()
        return True
    except psycopg2.OperationalError:
        return False


@contextmanager
def find_or_start_server(data_dir: Path | None = None) -> Iterator[Server]:
    """Yield a server; an embedded one started here is stopped (and its files removed) on exit."""
    url = os.environ.get("DATABASE_URL")
    if url:
        # The database DATABASE_URL names may not exist yet: administer the server through its maintenance one.
        yield Server(admin_url=with_database(url, MAINTENANCE_DATABASE), embedded=False)
        return
    if reachable(LOCAL_SERVER_URL):
        yield Server(admin_url=LOCAL_SERVER_URL, embedded=False)
        return
    with embedded_server(data_dir) as server:
        yield server


@contextmanager
def embedded_server(data_dir: Path | None = None) -> Iterator[Server]:
    import pgserver  # only needed on machines with no PostgreSQL running

    owned = data_dir is None
    directory = Path(tempfile.mkdtemp(prefix="txguard-pg-")) if data_dir is None else data_dir
    directory.mkdir(parents=True, exist_ok=True)
    instance = pgserver.get_server(directory, cleanup_mode="stop")  # type: ignore[attr-defined]
    try:
        yield Server(admin_url=instance.get_uri(), embedded=True)
    finally:
        instance.cleanup()
        if owned:
            shutil.rmtree(directory, ignore_errors=True)


def database_in_url(url: str) -> str | None:
    return urlsplit(url).path.lstrip("/") or None


def ensure_database(server: Server, name: str) -> bool:
    """Create the database unless it exists; True when it was created here (and marked for development).

    A database that accepts a connection is used as it is, so a user who may not reach the maintenance
    database still works with an existing one. Raises psycopg2.OperationalError when the server cannot
    be reached, or the database exists and still refuses the connection (e.g. a wrong password).
    """
    try:
        psycopg2.connect(server.database_url(name), connect_timeout=10).close()
        return False
    except psycopg2.OperationalError as exc:
        refused = exc
    conn = psycopg2.connect(server.admin_url, connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is not None:
                raise refused
            try:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except psycopg2.errors.DuplicateDatabase:
                return False  # another local run created it meanwhile
            mark_development(cur, name)
    finally:
        conn.close()
    return True


def mark_development(cur: psycopg2.extensions.cursor, name: str) -> None:
    """Mark database `name` as a development one (the cursor's role must own it or be a superuser)."""
    cur.execute(
        sql.SQL("ALTER DATABASE {} SET {} = {}").format(
            sql.Identifier(name), sql.SQL(DEVELOPMENT_SETTING), sql.Literal(DEVELOPMENT_VALUE)
        )
    )


def is_development(cur: psycopg2.extensions.cursor) -> bool:
    """Whether the connected database carries the development mark.

    Read from the catalog, not from current_setting(): a session or role setting (PGOPTIONS) must not pass
    for the database's own mark.
    """
    cur.execute(
        """SELECT EXISTS (
               SELECT 1 FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
               WHERE d.datname = current_database() AND s.setrole = 0 AND %s = ANY (s.setconfig))""",
        (f"{DEVELOPMENT_SETTING}={DEVELOPMENT_VALUE}",),
    )
    row = cur.fetchone()
    return bool(row and row[0])


@contextmanager
def service_database(name: str | None = None, default_name: str = "txguard") -> Iterator[str]:
    """The database the local runtime uses, migrated; yields its URL for the service role.

    `name` if given; else the database DATABASE_URL names, as given; else `default_name`, created if missing,
    on the server `find_or_start_server` finds (an embedded one is stopped on exit).
    """
    from txguard.migrate import migrate, service_login_role

    with find_or_start_server() as server:
        database = name or database_in_url(os.environ.get("DATABASE_URL") or "") or default_name
        ensure_database(server, database)
        login = os.environ.get("TXGUARD_DB_ROLE") or service_login_role(database)
        migrate(server.database_url(database), login)
        yield server.database_url(database, user=login)


def without_password(url: str) -> str:
    """The URL fit for printing."""
    parts = urlsplit(url)
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    if not password:
        return url
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def create_database(server: Server, prefix: str = "txguard") -> str:
    """Create a uniquely named database, marked for development, and return its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(server.admin_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            mark_development(cur, name)
    finally:
        conn.close()
    return name


def drop_database(server: Server, name: str) -> None:
    """Drop the database and the roles migrate made for it (roles are cluster-wide: they would stay)."""
    from txguard.migrate import drop_service_roles

    conn = psycopg2.connect(server.admin_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        conn.close()
    drop_service_roles(server.admin_url, name)
