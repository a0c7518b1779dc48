"""Numbered SQL migrations, applied in order, each once, under an advisory lock.

`txguard db migrate` runs this with an administrative connection (DATABASE_URL): it applies what is new,
checks that applied files were not edited since, creates the service's own database role with only the
privileges the functions need, and seeds the default rule set when there is none.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any fixed number: every migrate run on the same database serialises on it.
_ADVISORY_LOCK_KEY = 0x7478_6775_6172_6401


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(Exception):
    pass


def available_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("txguard.migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version number: {versions}")
    return found


def migrate(admin_dsn: str, service_role: str, service_password: str | None = None) -> list[Migration]:
    """Apply pending migrations and (re)grant the service role. Returns the migrations applied now."""
    conn = psycopg2.connect(admin_dsn, application_name="txguard-migrate", connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (_ADVISORY_LOCK_KEY,))
        try:
            applied = _apply_pending(conn)
            _ensure_service_role(conn, service_role, service_password)
            _seed_default_rules(conn)
        finally:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (_ADVISORY_LOCK_KEY,))
        return applied
    finally:
        conn.close()


def _apply_pending(conn: psycopg2.extensions.connection) -> list[Migration]:
    with conn.cursor() as cur:
        cur.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"""
        )
        cur.execute("SELECT version, checksum FROM schema_migrations")
        done = dict(cur.fetchall())
    applied = []
    for migration in available_migrations():
        if migration.version in done:
            if done[migration.version] != migration.checksum:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name}.sql was edited after it was applied; "
                    "add a new migration instead"
                )
            continue
        conn.autocommit = False
        try:
            with conn.cursor() as cur:
                cur.execute(migration.sql)
                cur.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
            conn.commit()
        except Exception:
            conn.rollback()
            raise
        finally:
            conn.autocommit = True
        applied.append(migration)
    return applied


def _ensure_service_role(conn: psycopg2.extensions.connection, role: str, password: str | None) -> None:
    """The login role the functions use: a member of txguard_service, which the migrations grant to."""
    ident = sql.Identifier(role)
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
        if cur.fetchone() is None:
            try:
                cur.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE").format(ident))
            except (psycopg2.errors.DuplicateObject, psycopg2.errors.UniqueViolation):
                pass  # created concurrently by a migrate run on another database (roles are cluster-wide)
        if password is not None:
            cur.execute(sql.SQL("ALTER ROLE {} PASSWORD %s").format(ident), (password,))
        cur.execute(sql.SQL("GRANT txguard_service TO {}").format(ident))
        cur.execute("SELECT current_database()")
        (database,) = cur.fetchone()
        cur.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), ident))


def _seed_default_rules(conn: psycopg2.extensions.connection) -> None:
    # Imported here so that migrating does not depend on the rule language at import time.
    from txguard.rule_store import seed_default_rule_set

    seed_default_rule_set(conn)
