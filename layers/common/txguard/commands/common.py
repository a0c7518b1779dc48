"""What the administrative commands share: which database they talk to, and how their arguments read numbers."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from txguard import literals

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
    """The JSON value in a file, read by the one JSON rule (`txguard.literals.loads`: exact numbers, no NaN, no key
    given twice, nesting bounded); raises ValueError saying why it cannot be read (missing, not such JSON)."""
    try:
        return literals.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, literals.JsonRefused) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None


def integer_argument(minimum: int, maximum: int) -> Callable[[str], int]:
    """An argparse `type` reading an integer by the one rule of `txguard.literals` (ASCII digits, within
    [minimum, maximum]); argparse reports a refusal as a usage error."""

    def parse(text: str) -> int:
        try:
            return literals.integer_from_text(text, minimum, maximum)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} {exc}") from None

    return parse


def decimal_argument(minimum_exclusive: Decimal, maximum: Decimal) -> Callable[[str], Decimal]:
    """An argparse `type` reading a decimal by the one rule of `txguard.literals`, in (minimum_exclusive, maximum]."""

    def parse(text: str) -> Decimal:
        try:
            number = literals.decimal(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} {exc}") from None
        if not minimum_exclusive < number <= maximum:
            raise argparse.ArgumentTypeError(
                f"{text[:40]!r} must be more than {minimum_exclusive} and at most {maximum}"
            )
        return number

    return parse
