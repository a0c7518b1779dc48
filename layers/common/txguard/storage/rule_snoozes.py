"""The `rule_snoozes` table (migration 0019): a rule snoozed for one entity until a time, and every change to it.

One row per (rule, kind, value) holds the snooze in force or expired; snoozing again replaces it and lifting it
deletes it. `rule_snooze_changes` records each change (snoozed, changed, lifted: who, when, what). Ingest reads the
snoozes of a batch's entities once, with the list items its values are in (`in_force_with_list_items`, or its json
form inside ingest's lock statement), through the (kind, value) index.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import psycopg2.extensions

from txguard import literals
from txguard.errors import NotFound
from txguard.lists import InvalidListCursor
from txguard.storage.lists import MEMBERSHIPS_SQL, decode_cursor, encode_cursor, membership_arguments

_COLUMNS = "rule_id, kind, value, until, note, created_by, created_at"


@dataclass(frozen=True)
class Snooze:
    """Rule `rule_id` does not fire for transactions whose `kind` value (attributes.LIST_KINDS) is `value` while
    `until` is ahead; `note` and `created_by` say why and who, `created_at` when."""

    rule_id: str
    kind: str
    value: str
    until: datetime
    note: str | None
    created_by: str
    created_at: datetime

    def describe(self) -> str:
        """The snooze in words, as a decision's `snoozed` reason gives it."""
        text = f"snoozed for {self.kind} {self.value} until {self.until.isoformat()} by {self.created_by}"
        return f"{text}: {self.note}" if self.note else text


@dataclass(frozen=True)
class SnoozeChange:
    """One recorded change: `change` snoozed, changed or lifted, the snooze as it was set (or lifted), who, when."""

    change_id: int
    change: str
    rule_id: str
    kind: str
    value: str
    until: datetime
    note: str | None
    changed_by: str
    changed_at: datetime


class SnoozeNotFound(NotFound):
    code = "snooze_not_found"

    def __init__(self, rule_id: str, kind: str, value: str) -> None:
        super().__init__(f"rule {rule_id} is not snoozed for {kind} {value}")


# A snooze's row, or (rule_id NULL) a list item found (storage.lists.MEMBERSHIPS_SQL), with its expiry last.
_IN_FORCE_WITH_ITEMS = f"""SELECT s.rule_id, s.kind, s.value, s.until, s.note, s.created_by, s.created_at,
                  NULL::bigint AS expires_ms
           FROM unnest(%s::text[], %s::text[]) AS e(kind, value)
           JOIN rule_snoozes s ON s.kind = e.kind AND s.value = e.value
           WHERE s.until > clock_timestamp()
           UNION ALL
           SELECT NULL, m.list_name, m.value, NULL, NULL, NULL, NULL, m.expires_ms FROM ({MEMBERSHIPS_SQL}) AS m"""  # noqa: S608 (constants)

SnoozesAndItems = tuple[list[Snooze], dict[str, dict[str, int | None]]]


def in_force_with_list_items(
    cur: psycopg2.extensions.cursor,
    entities: Mapping[str, Collection[str]],
    wanted: Mapping[str, Collection[str]],
) -> SnoozesAndItems:
    """The snoozes in force now (until ahead of the database's clock) of `entities` (kind -> values: an index
    probe per (kind, value)), and in the same statement (one round trip, none when nothing is asked)
    storage.lists.current_items of `wanted` (list name -> values): the snoozes, and per list asked its current
    items among the values asked, each with its expiry (epoch ms; None: never)."""
    arguments = _arguments(entities, wanted)
    if arguments is None:
        return [], {name: {} for name in wanted}
    cur.execute(_IN_FORCE_WITH_ITEMS, arguments)
    return _snoozes_and_items(cur.fetchall(), wanted)


def in_force_with_list_items_as_json(
    cur: psycopg2.extensions.cursor,
    entities: Mapping[str, Collection[str]],
    wanted: Mapping[str, Collection[str]],
) -> str | None:
    """in_force_with_list_items as an SQL expression of one json value (its rows as objects), for another
    statement to read in the same round trip (account_stats.lock_accounts' `also`; snoozes_and_items_from_json
    reads the value back); None when nothing is asked."""
    arguments = _arguments(entities, wanted)
    if arguments is None:
        return None
    text: bytes = cur.mogrify(f"(SELECT json_agg(r) FROM ({_IN_FORCE_WITH_ITEMS}) AS r)", arguments)  # noqa: S608
    return text.decode()


def snoozes_and_items_from_json(
    value: list[dict[str, Any]] | None, wanted: Mapping[str, Collection[str]]
) -> SnoozesAndItems:
    """What in_force_with_list_items_as_json's value says (json_agg's rows, None for no row), as
    in_force_with_list_items gives it."""
    rows = [
        (
            r["rule_id"],
            r["kind"],
            r["value"],
            None if r["until"] is None else datetime.fromisoformat(r["until"]),
            r["note"],
            r["created_by"],
            None if r["created_at"] is None else datetime.fromisoformat(r["created_at"]),
            r["expires_ms"],
        )
        for r in value or ()
    ]
    return _snoozes_and_items(rows, wanted)


def _arguments(
    entities: Mapping[str, Collection[str]], wanted: Mapping[str, Collection[str]]
) -> tuple[list[str], list[str], list[str], list[str]] | None:
    kinds = [kind for kind, values in entities.items() for _ in values]
    values = [value for items in entities.values() for value in items]
    names, asked = membership_arguments(wanted)
    return (kinds, values, names, asked) if values or names else None


