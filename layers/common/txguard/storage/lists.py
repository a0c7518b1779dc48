"""The tables `lists`, `list_items` and `list_changes` (migration 0017): lists, their current items, and the audit
of every change.

Every change of a list (its definition, items added, changed or removed) runs under the list row's lock (SELECT
... FOR UPDATE), writes the new version number (the stored one + 1) to the list and one audit row per change, in
the caller's database transaction: versions are numbered without gaps in commit order, and a change that changes
nothing (an item added again with the same expiry and note, a value removed that is not there) writes no version.

Readers: `memberships` (ingest, once per batch: one query, one index probe per value asked) and `list_definitions`
(the detector cache, with the rule set).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import IO, Any

import psycopg2.extensions
from psycopg2 import sql

from txguard import literals
from txguard.lists import InvalidListCursor, ListDefinition, ListExists, ListItem, ListNotFound

_LIST_COLUMNS = """l.name, l.kind, l.action, l.description, l.version,
    (SELECT count(*) FROM list_items i WHERE i.list_name = l.name),
    txguard_ts_to_ms(l.created_at), l.created_by, txguard_ts_to_ms(l.updated_at), l.updated_by"""
_CHANGE_COLUMNS = """change_id, list_name, version, operation, item_values,
    (SELECT array_agg(txguard_ts_to_ms(e) ORDER BY n) FROM unnest(expiries) WITH ORDINALITY AS x(e, n)), notes,
    kind, action, description, actor, txguard_ts_to_ms(changed_at)"""
AUDIT_CHUNK = 1000  # items per audit row (list_changes' CHECK)


@dataclass(frozen=True)
class StoredList:
    """A list as stored: its definition, `version`, how many items it holds (expired ones included), and when
    (epoch ms) and by whom it was created and last changed."""

    name: str
    kind: str
    action: str | None
    description: str | None
    version: int
    items: int
    created_at_ms: int
    created_by: str
    updated_at_ms: int
    updated_by: str

    def definition(self) -> ListDefinition:
        return ListDefinition(self.name, self.kind, self.action, self.version)

    def as_json(self) -> dict[str, Any]:
        """The API's shape: times as epoch ms."""
        return {
            "name": self.name,
            "kind": self.kind,
            "action": self.action,
            "description": self.description,
            "version": self.version,
            "items": self.items,
            "created_at": self.created_at_ms,
            "created_by": self.created_by,
            "updated_at": self.updated_at_ms,
            "updated_by": self.updated_by,
        }


@dataclass(frozen=True)
class StoredItem:
    """A current item: `expires_at_ms` (epoch ms, None: never), `active` (not expired at the read), when (epoch ms)
    and by whom it was added."""

    value: str
    expires_at_ms: int | None
    note: str | None
    added_at_ms: int
    added_by: str
    active: bool

    def as_json(self) -> dict[str, Any]:
        """The API's shape: times as epoch ms."""
        return {
            "value": self.value,
            "expires_at": self.expires_at_ms,
            "note": self.note,
            "added_at": self.added_at_ms,
            "added_by": self.added_by,
            "active": self.active,
        }


@dataclass(frozen=True)
class ListChange:
    """One audit row: `operation` create / update (the definition after it: kind, action, description) or add /
    change / remove (`items`: up to 1,000 ListItems of one version, each with its expiry and note after the change,
    before it for remove); who and when (epoch ms)."""

    change_id: int
    list_name: str
    version: int
    operation: str
    items: tuple[ListItem, ...] | None
    kind: str | None
    action: str | None
    description: str | None
    actor: str
    changed_at_ms: int

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> ListChange:
        change_id, list_name, version, operation, values, expiries, notes, *rest = row
        items = (
            None if values is None else tuple(ListItem(*fields) for fields in zip(values, expiries, notes, strict=True))
        )
        return cls(change_id, list_name, version, operation, items, *rest)

    def only(self, value: str | None) -> ListChange:
        """This change with only `value`'s item (all of them for None)."""
        if value is None or self.items is None:
            return self
        return replace(self, items=tuple(item for item in self.items if item.value == value))

    def as_json(self) -> dict[str, Any]:
        """The API's shape: times as epoch ms; an item operation's `items`, a definition's kind, action and
        description."""
        shown: dict[str, Any] = {"change_id": self.change_id, "version": self.version, "operation": self.operation}
        if self.items is None:
            shown |= {"kind": self.kind, "action": self.action, "description": self.description}
        else:
            shown["items"] = [{"value": i.value, "expires_at": i.expires_at_ms, "note": i.note} for i in self.items]
        return shown | {"actor": self.actor, "changed_at": self.changed_at_ms}


