"""The one PostgreSQL connection of an execution environment.

Created lazily on first use, reused across invocations (a new connection costs ~1.3 ms plus a secret
fetch in AWS), dropped and re-established after any connection-level failure. Every unit of work runs
in one database transaction: it commits whole or not at all. Its BEGIN and settings travel with its first
statement, and writes whose result is not read with its next statement or its COMMIT (UnitOfWorkCursor), so
that one transaction ingested alone costs few round trips.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import quote

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from txguard.errors import Unavailable
from txguard.observability import logger, tracer
from txguard.settings import DatabaseSettings

T = TypeVar("T")


class DatabaseUnavailable(Unavailable):
    """The database could not be reached, was too busy or did not answer in time; the request changed nothing.

    `str()` is the operator's reason (logged); `message` is what a client is told.
    """

    code = "database_unavailable"

    def __init__(
        self, message: str, retry_after_s: int = 2, retry_now: bool | None = None, connection_lost: bool = False
    ) -> None:
        super().__init__(message)
        self.message = "the database is unavailable; nothing was stored, retry later"
        self.headers = {"Retry-After": str(retry_after_s)}
        self.retry_after_s = retry_after_s
        # Whether run_in_transaction should try again at once: yes for a dropped or refused connection and for
        # a transaction that lost a race with another one, no for timeouts and configuration problems, where
        # it would not help.
        self.retry_now = retry_after_s < 5 if retry_now is None else retry_now
        # The connection is unusable and must be replaced before the next try.
        self.connection_lost = connection_lost


def database_failure(exc: psycopg2.Error) -> DatabaseUnavailable:
    """What a database error means for the caller, by SQLSTATE class; the one place errors are classified.

    - 23505 unique_violation: a concurrent transaction committed the same key after this one looked for it
      (every insert here checks for existing keys first). Re-running the whole unit of work sees that row and
      answers by content: a duplicate, or 409 transaction_id_conflict.
    - class 40 (serialization failure, deadlock) and class 53 (out of memory, out of shared memory, too many
      connections): the server is busy. Retried at once, then 503 after 1 s.
    - 55P03 lock_not_available (lock_timeout) and 57014 query_canceled (statement_timeout): the request has
      already waited its whole allowance, so it is not retried at once; 503 after 1 s and 5 s.
    - class 08, 57P01-57P03 and errors without SQLSTATE: the connection is gone. Replaced and retried.
    - anything else (a data or program error the validation should have caught, an internal server error):
      not retried; 503 with a long Retry-After, logged with its SQLSTATE for the operator. Never a 500.
    """
    code = getattr(exc, "pgcode", None) or ""
    if code == "23505":
        return DatabaseUnavailable("the database is busy (a concurrent write of the same key)", retry_after_s=1)
    if code[:2] in ("40", "53"):
        return DatabaseUnavailable(f"the database is busy ({_first_line(exc)})", retry_after_s=1)
    if code == "55P03":
        return DatabaseUnavailable("the database is busy (lock timeout)", retry_after_s=1, retry_now=False)
    if code == "57014":
        return DatabaseUnavailable("the database did not answer in time", retry_after_s=5)
    if not code or code[:2] == "08" or code in ("57P01", "57P02", "57P03"):
        return DatabaseUnavailable(f"lost the database connection: {_first_line(exc)}", connection_lost=True)
    return DatabaseUnavailable(f"the database refused the request (SQLSTATE {code})", retry_after_s=30)


_secrets: Any = None


def _secret_credentials(settings: DatabaseSettings) -> dict[str, Any]:
    """The database secret through Powertools parameters (cached for TXGUARD_DB_SECRET_MAX_AGE seconds).

    The client answers within a few seconds or fails: a Secrets Manager endpoint that never answers must
    give the caller a 503, not hold the request until the function times out.
    """
    global _secrets
    if _secrets is None:
        # Imported here: boto3 costs ~120 ms of cold start and only the AWS path needs it.
        from aws_lambda_powertools.utilities.parameters import SecretsProvider
        from botocore.config import Config

        _secrets = SecretsProvider(
            boto_config=Config(connect_timeout=2, read_timeout=2, retries={"total_max_attempts": 1})
        )
    secret = _secrets.get(settings.secret_arn or "", transform="json", max_age=settings.secret_max_age_s)
    if not isinstance(secret, dict) or "username" not in secret or "password" not in secret:
        raise DatabaseUnavailable("database secret has no username/password", retry_after_s=30)
    return secret


def dsn_from_settings(settings: DatabaseSettings) -> str:
    """The connection string: DATABASE_URL locally, host/port/name plus a Secrets Manager secret in AWS."""
    if settings.url:
        return settings.url
    if not settings.host or not settings.secret_arn:
        raise DatabaseUnavailable(
            "no database configured: set DATABASE_URL, or TXGUARD_DB_HOST and TXGUARD_DB_SECRET_ARN", 30
        )
    try:
        secret = _secret_credentials(settings)
    except DatabaseUnavailable:
        raise
    except Exception as exc:  # any failure to read the secret is a retryable outage, not a crash
        # Not retried at once: the client has already retried within its own short timeouts.
        raise DatabaseUnavailable(
            f"could not read the database secret: {type(exc).__name__}", 10, retry_now=False
        ) from exc
    user = quote(str(secret["username"]), safe="")
    password = quote(str(secret["password"]), safe="")
    dsn = f"postgresql://{user}:{password}@{settings.host}:{settings.port}/{settings.name}"
    if settings.sslmode:
        dsn += f"?sslmode={settings.sslmode}"
        if settings.sslrootcert:
            dsn += f"&sslrootcert={quote(settings.sslrootcert, safe='/')}"
    return dsn


def connect(dsn: str, settings: DatabaseSettings | None = None) -> psycopg2.extensions.connection:
    """A new connection with txguard's client settings; its cursors start each transaction with its timeouts.

    No startup `options`: RDS Proxy and PgBouncer refuse them ("RDS Proxy currently doesn't support
    command-line options"), and a session-level SET would not survive a transaction-mode pooler handing the
    next transaction to another server connection. The timeouts and jit=off are transaction-local instead
    (`UnitOfWorkCursor`). Raises DatabaseUnavailable when the server cannot be reached.
    """
    settings = settings or DatabaseSettings.from_env()
    try:
        conn = psycopg2.connect(
            dsn,
            connect_timeout=settings.connect_timeout_s,
            application_name="txguard",
            keepalives=1,
            keepalives_idle=30,
        )
    except psycopg2.OperationalError as exc:
        raise DatabaseUnavailable(f"could not connect to the database: {_first_line(exc)}") from exc
    # By keyword: X-Ray's psycopg2 patch unwraps its connection proxy only from `conn_or_curs=`.
    psycopg2.extras.register_default_jsonb(conn_or_curs=conn, loads=json.loads)
    return conn


def transaction_settings(settings: DatabaseSettings) -> str:
    """The SET LOCAL statements that open every unit of work (valid until its COMMIT or ROLLBACK).

    lock_timeout stays below statement_timeout so that a wait on another transaction's lock is reported
    as "busy" (55P03), not as a slow statement (57014). JIT compilation costs tens of milliseconds and pays
    off only for long analytical queries; the planner's estimates for the batch statements (unnest joined
    to index scans) would trigger it.
    """
    return (
        f"SET LOCAL statement_timeout = {int(settings.statement_timeout_ms)}; "
        f"SET LOCAL lock_timeout = {int(settings.lock_timeout_ms)}; "
        "SET LOCAL jit = off; "
    )


class UnitOfWorkCursor(psycopg2.extensions.cursor):  # type: ignore[misc]
    """A cursor that opens its unit of work with its first statement and sends result-less writes with the next
    statement or with COMMIT, each message one round trip.

    The connection is in autocommit mode, so psycopg2 sends no BEGIN of its own: the first statement carries
    "BEGIN; SET LOCAL ...;" (`prelude`) in front of it. A write whose result nobody reads (`execute_later`) waits
    for the next statement, or for COMMIT, and travels in front of it. psycopg2 sends a query string as one
    simple-protocol message: one round trip, whose result is the last statement's; the server runs the statements
    in order and stops at the first error, which the message reports, so nothing after a failed write runs.
    """

    prelude: str = ""
    # The unit of work's statement timeout (ms, 0: none), from the settings read when the connection was opened:
    # a statement allowed longer (the COPY that decides its rows) sets it back to this.
    statement_timeout_ms: int = 0
    # Whether BEGIN has been sent (then the unit of work ends with COMMIT or ROLLBACK).
    begun: bool = False

    def execute_later(self, query: Any, vars: Any = None) -> None:
        """Send `query` (a statement with no result to read) in front of the next statement or with COMMIT."""
        self._later = [*getattr(self, "_later", []), self.mogrify(query, vars).decode()]

    def _front(self) -> str:
        """What goes in front of the next statement: the prelude, then the writes waiting; clears both."""
        later = getattr(self, "_later", None)
        front = self.prelude + ("".join(f"{q}; " for q in later) if later else "")
        if self.prelude:
            self.begun = True
        self.prelude, self._later = "", []
        return front

    def execute(self, query: Any, vars: Any = None) -> None:
        front = self._front()
        if front:
            if not isinstance(query, str | bytes):  # a psycopg2.sql.Composable
                query = query.as_string(self)
            if vars is not None:  # the front is already mogrified: "%" in it must not be read as a placeholder
                query = self.mogrify(query, vars)
                vars = None
            if isinstance(query, bytes):
                query = query.decode()
            query = front + query
        super().execute(query, vars)

    def copy_expert(self, sql: Any, file: Any, size: int = 8192) -> None:
        front = self._front()
        if not isinstance(sql, str):
            sql = sql.decode() if isinstance(sql, bytes) else sql.as_string(self)
        # The statements in front run first, then the server answers COPY's start: still one round trip.
        super().copy_expert(front + sql, file, size)

    def executemany(self, query: Any, vars_list: Any) -> None:
        self._send_front()
        super().executemany(query, vars_list)

    def callproc(self, procname: Any, parameters: Any = None) -> Any:
        self._send_front()
        return super().callproc(procname, parameters)

    def _send_front(self) -> None:
        front = self._front()
        if front:
            super().execute(front)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call `callback` once this unit of work has committed; never if it does not. What it raises is logged and
        goes no further: the unit of work is committed whatever its callbacks do."""
        self._committed = [*getattr(self, "_committed", []), callback]

    def finish(self) -> None:
        """COMMIT the unit of work, with the writes still waiting, in one round trip (nothing when nothing was
        sent), then call what after_commit asked for."""
        front = self._front()
        callbacks, self._committed = getattr(self, "_committed", []), []
        if self.begun:
            super().execute(front + "COMMIT")
            self.begun = False
            for callback in callbacks:
                try:
                    callback()
                except Exception:  # committed already: a failure here must not turn it into an error
                    logger.exception("a step after COMMIT failed; the unit of work is committed")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ConnectionHolder:
    """Holds the execution environment's connection; thread-safe so the local server may share it."""

    def __init__(self) -> None:
        self._conn: psycopg2.extensions.connection | None = None
        self._prelude = ""
        self._statement_timeout_ms = 0
        self._lock = threading.RLock()

    def reset(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                except Exception:  # already broken; closing is best effort
                    pass
            self._conn = None

    @contextmanager
    def transaction(self) -> Iterator[psycopg2.extensions.cursor]:
        """One database transaction on the shared connection: commit on success, rollback on error."""
        with self._lock:
            if self._conn is None or self._conn.closed:
                settings = DatabaseSettings.from_env()
                self._conn = connect(dsn_from_settings(settings), settings)
                # BEGIN travels with the unit of work's first statement (UnitOfWorkCursor), not on its own.
                self._conn.autocommit = True
                self._prelude = "BEGIN; " + transaction_settings(settings)
                self._statement_timeout_ms = settings.statement_timeout_ms
            conn = self._conn
            cur: UnitOfWorkCursor | None = None
            try:
                with conn.cursor(cursor_factory=UnitOfWorkCursor) as cur:
                    cur.prelude = self._prelude
                    cur.statement_timeout_ms = self._statement_timeout_ms
                    yield cur
                    cur.finish()
            except psycopg2.Error as exc:
                failure = database_failure(exc)
                if not failure.connection_lost:
                    _rollback_quietly(conn, cur)
                if failure.connection_lost or conn.closed:
                    self.reset()
                raise failure from exc
            except BaseException:
                _rollback_quietly(conn, cur)
                if conn.closed:
                    self.reset()
                raise


def _rollback_quietly(conn: psycopg2.extensions.connection, cur: UnitOfWorkCursor | None = None) -> None:
    try:
        if conn.autocommit:
            # The unit of work sent its own BEGIN: psycopg2 knows of no transaction to roll back.
            if cur is not None and cur.begun:
                cur.begun = False
                with conn.cursor() as plain:
                    plain.execute("ROLLBACK")
        else:
            conn.rollback()
    except Exception:  # the connection is gone; the server has rolled back for us
        pass


_holder = ConnectionHolder()


@tracer.capture_method(capture_response=False, capture_error=False)
def run_in_transaction(
    work: Callable[[psycopg2.extensions.cursor], T], attempts: int = 4, holder: ConnectionHolder | None = None
) -> T:
    """Run `work` in one database transaction on the shared connection (or `holder`'s).

    Every database error is classified by database_failure. A connection found dead (the server restarted,
    a proxy dropped it) is replaced and the work retried, as are the busy cases (deadlocks, serialization
    failures, lock exhaustion, a key committed concurrently): `work` is always a whole transaction, so
    re-running it is safe; a short random pause lets the transaction it collided with finish. Anything still
    failing is raised as DatabaseUnavailable, which the API turns into a 503.
    """
    holder = holder or _holder
    for attempt in range(attempts):
        try:
            with holder.transaction() as cur:
                return work(cur)
        except DatabaseUnavailable as exc:
            if not exc.retry_now or attempt == attempts - 1:
                raise
            if not exc.connection_lost:
                time.sleep(random.uniform(0.005, 0.02) * (attempt + 1))
    raise AssertionError("unreachable: the last attempt returns or raises")


def reset_connection() -> None:
    """Drop the shared connection (tests, and the local runtime when it switches databases)."""
    _holder.reset()
