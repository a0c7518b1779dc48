"""`txguard db migrate` and `txguard db status`."""

from __future__ import annotations

import argparse
import os
import sys

import psycopg2

from txguard.commands.common import add_database_argument, database_url
from txguard.migrate import MigrationError, available_migrations, migrate


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
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
            row = cur.fetchone()
            done: dict[int, object] = {}
            if row and row[0]:
                cur.execute("SELECT version, applied_at FROM schema_migrations")
                done = dict(cur.fetchall())
    finally:
        conn.close()
    pending = 0
    for migration in available_migrations():
        when = done.get(migration.version)
        pending += when is None
        print(f"{migration.version:04d}_{migration.name:<30} {'applied ' + str(when) if when else 'pending'}")
    if pending:
        print(f"{pending} pending; run `txguard db migrate`", file=sys.stderr)
    return 0
