"""What the administrative commands share: which database they talk to, how they open it, how they fail.

Every command that reads or writes the service's tables opens the database through `open_database`, which
refuses a database the migrations have not (all) been applied to with one message naming the fix, instead
of each command failing on whichever table it touches first. A command stops with CommandError; `txguard`
prints its message and exits with its code (see cli.main), so each failure is reported the same way.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from txguard import literals
from txguard.errors import quoted

if TYPE_CHECKING:
    import psycopg2.extensions

    from txguard.models.artifact_store import ArtifactStore

# The database `txguard local` creates on the local server.
LOCAL_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/txguard"
# Where `txguard local` and the commands keep model artifacts when neither TXGUARD_MODEL_BUCKET nor TXGUARD_MODEL_DIR
# is set (under the working directory).
LOCAL_MODEL_DIR = ".txguard/models"

EXIT_FAILURE = 1  # the command could not do its work (database unreachable or not migrated, refused, ...)
EXIT_USAGE = 2  # the command line itself is wrong or incomplete


class CommandError(Exception):
    """A command cannot go on; the message says why and what to do, `exit_code` is the process's status."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_database_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=None,
        help="administrative connection (default: $DATABASE_URL, else the local `txguard` database)",
    )


def database_url(args: argparse.Namespace) -> str:
    return str(args.database_url or os.environ.get("DATABASE_URL") or LOCAL_DATABASE_URL)


def service_database_url() -> str:
    """The database the service's own code connects to (DATABASE_URL, or TXGUARD_DB_HOST and its secret).

    For the commands that run the service's code (generate, evaluate). Raises CommandError when none is
    configured or its secret cannot be read.
    """
    from txguard.db import DatabaseUnavailable, dsn_from_settings
    from txguard.settings import DatabaseSettings

    try:
        return dsn_from_settings(DatabaseSettings.from_env())
    except DatabaseUnavailable as exc:
        raise CommandError(str(exc)) from None


def use_local_model_store() -> None:
    """For commands that run ingest in this process (replay, generate --direct): when neither TXGUARD_MODEL_BUCKET
    nor TXGUARD_MODEL_DIR is set, serving reads the champion from LOCAL_MODEL_DIR, where `txguard train` put it.
    Without this the champion trained here is unavailable to them and every decision falls back to the rules."""
    if not os.environ.get("TXGUARD_MODEL_BUCKET") and not os.environ.get("TXGUARD_MODEL_DIR"):
        os.environ["TXGUARD_MODEL_DIR"] = str(Path(LOCAL_MODEL_DIR).resolve())


def model_store() -> ArtifactStore:
    """The model artifact store: TXGUARD_MODEL_BUCKET, else TXGUARD_MODEL_DIR, else LOCAL_MODEL_DIR."""
    from txguard.models import artifact_store

    return artifact_store.from_env(default_dir=Path(LOCAL_MODEL_DIR).resolve())


def pending_migrations(cur: psycopg2.extensions.cursor) -> list[str]:
    """Names (`0003_fraud_labels`) of the migrations not applied to the connected database, oldest first.

    The service role may not read schema_migrations (the migrations grant it only what the functions need):
    for it, a database whose schema_migrations exists counts as migrated.
    """
    from txguard.migrate import available_migrations

    cur.execute(
        """SELECT to_regclass('schema_migrations') IS NOT NULL,
                  to_regclass('schema_migrations') IS NOT NULL
                  AND has_table_privilege('schema_migrations', 'SELECT')"""
    )
    row = cur.fetchone()
    exists, readable = (bool(row[0]), bool(row[1])) if row else (False, False)
    migrations = available_migrations()
    if exists and not readable:
        return []
    applied: set[int] = set()
    if exists:
        cur.execute("SELECT version FROM schema_migrations")
        applied = {version for (version,) in cur.fetchall()}
    return [f"{m.version:04d}_{m.name}" for m in migrations if m.version not in applied]


@contextmanager
def open_database(url: str, *, migrated: bool = True) -> Iterator[psycopg2.extensions.connection]:
    """A connection to `url`, closed on exit; with `migrated`, only to a database with every migration applied.

    Raises CommandError (exit 1) when the database cannot be reached, or is not migrated: the message
    names the database and says to run `txguard db migrate`.
    """
    import psycopg2

    from txguard_dev.local.postgres import without_password

    shown = without_password(url)
    try:
        conn = psycopg2.connect(url, connect_timeout=10, application_name="txguard-cli")
    except psycopg2.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CommandError(f"cannot connect to {shown}: {reason}") from None
    try:
        if migrated:
            with conn, conn.cursor() as cur:
                pending = pending_migrations(cur)
            if pending:
                raise CommandError(
                    f"the database {shown} is not migrated ({len(pending)} pending: {', '.join(pending)}); "
                    "run `txguard db migrate` first"
                )
        yield conn
    finally:
        conn.close()


def check_database(url: str) -> None:
    """Raise CommandError unless `url` is a reachable, migrated database (for code that opens its own)."""
    with open_database(url):
        pass


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
            raise argparse.ArgumentTypeError(f"{quoted(text)} {exc}") from None

    return parse


def decimal_argument(minimum_exclusive: Decimal, maximum: Decimal) -> Callable[[str], Decimal]:
    """An argparse `type` reading a decimal by the one rule of `txguard.literals`, in (minimum_exclusive, maximum]."""

    def parse(text: str) -> Decimal:
        try:
            number = literals.decimal(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{quoted(text)} {exc}") from None
        if not minimum_exclusive < number <= maximum:
            raise argparse.ArgumentTypeError(
                f"{quoted(text)} must be more than {minimum_exclusive} and at most {maximum}"
            )
        return number

    return parse


def period_argument(text: str) -> int:
    """An argparse `type` for a time window's bound, in epoch ms, read by txguard.intake.window_bound_ms (a UTC date
    YYYY-MM-DD, its midnight; epoch milliseconds; an RFC 3339 date-time with a zone), as the API reads `from`/`to`."""
    from txguard.intake import window_bound_ms

    try:
        return window_bound_ms(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{quoted(text)}: {exc}") from None
