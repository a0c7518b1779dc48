"""`txguard console refresh`: bring the console's rollups up to date in one go.

Page views refresh the rollups themselves, in time-boxed steps; after a large replay or import that leaves them
far behind, this catches up at once (large steps, no page waiting) and prints how long it took.

    txguard console refresh     # DATABASE_URL, else the local `txguard` database
"""

from __future__ import annotations

import argparse
import time

from txguard_dev.commands.common import add_database_argument, database_url, open_database

CATCH_UP_STEP_MS = 120_000  # a step may take this long here: larger steps cost less per row


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="console_command", metavar="SUBCOMMAND", required=True)
    refresh = sub.add_parser("refresh", help="bring the console's rollups up to date")
    add_database_argument(refresh)


def run(args: argparse.Namespace) -> int:
    from txguard.storage import console_rollups

    started = time.perf_counter()
    with open_database(database_url(args)) as conn, conn, conn.cursor() as cur:
        result = console_rollups.catch_up(cur, step_budget_ms=CATCH_UP_STEP_MS)
    mark = "nothing stored yet" if result.refreshed_to is None else f"counted up to {result.refreshed_to.isoformat()}"
    print(f"console rollups {mark} ({time.perf_counter() - started:.1f} s)")
    return 0