@dataclass(frozen=True)
class ItemsChanged:
    """What a write of items did: the list's `version` after it (unchanged when nothing changed), and how many
    items were `added`, `changed` (another expiry or note), left `unchanged`, or `removed`."""

    version: int
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0

    def as_json(self) -> dict[str, int]:
        return {
            "version": self.version,
            "added": self.added,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "removed": self.removed,
        }


def encode_cursor(kind: str, last: str | int) -> str:
    """An opaque cursor: `kind` (one letter naming what it pages) and where the next page starts after (text).
    "i": a list's items, after value `last`; "c": its changes, after change id; "l": the lists, after name;
    "s": a rule's snoozes (storage.rule_snoozes). Read back by decode_cursor."""
    return base64.urlsafe_b64encode(f"{kind}{last}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, kind: str) -> str:
    """The text after which a page of `kind` starts, from a cursor encode_cursor(kind, ...) issued. Raises
    InvalidListCursor for any other cursor (another kind's included), or one that carries nothing."""
    text = _decoded(cursor, kind)
    if not text:
        raise InvalidListCursor(cursor)
    return text


def decode_item_cursor(cursor: str) -> str:
    """The value after which a page of items starts. Raises InvalidListCursor."""
    return decode_cursor(cursor, "i")


def decode_change_cursor(cursor: str) -> int:
    """The change id after which a page of changes starts. Raises InvalidListCursor."""
    try:
        return literals.integer_from_text(_decoded(cursor, "c"), 0, 2**63 - 1)
    except ValueError:
        raise InvalidListCursor(cursor) from None


def _decoded(cursor: str, kind: str) -> str:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not text.startswith(kind):
        raise InvalidListCursor(cursor)
    return text[1:]


# One probe of list_items' primary key per (list, value) asked (EXPLAIN shows it: bench/lists_bench.py,
# tests/integration/test_list_storage.py). A plain join would be planned as a hash join over a whole list when the
# list is small next to the values asked; the LIMIT keeps the subquery a parameterised index scan, whatever the
# statistics say, so the cost never depends on a list's size.
MEMBERSHIPS_SQL = """SELECT w.list_name, w.value, found.expires_ms
    FROM unnest(%s::text[], %s::text[]) AS w(list_name, value)
    CROSS JOIN LATERAL (
        SELECT txguard_ts_to_ms(i.expires_at) AS expires_ms FROM list_items i
        WHERE i.list_name = w.list_name AND i.value = w.value
          AND (i.expires_at IS NULL OR i.expires_at > statement_timestamp())
        LIMIT 1
    ) AS found"""


def membership_arguments(wanted: Mapping[str, Collection[str]]) -> tuple[list[str], list[str]]:
    """MEMBERSHIPS_SQL's arguments: the (list name, value) pairs asked, each once, as two arrays."""
    pairs = sorted({(name, value) for name, values in wanted.items() for value in values})
    return [p[0] for p in pairs], [p[1] for p in pairs]


def memberships(cur: psycopg2.extensions.cursor, wanted: Mapping[str, Collection[str]]) -> dict[str, frozenset[str]]:
    """For each list name of `wanted`, the values among those asked (canonical text, attributes.list_value) that
    are items of the list in force now: no expiry, or one later than the statement's time. Every name asked is a
    key (an unknown list holds nothing). One query for the whole batch; one primary-key probe per (list, value)
    asked, so the cost grows with the values asked, never with the lists' sizes. Raises psycopg2.Error."""
    return {name: frozenset(items) for name, items in current_items(cur, wanted).items()}


def current_items(
    cur: psycopg2.extensions.cursor, wanted: Mapping[str, Collection[str]]
) -> dict[str, dict[str, int | None]]:
    """memberships, each value found with its item's expiry (epoch ms; None: never). Raises psycopg2.Error."""
    names, values = membership_arguments(wanted)
    found: dict[str, dict[str, int | None]] = {name: {} for name in wanted}
    if names:
        cur.execute(MEMBERSHIPS_SQL, (names, values))
        for name, value, expires_ms in cur.fetchall():
            found[name][value] = expires_ms
    return found


def list_definitions(cur: psycopg2.extensions.cursor) -> dict[str, ListDefinition]:
    """Every list's ListDefinition (name, kind, action, version) by name."""
    cur.execute("SELECT name, kind, action, version FROM lists ORDER BY name")
    return {row[0]: ListDefinition(*row) for row in cur.fetchall()}


def _stored_list(row: Sequence[Any]) -> StoredList:
    return StoredList(*row)


def get(cur: psycopg2.extensions.cursor, name: str) -> StoredList:
    """One list. Raises ListNotFound."""
    cur.execute(f"SELECT {_LIST_COLUMNS} FROM lists l WHERE l.name = %s", (name,))  # noqa: S608
    row = cur.fetchone()
    if row is None:
        raise ListNotFound(name)
    return _stored_list(row)


def all_lists(
    cur: psycopg2.extensions.cursor, after_name: str | None = None, limit: int | None = None
) -> list[StoredList]:
    """The lists by name, after `after_name` (None: from the first), at most `limit` (None: all of them)."""
    cur.execute(
        f"""SELECT {_LIST_COLUMNS} FROM lists l WHERE %(after)s::text IS NULL OR l.name > %(after)s::text
            ORDER BY l.name LIMIT %(limit)s""",  # noqa: S608
        {"after": after_name, "limit": limit},
    )
    return [_stored_list(row) for row in cur.fetchall()]


def definition(cur: psycopg2.extensions.cursor, name: str) -> ListDefinition:
    """One list's definition (name, kind, action, version): `get` without counting the items, which reads the
    whole list (about 150 ms for 1,000,000 items). Raises ListNotFound."""
    return _definition(cur, name, "")


def lock(cur: psycopg2.extensions.cursor, name: str) -> ListDefinition:
    """Lock the list's row until the caller's database transaction ends (every writer of the list takes it
    first), and return its definition. Raises ListNotFound."""
    return _definition(cur, name, " FOR UPDATE")


def _definition(cur: psycopg2.extensions.cursor, name: str, locking: str) -> ListDefinition:
    cur.execute(f"SELECT name, kind, action, version FROM lists WHERE name = %s{locking}", (name,))  # noqa: S608
    row = cur.fetchone()
    if row is None:
        raise ListNotFound(name)
    return ListDefinition(*row)


def create(
    cur: psycopg2.extensions.cursor,
    name: str,
    kind: str,
    action: str | None,
    description: str | None,
    actor: str,
) -> tuple[StoredList, bool]:
    """Create a list at version 1, audited ('create'); (the list, True). The same definition already stored is a
    retry: (the stored list, False), nothing written. Raises ListExists when the name holds another definition.
    Arguments are validated (txguard.lists)."""
    cur.execute(
        """WITH created AS (
               INSERT INTO lists (name, kind, action, description, created_by, updated_by)
               VALUES (%(name)s, %(kind)s, %(action)s, %(description)s, %(actor)s, %(actor)s)
               ON CONFLICT (name) DO NOTHING
               RETURNING name, kind, action, description
           )
           INSERT INTO list_changes (list_name, version, operation, kind, action, description, actor)
           SELECT name, 1, 'create', kind, action, description, %(actor)s FROM created
           RETURNING change_id""",
        {"name": name, "kind": kind, "action": action, "description": description, "actor": actor},
    )
    created = cur.fetchone() is not None
    stored = get(cur, name)
    if not created:
        differences = [
            (field, mine, theirs)
            for field, mine, theirs in (
                ("kind", kind, stored.kind),
                ("action", action, stored.action),
                ("description", description, stored.description),
            )
            if mine != theirs
        ]
        if differences:
            raise ListExists(name, differences)
    return stored, created


_UNSET: Any = object()


def redefine(
    cur: psycopg2.extensions.cursor,
    name: str,
    actor: str,
    action: str | None = _UNSET,
    description: str | None = _UNSET,
) -> tuple[StoredList, bool]:
    """Change a list's action and/or description (a list's kind never changes: its values are of that kind); a
    new version, audited ('update'), when either differs: (the list, True); else (the list, False), nothing
    written. Raises ListNotFound."""
    current = get_locked(cur, name)
    new_action = current.action if action is _UNSET else action
    new_description = current.description if description is _UNSET else description
    if (new_action, new_description) == (current.action, current.description):
        return current, False
    version = current.version + 1
    cur.execute(
        """UPDATE lists SET action = %(action)s, description = %(description)s, version = %(version)s,
                  updated_at = clock_timestamp(), updated_by = %(actor)s
           WHERE name = %(name)s""",
        {"name": name, "action": new_action, "description": new_description, "version": version, "actor": actor},
    )
    cur.execute(
        """INSERT INTO list_changes (list_name, version, operation, kind, action, description, actor)
           VALUES (%s, %s, 'update', %s, %s, %s, %s)""",
        (name, version, current.kind, new_action, new_description, actor),
    )
    return get(cur, name), True


def get_locked(cur: psycopg2.extensions.cursor, name: str) -> StoredList:
    """`get` after `lock`. Raises ListNotFound."""
    lock(cur, name)
    return get(cur, name)


# Items from a source (an unnest of arrays, or the staged temporary table) merged into the list in one statement:
# each item is classified against the list once (new: add; present with another expiry or note: change; present
# as given: left alone), then the adds are inserted, the changes written and both audited with the new version.
# Plain INSERT rather than INSERT ... ON CONFLICT, which costs twice as much per row: no other writer can add the
# same value meanwhile, since every writer of the list holds its row's lock (`lock`). Each item is looked up by the
# primary key (LATERAL ... LIMIT 1, as in MEMBERSHIPS_SQL): a hash join would read the whole list for every chunk
# of an import, and an import's chunks would cost more and more as the list grows.
#
# A changed item is updated in place, found by the ctid the classification read (a TID scan: no second probe of
# the key); `added_at` and `added_by` stay as they were. list_items keeps a fifth of each heap page free (migration
# 0021), so the new version goes on the old one's page as a HOT update, without a new entry in the primary key.
# That entry was most of a change's cost: with full heap pages (before 0021) an UPDATE, or a DELETE and an INSERT
# (which had been a tenth cheaper), wrote one into a leaf that already held the key, and the unique check and the
# index's bottom-up deletion then visited the heap for the old version; the merge of a 20,000-item chunk, half
# new and half changed, into a 1,000,000-item list took about 40% more time that way (EXPLAIN ANALYZE: 8 µs per
# changed item against 3 µs; README "Tests and benchmarks"). The list's lock keeps the ctids valid: no other
# writer touches the list's rows meanwhile. Readers see the old version until the transaction commits, then the
# new one. The TID scan over the array (rather than a join on ctid) keeps the plan one lookup per changed item,
# whatever the estimates: a hash join could scan the whole list.
_LOOKED_UP = """
        FROM {source}
        LEFT JOIN LATERAL (
            SELECT i.value, i.expires_at, i.note, i.ctid AS row_id FROM list_items i
            WHERE i.list_name = %(name)s AND i.value = s.value LIMIT 1
        ) AS i ON true
        WHERE i.value IS NULL OR (i.expires_at, i.note) IS DISTINCT FROM (txguard_ms_to_ts(s.expires_at), s.note)"""
_CLASSIFIED = (
    """
        SELECT s.value, txguard_ms_to_ts(s.expires_at) AS expires_at, s.note,
               CASE WHEN i.value IS NULL THEN 'add' ELSE 'change' END AS operation, i.row_id,
               row_number() OVER () AS n"""
    + _LOOKED_UP
)
# An import's lookups on a second session (`import_items` with a `reader`): the staged chunk's items to add or
# change, each with the row id of the item it changes (none: an add), as COPY text for the writing session's
# _CLASSIFIED_STAGED table, where _PRECLASSIFIED reads them as _CLASSIFIED gives them.
_LOOK_UP_ELSEWHERE = "COPY (SELECT s.value, s.expires_at, s.note, i.row_id" + _LOOKED_UP + ") TO STDOUT"
_CLASSIFIED_STAGED = "list_items_classified"
_PRECLASSIFIED = f"""
        SELECT s.value, txguard_ms_to_ts(s.expires_at) AS expires_at, s.note,
               CASE WHEN s.row_id IS NULL THEN 'add' ELSE 'change' END AS operation, s.row_id,
               row_number() OVER () AS n
        FROM {_CLASSIFIED_STAGED} AS s"""  # noqa: S608 (constants)
# A list that held no item when its import began: every item of the import is new (each value comes once), so
# the source is inserted and audited as it is, without classifying it first.
_MERGE_NEW = """
    WITH added AS (
        INSERT INTO list_items (list_name, value, expires_at, note, added_by)
        SELECT %(name)s, s.value, txguard_ms_to_ts(s.expires_at), s.note, %(actor)s FROM {source}
    ), audited AS (
        INSERT INTO list_changes (list_name, version, operation, item_values, expiries, notes, actor)
        SELECT %(name)s, %(version)s, 'add', array_agg(value), array_agg(txguard_ms_to_ts(expires_at)),
               array_agg(note), %(actor)s
        FROM (SELECT s.*, row_number() OVER () AS n FROM {source}) AS numbered GROUP BY (n - 1) / %(chunk)s
    )
    SELECT count(*), 0, 0 FROM {source}
"""
_MERGE = """
    WITH classified AS MATERIALIZED ({classified}
    ), added AS (
        INSERT INTO list_items (list_name, value, expires_at, note, added_by)
        SELECT %(name)s, value, expires_at, note, %(actor)s FROM classified WHERE operation = 'add'
    ), changed AS (
        UPDATE list_items i SET expires_at = c.expires_at, note = c.note
        FROM classified c
        WHERE i.ctid = ANY (ARRAY(SELECT row_id FROM classified WHERE operation = 'change'))
          AND c.row_id = i.ctid AND c.operation = 'change'
        RETURNING i.list_name = %(name)s AND i.value = c.value AS as_looked_up
    ), audited AS (
        -- The three aggregates of a group see its rows in one order: the arrays stay parallel.
        INSERT INTO list_changes (list_name, version, operation, item_values, expiries, notes, actor)
        SELECT %(name)s, %(version)s, operation, array_agg(value), array_agg(expires_at), array_agg(note), %(actor)s
        FROM classified GROUP BY operation, (n - 1) / %(chunk)s
    )
    SELECT count(*) FILTER (WHERE operation = 'add'), count(*) FILTER (WHERE operation = 'change'),
           (SELECT count(*) FILTER (WHERE as_looked_up) FROM changed)
    FROM classified
"""
_FROM_ARRAYS = sql.SQL(
    "unnest(%(values)s::text[], %(expiries)s::bigint[], %(notes)s::text[]) AS s(value, expires_at, note)"
)
_STAGED = "list_items_staged"
_ASKED = "list_items_asked"  # the reader's staging table (import_items' `reader`)
_COPY_CHUNK = 20_000  # items per COPY: the progress bar moves, memory stays bounded, the first merge starts soon


def _merge(
    cur: psycopg2.extensions.cursor, name: str, source: sql.Composable, params: dict[str, Any], total: int, actor: str
) -> ItemsChanged:
    definition = lock(cur, name)
    added, changed = _merge_as(cur, name, definition.version + 1, source, params, actor)
    return _finish(cur, name, definition.version, actor, total, added, changed)


def _merge_as(
    cur: psycopg2.extensions.cursor,
    name: str,
    version: int,
    source: sql.Composable,
    params: dict[str, Any],
    actor: str,
    all_new: bool = False,
    classified: bool = False,
) -> tuple[int, int]:
    """Merge `source` into the list as `version` (the caller holds the list's lock); (added, changed). `all_new`:
    the source's values are known not to be in the list (no lookups). `classified`: the source is
    _CLASSIFIED_STAGED, looked up already (_LOOK_UP_ELSEWHERE). Raises ListItemsMoved when a changed item's row
    no longer holds it (nothing of the caller's transaction may then be committed)."""
    if all_new:
        statement = sql.SQL(_MERGE_NEW).format(source=source)
    else:
        looked_up = sql.SQL(_PRECLASSIFIED) if classified else sql.SQL(_CLASSIFIED).format(source=source)
        statement = sql.SQL(_MERGE).format(classified=looked_up)
    cur.execute(
        statement,
        {**params, "name": name, "version": version, "actor": actor, "chunk": AUDIT_CHUNK},
    )
    row = cur.fetchone()
    assert row is not None
    added, changed, as_looked_up = (int(n) for n in row)
    if not all_new and as_looked_up != changed:
        raise ListItemsMoved(name, changed - as_looked_up)
    return added, changed


def _finish(
    cur: psycopg2.extensions.cursor, name: str, stored: int, actor: str, total: int, added: int, changed: int
) -> ItemsChanged:
    """Write version stored + 1 when anything changed; what the write did."""
    if added + changed == 0:
        return ItemsChanged(stored, unchanged=total)
    _bump(cur, name, stored + 1, actor)
    return ItemsChanged(stored + 1, added, changed, total - added - changed)


def _bump(cur: psycopg2.extensions.cursor, name: str, version: int, actor: str) -> None:
    cur.execute(
        "UPDATE lists SET version = %s, updated_at = clock_timestamp(), updated_by = %s WHERE name = %s",
        (version, actor, name),
    )


def add_items(cur: psycopg2.extensions.cursor, name: str, items: Sequence[ListItem], actor: str) -> ItemsChanged:
    """Add validated items (txguard.lists.check_items: canonical values of the list's kind, each once) to a list:
    a new value is added, a value present with another expiry or note is changed, one present with the same is
    left as it is. One new version for the whole batch when anything changed, none otherwise; each change
    audited. Raises ListNotFound."""
    params = {
        "values": [item.value for item in items],
        "expiries": [item.expires_at_ms for item in items],
        "notes": [item.note for item in items],
    }
    return _merge(cur, name, _FROM_ARRAYS, params, len(items), actor)


def import_items(
    cur: psycopg2.extensions.cursor,
    name: str,
    items: Iterable[ListItem],
    actor: str,
    on_copied: Callable[[int], object] | None = None,
    reader: psycopg2.extensions.connection | None = None,
    on_reader_lost: Callable[[psycopg2.Error], object] | None = None,
) -> ItemsChanged:
    """`add_items` for any number of items, one version and its audit: each chunk of _COPY_CHUNK items is COPYed
    into a temporary table and merged by the same set-based statement, on a second thread, while this one reads
    the next chunk from `items` (which may validate as it goes: reading and the database then work at once). The
    caller's database transaction holds every chunk: roll it back to store nothing. Items must be validated and
    each value given once; `on_copied` is told how many more items were merged after each chunk. Sets `jit` off
    and `work_mem` to 32MB for the rest of the caller's database transaction.

    `reader`: another connection to the same database, idle (no transaction open), that looks each chunk's items
    up in the stored list (about half of the database's work of an import into a stored list) while `cur` writes
    the chunk before: the two sessions run on two CPUs. Its work runs in a transaction of its own, rolled back at
    the end (its autocommit mode is put back); it writes nothing. When the reader's session fails (it ended, or a
    transaction-mode pooler gave it no server connection within its wait timeout, the writer holding the last
    one), `cur` looks the rest of the chunks up itself and `on_reader_lost` is told why, once: the second session only
    speeds the import up.

    Raises ListNotFound; ListItemsMoved (see _merge_as); ValueError when `reader` is connected to another
    database or has a transaction open."""
    stored = lock(cur, name).version  # before any upload: a concurrent writer waits here
    cur.execute("SELECT NOT EXISTS (SELECT 1 FROM list_items WHERE list_name = %s), current_database()", (name,))
    row = cur.fetchone()
    assert row is not None
    all_new = bool(row[0])  # a first import: nothing to look up
    # A chunk's merge into a stored list is costed above jit_above_cost (its 50,000 lookups), and compiling it took
    # 40-100 ms a chunk, for a statement of index probes and writes that compiled expressions do not speed up.
    # The audit's grouping sorts the chunk: with the default 4MB it spilled to disk.
    cur.execute("SELECT set_config('jit', 'off', true), set_config('work_mem', '32MB', true)")
    cur.execute(f"CREATE TEMPORARY TABLE {_STAGED} (value text, expires_at bigint, note text) ON COMMIT DROP")
    lookups = None if all_new or reader is None else _Lookups(reader, name, database=row[1])
    if lookups is not None:
        cur.execute(
            f"""CREATE TEMPORARY TABLE {_CLASSIFIED_STAGED} (value text, expires_at bigint, note text, row_id tid)
                ON COMMIT DROP"""
        )
    totals = [0, 0, 0]  # items, added, changed
    reader_lost: list[psycopg2.Error] = []  # once the reader fails, `cur` looks every chunk up

    def merge(lines: list[str], looked_up: Future[str] | None) -> None:
        text = None
        if looked_up is not None:
            try:
                text = looked_up.result()  # sorted by the reader
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:  # a lost session, a closed one
                if not reader_lost and on_reader_lost is not None:
                    on_reader_lost(exc)
                reader_lost.append(exc)
        if text is None:
            # In the order of the primary key (a line is the value, then a tab: lines sort as their values do
            # under byte order), consecutive lookups and insertions touch neighbouring index and heap pages.
            lines.sort()
            staged, text = _STAGED, "".join(lines)
        else:
            staged = _CLASSIFIED_STAGED
        cur.copy_expert(f"COPY {staged} FROM STDIN", io.StringIO(text))
        added, changed = _merge_as(
            cur, name, stored + 1, sql.SQL(f"{_STAGED} AS s"), {}, actor, all_new, classified=staged != _STAGED
        )
        cur.execute(f"TRUNCATE {staged}")
        totals[0] += len(lines)
        totals[1] += added
        totals[2] += changed
        if on_copied is not None:
            on_copied(len(lines))

    # A connection serves one statement at a time, and psycopg2 lets go of the GIL while it waits for the server:
    # reading the next chunk overlaps the database's work on this one. Without a reader, one chunk is in flight;
    # with one, two: the reader looks up chunk k + 1 while `cur` writes chunk k.
    in_flight = 1 if lookups is None else 2
    try:
        with (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="list-import") as writer,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="list-lookups") as looker,
        ):
            pending: deque[Future[None]] = deque()

            def submit(lines: list[str]) -> None:
                while len(pending) >= in_flight:
                    pending.popleft().result()
                looked_up = None if lookups is None or reader_lost else looker.submit(lookups.classified, lines)
                pending.append(writer.submit(merge, lines, looked_up))

            chunk: list[str] = []
            for item in items:
                chunk.append(_copy_line(item))
                if len(chunk) == _COPY_CHUNK:
                    submit(chunk)
                    chunk = []
            if chunk:
                submit(chunk)
            while pending:
                pending.popleft().result()
    finally:
        if lookups is not None:
            lookups.close()
    cur.execute(f"DROP TABLE {_STAGED}")
    if lookups is not None:
        cur.execute(f"DROP TABLE {_CLASSIFIED_STAGED}")
    return _finish(cur, name, stored, actor, *totals)


