"""What the administrative commands share: which database they talk to."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

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


def read_json_file(path: Path) -> Any:
    """The JSON value in a file; raises ValueError saying why it cannot be read (missing, not JSON, too deep)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    except RecursionError:  # json's decoder recurses once per nested array or object
        raise ValueError(f"cannot read {path}: its JSON is nested too deeply") from None
