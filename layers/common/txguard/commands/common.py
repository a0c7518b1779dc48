"""What the administrative commands share: which database they talk to."""

from __future__ import annotations

import argparse
import os

# The database `txguard local` creates on the local server.
LOCAL_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/txguard"


def add_database_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=None,
        help="administrative connection (default: $DATABASE_URL, else the local `txguard` database)",
    )


def database_url(args: argparse.Namespace) -> str:
    return str(args.database_url or os.environ.get("DATABASE_URL") or LOCAL_DATABASE_URL)