class ListItemsMoved(RuntimeError):
    """A changed item's row no longer held the item when an import wrote the change: something changed the list
    without its lock, or rewrote list_items, between the lookup and the write. Nothing may be committed."""

    def __init__(self, name: str, count: int) -> None:
        super().__init__(f"list {name}: {count} item(s) moved while the import wrote them; try again")


class _Lookups:
    """An import's lookups on a session of their own (import_items' `reader`): each chunk's lines COPYed into a
    temporary table there and classified against the stored list (_LOOK_UP_ELSEWHERE). The writing session holds
    the list's lock before the first lookup and until it commits, and every writer of a list takes that lock, so
    what the reader sees of the list (committed rows) is what the writer changes: an import's values are each
    given once, so no chunk looks up a value an earlier chunk of the same import wrote. Row ids stay valid: the
    writing session holds a lock on list_items (its first read) that VACUUM FULL and CLUSTER wait for."""

    def __init__(self, reader: psycopg2.extensions.connection, name: str, database: str) -> None:
        if reader.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
            raise ValueError("the reader must be idle: its transaction would be rolled back with the lookups'")
        self._reader = reader
        self._autocommit = reader.autocommit  # put back by close
        reader.autocommit = False  # the staging table lives as long as the lookups' transaction
        self._cur = reader.cursor()
        self._cur.execute("SELECT current_database(), set_config('jit', 'off', true)")
        row = self._cur.fetchone()
        if row is None or row[0] != database:
            self.close()
            raise ValueError(f"the reader is connected to {row and row[0]!r}, not to {database!r}")
        self._cur.execute(f"CREATE TEMPORARY TABLE {_ASKED} (value text, expires_at bigint, note text) ON COMMIT DROP")
        self._statement = self._cur.mogrify(
            sql.SQL(_LOOK_UP_ELSEWHERE).format(source=sql.SQL(f"{_ASKED} AS s")), {"name": name}
        ).decode()

    def classified(self, lines: list[str]) -> str:
        """The chunk's lines to add or change, as COPY text of (value, expires_at, note, row_id), sorted."""
        lines.sort()  # as `merge` sorts a chunk it looks up itself
        self._cur.copy_expert(f"COPY {_ASKED} FROM STDIN", io.StringIO("".join(lines)))
        out = io.StringIO()
        self._cur.copy_expert(self._statement, out)
        self._cur.execute(f"TRUNCATE {_ASKED}")
        return out.getvalue()

    def close(self) -> None:
        """End the reader's transaction (it wrote nothing but its temporary table) and its cursor."""
        self._cur.close()
        if not self._reader.closed:  # a session that ended has no transaction left to end
            self._reader.rollback()
            self._reader.autocommit = self._autocommit


