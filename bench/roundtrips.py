"""Counting the database round trips code makes, from the client side, without changing that code.

While `counting()` is active, every connection psycopg2.connect opens (the layer's, a pool's) counts each message
exchange libpq makes with the server: the BEGIN psycopg2 sends before a transaction's first statement, each
statement (`execute`, each item of `executemany`, `callproc`, a COPY), and COMMIT or ROLLBACK of an open
transaction. A statement string holding several statements ("SET LOCAL ...; SELECT ...") is one round trip,
as psycopg2 sends it as one simple-protocol message.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.extensions

# The round trips counted since the last reset, each as the first words of each statement it sent.
LOG: list[str] = []


def _note(conn: psycopg2.extensions.connection, what: Any) -> None:
    if not conn.autocommit and conn.status == psycopg2.extensions.STATUS_READY:
        LOG.append("BEGIN")  # psycopg2 opens the transaction with a round trip of its own
    text = what.decode() if isinstance(what, bytes) else str(what)
    # Each statement of the message by its first words: one message may hold several ("SET LOCAL ...; SELECT").
    parts = [" ".join(part.split()[:6]) for part in text.split(";") if part.strip()]
    LOG.append("; ".join(parts))


class _CountingCursor(psycopg2.extensions.cursor):  # type: ignore[misc]
    """Sits just above psycopg2's C cursor in any cursor class's MRO, so every call that reaches libpq passes here."""

    def execute(self, query: Any, vars: Any = None) -> Any:
        _note(self.connection, query if isinstance(query, str | bytes) else query.as_string(self))
        return super().execute(query, vars)

    def executemany(self, query: Any, vars_list: Any) -> Any:
        items = list(vars_list)
        for _ in items:
            _note(self.connection, query if isinstance(query, str | bytes) else query.as_string(self))
        return super().executemany(query, items)

    def callproc(self, procname: Any, parameters: Any = None) -> Any:
        _note(self.connection, f"SELECT {procname}(...)")
        return super().callproc(procname, parameters)

    def copy_expert(self, sql: Any, file: Any, size: int = 8192) -> Any:
        _note(self.connection, sql)
        return super().copy_expert(sql, file, size)

    def copy_from(self, file: Any, table: Any, *args: Any, **kwargs: Any) -> Any:
        _note(self.connection, f"COPY {table} FROM STDIN")
        return super().copy_from(file, table, *args, **kwargs)


@functools.cache
def _counting_class(factory: type) -> type:
    if factory is psycopg2.extensions.cursor:
        return _CountingCursor
    return type(f"Counting{factory.__name__}", (factory, _CountingCursor), {})


class CountingConnection(psycopg2.extensions.connection):  # type: ignore[misc]
    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        factory = kwargs.get("cursor_factory") or self.cursor_factory or psycopg2.extensions.cursor
        kwargs["cursor_factory"] = _counting_class(factory)
        return super().cursor(*args, **kwargs)

    def commit(self) -> None:
        if self.status != psycopg2.extensions.STATUS_READY:
            LOG.append("COMMIT")
        super().commit()

    def rollback(self) -> None:
        if self.status != psycopg2.extensions.STATUS_READY:
            LOG.append("ROLLBACK")
        super().rollback()


@contextmanager
def counting() -> Iterator[list[str]]:
    """Connections opened inside count their round trips into the list yielded (cleared on entry)."""
    original = psycopg2.connect

    @functools.wraps(original)
    def connect(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("connection_factory", CountingConnection)
        return original(*args, **kwargs)

    LOG.clear()
    psycopg2.connect = connect
    try:
        yield LOG
    finally:
        psycopg2.connect = original
