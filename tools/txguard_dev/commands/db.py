"""`txguard db migrate`, `txguard db status` and `txguard db reset`.

`reset` starts a development database over: it drops the `public` schema with every table and row in it,
recreates it as PostgreSQL makes it, and migrates. It needs --yes, and it refuses any database without the
development mark that `txguard local` and the tests set on the databases they create (see
txguard_dev.local.postgres), so it cannot wipe a production database, whatever URL it is given.
"""

from __future__ import annotations

import argparse
import os
import sys

from txguard.migrate import MigrationError, available_migrations, migrate
from txguard_dev.commands.common import (
    EXIT_USAGE,
    CommandError,
    add_database_argument,
    database_url,
    open_database,
)

# Seconds reset waits for the tables' locks: a running `txguard local` holds them until it is stopped.
RESET_LOCK_TIMEOUT_S = 10


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="db_command", required=True)
    up = sub.add_parser("migrate", help="apply pending migrations, create the service role, seed the rules")
    add_database_argument(up)
    up.add_argument(
        "--role",
        default=None,
        help="the service's login role (default: TXGUARD_DB_ROLE, else <database>_app); "
        "refused when it belongs to another database",
    )
    up.add_argument(
        "--password-env",
        default=None,
        metavar="VAR",
        help="set the service role's password from this environment variable",
    )
    status = sub.add_parser("status", help="list migrations and whether each is applied")
    add_database_argument(status)
    reset = sub.add_parser(
        "reset",
        help="development only: drop every table and row, recreate the schema and migrate",
        description="Only for a database marked as a development one (those `txguard local` creates). "
        "To mark another on purpose: ALTER DATABASE name SET txguard.environment = 'development'.",
    )
    add_database_argument(reset)
    reset.add_argument("--yes", action="store_true", help="confirm that every table and row may be dropped")
    reset.add_argument(
        "--role", default=None, help="the service's login role (default: TXGUARD_DB_ROLE, else <database>_app)"
    )


def run(args: argparse.Namespace) -> int:
    url = database_url(args)
    if args.db_command == "migrate":
        password = os.environ[args.password_env] if args.password_env else None
        try:
            applied = migrate(url, args.role or os.environ.get("TXGUARD_DB_ROLE"), password)
        except MigrationError as exc:
            print(f"txguard db migrate: {exc}", file=sys.stderr)
            return 1
        if applied:
            for migration in applied:
                print(f"applied {migration.version:04d}_{migration.name}")
        else:
            print("database is up to date")
        return 0
    if args.db_command == "reset":
        return reset(url, args.role, confirmed=args.yes)
    with open_database(url, migrated=False) as conn, conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        row = cur.fetchone()
        done: dict[int, object] = {}
        if row and row[0]:
            cur.execute("SELECT version, applied_at FROM schema_migrations")
            done = dict(cur.fetchall())
    pending = 0
    for migration in available_migrations():
        when = done.get(migration.version)
        pending += when is None
        print(f"{migration.version:04d}_{migration.name:<30} {'applied ' + str(when) if when else 'pending'}")
    if pending:
        print(f"{pending} pending; run `txguard db migrate`", file=sys.stderr)
    return 0


def reset(url: str, role: str | None, confirmed: bool) -> int:
    """Drop and recreate the `public` schema of a development database, then migrate it.

    Raises CommandError: exit 2 without `confirmed`; exit 1 for a database without the development mark,
    or one still in use after RESET_LOCK_TIMEOUT_S. Nothing is changed in any of these cases.
    """
    import psycopg2
    import psycopg2.errors

    from txguard_dev.local.postgres import DEVELOPMENT_SETTING, DEVELOPMENT_VALUE, is_development, without_password

    shown = without_password(url)
    if not confirmed:
        raise CommandError(f"this drops every table and row of {shown}; add --yes to confirm", exit_code=EXIT_USAGE)
    with open_database(url, migrated=False) as conn, conn, conn.cursor() as cur:
        if not is_development(cur):
            raise CommandError(
                f"refusing to reset {shown}: it is not marked as a development database (txguard local "
                "marks the databases it creates; to mark this one on purpose: ALTER DATABASE <name> SET "
                f"{DEVELOPMENT_SETTING} = '{DEVELOPMENT_VALUE}')"
            )
        cur.execute(f"SET LOCAL lock_timeout = '{RESET_LOCK_TIMEOUT_S}s'")
        try:
            cur.execute("DROP SCHEMA IF EXISTS public CASCADE")
        except psycopg2.errors.LockNotAvailable:
            raise CommandError(
                f"{shown} is in use (stop txguard local and other clients first); nothing was changed"
            ) from None
        # As PostgreSQL 15 creates it: owned by the database owner, usable by everyone.
        cur.execute("CREATE SCHEMA public AUTHORIZATION pg_database_owner")
        cur.execute("GRANT USAGE ON SCHEMA public TO PUBLIC")
    try:
        applied = migrate(url, role or os.environ.get("TXGUARD_DB_ROLE"))
    except MigrationError as exc:
        raise CommandError(f"the schema was recreated but not migrated: {exc}") from None
    print(f"reset {shown}: schema recreated, {len(applied)} migrations applied")
    return 0