def export_items(cur: psycopg2.extensions.cursor, name: str, out: IO[str]) -> None:
    """Write a list's items to `out` as CSV with a header, value, expires_at (RFC 3339, UTC, ms; empty for none),
    note: the columns `txguard lists import` reads. Expired items are written too."""
    cur.copy_expert(
        sql.SQL(
            """COPY (SELECT value,
                         to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS expires_at, note
                  FROM list_items WHERE list_name = {} ORDER BY value) TO STDOUT WITH (FORMAT csv, HEADER)"""
        ).format(sql.Literal(name)),
        out,
    )


def _copy_escape(text: str) -> str:
    # COPY's text format: backslash, tab and line breaks escaped (a note is free text; values never hold them).
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


_NEEDS_ESCAPE = re.compile(r"[\\\t\n\r]")


def _copy_line(item: ListItem) -> str:
    value, expires_at_ms, note = item
    expires = "\\N" if expires_at_ms is None else str(expires_at_ms)
    if _NEEDS_ESCAPE.search(value) or (note is not None and _NEEDS_ESCAPE.search(note)):
        return _copy_escape(value) + "\t" + expires + "\t" + ("\\N" if note is None else _copy_escape(note)) + "\n"
    return value + "\t" + expires + "\t" + ("\\N" if note is None else note) + "\n"  # most items: nothing to escape