def _snoozes_and_items(rows: Iterable[Sequence[Any]], wanted: Mapping[str, Collection[str]]) -> SnoozesAndItems:
    items: dict[str, dict[str, int | None]] = {name: {} for name in wanted}
    snoozes = []
    for rule_id, kind, value, until, note, created_by, created_at, expires_ms in rows:
        if rule_id is None:
            items[kind][value] = expires_ms  # kind holds the list's name
        else:
            snoozes.append(Snooze(rule_id, kind, value, until, note, created_by, created_at))
    return snoozes, items


def snooze(
    cur: psycopg2.extensions.cursor,
    rule_id: str,
    kind: str,
    value: str,
    until: datetime,
    note: str | None,
    by: str,
) -> tuple[Snooze, Literal["stored", "changed", "unchanged"]]:
    """Snooze the rule for the entity until `until`, replacing any snooze of the same rule and entity. The same
    snooze sent again (same until and note) changes nothing and is answered `unchanged`; otherwise the change is
    recorded. Validation is the caller's (snoozes.SnoozeIn)."""
    cur.execute(
        f"SELECT {_COLUMNS} FROM rule_snoozes WHERE rule_id = %s AND kind = %s AND value = %s FOR UPDATE",  # noqa: S608
        (rule_id, kind, value),
    )
    row = cur.fetchone()
    before = None if row is None else Snooze(*row)
    if before is not None and before.until == until and before.note == note:
        return before, "unchanged"
    cur.execute(
        f"""INSERT INTO rule_snoozes (rule_id, kind, value, until, note, created_by)
            VALUES (%s, %s, %s, %s, %s, %s)
            ON CONFLICT (rule_id, kind, value) DO UPDATE SET until = excluded.until, note = excluded.note,
                created_by = excluded.created_by, created_at = clock_timestamp()
            RETURNING {_COLUMNS}""",  # noqa: S608
        (rule_id, kind, value, until, note, by),
    )
    stored = Snooze(*cur.fetchone())
    _record(cur, "snoozed" if before is None else "changed", stored, by)
    return stored, "stored" if before is None else "changed"


def lift(cur: psycopg2.extensions.cursor, rule_id: str, kind: str, value: str, by: str) -> Snooze:
    """Lift the rule's snooze for the entity (recorded as `lifted` by `by`); the snooze as it was. Raises
    SnoozeNotFound."""
    cur.execute(
        f"DELETE FROM rule_snoozes WHERE rule_id = %s AND kind = %s AND value = %s RETURNING {_COLUMNS}",  # noqa: S608
        (rule_id, kind, value),
    )
    row = cur.fetchone()
    if row is None:
        raise SnoozeNotFound(rule_id, kind, value)
    lifted = Snooze(*row)
    _record(cur, "lifted", lifted, by)
    return lifted


# Where a page of a rule's snoozes continues: after this (until, kind, value), the order of of_rule.
SnoozeKey = tuple[datetime, str, str]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def of_rule(
    cur: psycopg2.extensions.cursor,
    rule_id: str,
    expired: bool = False,
    after: SnoozeKey | None = None,
    limit: int | None = None,
) -> list[Snooze]:
    """The rule's snoozes, soonest to end first (then by kind and value: one order, however many end together):
    those in force, and with `expired` those past their `until` too; after `after` (None: from the first), at
    most `limit` (None: all)."""
    after_until, after_kind, after_value = after or (None, None, None)
    cur.execute(
        f"""SELECT {_COLUMNS} FROM rule_snoozes
            WHERE rule_id = %(rule)s AND (%(expired)s OR until > clock_timestamp())
              AND (%(until)s::timestamptz IS NULL
                   OR (until, kind, value) > (%(until)s::timestamptz, %(kind)s::text, %(value)s::text))
            ORDER BY until, kind, value LIMIT %(limit)s""",  # noqa: S608
        {
            "rule": rule_id,
            "expired": expired,
            "until": after_until,
            "kind": after_kind,
            "value": after_value,
            "limit": limit,
        },
    )
    return [Snooze(*row) for row in cur.fetchall()]


def snooze_cursor(s: Snooze) -> str:
    """The opaque cursor of the page of_rule continues after `s` (storage.lists.encode_cursor, kind "s"): its
    until to the microsecond the database holds, its kind and value."""
    return encode_cursor("s", f"{(s.until - _EPOCH) // _MICROSECOND}:{s.kind}:{s.value}")


def snooze_key(cursor: str) -> SnoozeKey:
    """What snooze_cursor encoded: (until, kind, value). Raises InvalidListCursor for a cursor it did not issue."""
    parts = decode_cursor(cursor, "s").split(":", 2)  # a value may hold ':', an epoch or a kind never does
    try:
        until_text, kind, value = parts
        until = _EPOCH + literals.integer_from_text(until_text, 0, 10**17) * _MICROSECOND
    except ValueError:
        raise InvalidListCursor(cursor) from None
    if not kind or not value:
        raise InvalidListCursor(cursor)
    return until, kind, value


def changes(cur: psycopg2.extensions.cursor, rule_id: str, limit: int = 100) -> list[SnoozeChange]:
    """The rule's last `limit` snooze changes, oldest first."""
    cur.execute(
        """SELECT * FROM (SELECT change_id, change, rule_id, kind, value, until, note, changed_by, changed_at
                          FROM rule_snooze_changes WHERE rule_id = %s ORDER BY change_id DESC LIMIT %s) c
           ORDER BY change_id""",
        (rule_id, limit),
    )
    return [SnoozeChange(*row) for row in cur.fetchall()]


def _record(cur: psycopg2.extensions.cursor, change: str, s: Snooze, by: str) -> None:
    cur.execute(
        """INSERT INTO rule_snooze_changes (change, rule_id, kind, value, until, note, changed_by)
           VALUES (%s, %s, %s, %s, %s, %s, %s)""",
        (change, s.rule_id, s.kind, s.value, s.until, s.note, by),
    )