def remove_items(cur: psycopg2.extensions.cursor, name: str, values: Sequence[str], actor: str) -> ItemsChanged:
    """Remove values (canonical text) from a list: each one present is deleted and audited ('remove', with the
    expiry and note it had); one new version when any was; values not present change nothing (`unchanged`).
    Raises ListNotFound."""
    definition = lock(cur, name)
    version = definition.version + 1
    cur.execute(
        """WITH removed AS (
               DELETE FROM list_items WHERE list_name = %(name)s AND value = ANY(%(values)s::text[])
               RETURNING value, expires_at, note
           ), numbered AS (
               SELECT value, expires_at, note, row_number() OVER (ORDER BY value) AS n FROM removed
           ), audited AS (
               INSERT INTO list_changes (list_name, version, operation, item_values, expiries, notes, actor)
               SELECT %(name)s, %(version)s, 'remove', array_agg(value ORDER BY n), array_agg(expires_at ORDER BY n),
                      array_agg(note ORDER BY n), %(actor)s
               FROM numbered GROUP BY (n - 1) / %(chunk)s
           )
           SELECT count(*) FROM numbered""",
        {"name": name, "values": list(values), "version": version, "actor": actor, "chunk": AUDIT_CHUNK},
    )
    row = cur.fetchone()
    removed = int(row[0]) if row else 0
    if not removed:
        return ItemsChanged(definition.version, unchanged=len(values))
    _bump(cur, name, version, actor)
    return ItemsChanged(version, removed=removed, unchanged=len(values) - removed)


def items(
    cur: psycopg2.extensions.cursor, name: str, after_value: str | None, value: str | None, limit: int
) -> list[StoredItem]:
    """A list's current items (expired ones included, `active` False) in order of value, after `after_value`, at
    most `limit`; only `value` when given. Raises ListNotFound when there is no such list."""
    cur.execute(
        """SELECT i.value, txguard_ts_to_ms(i.expires_at), i.note, txguard_ts_to_ms(i.added_at), i.added_by,
                  i.expires_at IS NULL OR i.expires_at > statement_timestamp()
           FROM list_items i
           WHERE i.list_name = %(name)s
             AND (%(after)s::text IS NULL OR i.value > %(after)s::text)
             AND (%(value)s::text IS NULL OR i.value = %(value)s::text)
           ORDER BY i.value LIMIT %(limit)s""",
        {"name": name, "after": after_value, "value": value, "limit": limit},
    )
    rows = [StoredItem(*row) for row in cur.fetchall()]
    if not rows:
        get(cur, name)  # an empty page of a list that exists, or ListNotFound
    return rows


def changes(
    cur: psycopg2.extensions.cursor, name: str, after_change_id: int | None, value: str | None, limit: int
) -> list[ListChange]:
    """A list's audit in order of change, after `after_change_id`, at most `limit`; only the changes of item
    `value` when given (each with that item only). Raises ListNotFound when there is no such list."""
    cur.execute(
        f"""SELECT {_CHANGE_COLUMNS} FROM list_changes
            WHERE list_name = %(name)s AND change_id > %(after)s
              AND (%(value)s::text IS NULL OR %(value)s::text = ANY(item_values))
            ORDER BY change_id LIMIT %(limit)s""",  # noqa: S608
        {"name": name, "after": after_change_id or 0, "value": value, "limit": limit},
    )
    rows = [ListChange.from_row(row).only(value) for row in cur.fetchall()]
    if not rows:
        get(cur, name)
    return rows
