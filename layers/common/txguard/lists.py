"""Lists: what a list and its items may be, checked in one place for every path (the API, `txguard lists ...`, the
console's CSV upload), and the vocabulary storage.lists speaks.

A list has a `name` (lower-case letters, digits and '_', from a letter, at most 63: as a rule id), a `kind` (a key
of attributes.LIST_KINDS: the transaction field its values match), an `action` (None: only rules read it;
`allow` or `block`: a match also decides by itself) and an optional `description` (1-500 characters).

An item has a `value` in the canonical text of attributes.list_value(kind, ...) ("fr" in a country list is "FR"),
an optional `expires_at` (epoch ms; in the forms of a transaction's timestamp, and in the future when it is sent)
and an optional `note` (1-200 characters). An item applies while it has no expiry or its expiry is later than now.

A batch of items is refused whole when any item is invalid: `check_items` returns every problem, by index, field,
value and reason, and stores nothing is the caller's part (it raises InvalidListItems before any write).
"""

from __future__ import annotations

import csv
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from txguard import attributes, literals
from txguard.errors import BadInput, Conflict, Malformed, NotFound, echo, shorten
from txguard.intake import instant_ms

LIST_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
_LIST_NAME = re.compile(LIST_NAME_PATTERN)
ACTIONS = ("allow", "block")
MAX_DESCRIPTION_LENGTH = 500
MAX_NOTE_LENGTH = 200
MAX_ITEM_BATCH = 10_000  # items one API request may add or remove; the CLI's import has no such limit
LATEST_EXPIRY_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
ITEM_FIELDS = ("value", "expires_at", "note")
# The actor of a change made without a named caller (the CLI names the operating-system user when it can).
UNKNOWN_ACTOR = "unknown"
MAX_ACTOR_LENGTH = 200


class ListDefinition(NamedTuple):
    """What the detector needs of a list: its `name`, `kind` (a key of attributes.LIST_KINDS), `action` (None,
    'allow' or 'block') and `version` (incremented by every change of the list or its items)."""

    name: str
    kind: str
    action: str | None
    version: int


class ListItem(NamedTuple):
    """A validated item: canonical `value`, `expires_at_ms` (epoch ms, None: never expires), `note`."""

    value: str
    expires_at_ms: int | None = None
    note: str | None = None


@dataclass(frozen=True)
class ListProblem:
    """Why an item (or the definition, `index` None) was refused."""

    index: int | None
    field: str | None
    value: Any
    reason: str

    def detail(self) -> dict[str, Any]:
        """The API's error detail {"index", "field", "value", "reason"}."""
        return {"index": self.index, "field": self.field, "value": echo(self.value), "reason": shorten(self.reason)}


class InvalidList(BadInput):
    """A list definition or a batch of items was refused: nothing was stored. `problems` name each by index (of
    the item in its batch, or the file's line for an import), field, value and reason."""

    def __init__(self, message: str, problems: Sequence[ListProblem]) -> None:
        super().__init__(message, [p.detail() for p in problems])
        self.problems = list(problems)


class InvalidListCursor(Malformed, ValueError):
    """A cursor GET /lists/{name}/items or /changes did not issue."""

    code = "invalid_cursor"

    def __init__(self, cursor: str) -> None:
        message = f"cursor {cursor[:100]!r} is not one this API returned"
        super().__init__(message, [{"index": None, "field": "cursor", "value": cursor[:200], "reason": message}])


class ListNotFound(NotFound):
    code = "list_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"there is no list {shorten(name)!r}")
        self.name = name


class ListExists(Conflict):
    """POST /lists for a name that holds a list defined otherwise (the same definition again is answered as
    it is: a retry)."""

    code = "list_exists"

    def __init__(self, name: str, differences: Sequence[str]) -> None:
        super().__init__(
            f"list {name!r} exists with another {', '.join(differences)}; "
            + (
                "a list's kind never changes: create the list under another name"
                if "kind" in differences
                else f"change it with PATCH /lists/{name} (txguard lists set)"
            ),
            [
                {"index": None, "field": field, "value": None, "reason": "differs from the stored list"}
                for field in differences
            ],
        )


def list_name(value: Any) -> str:
    """A list's name as given (lower-case: as a rule id). Raises ValueError."""
    if not isinstance(value, str) or not _LIST_NAME.match(value):
        raise ValueError("must be 1-63 lower-case letters, digits or '_', starting with a letter")
    return value


def list_kind(value: Any) -> str:
    """A key of attributes.LIST_KINDS. Raises ValueError."""
    if not isinstance(value, str) or value not in attributes.LIST_KINDS:
        raise ValueError(f"must be one of {', '.join(attributes.LIST_KINDS)}")
    return value


def list_action(value: Any) -> str | None:
    """None (rules read the list), 'allow' or 'block'. Raises ValueError."""
    if value is None or value in ACTIONS:
        return value  # type: ignore[no-any-return]
    raise ValueError("must be allow, block or null (only rules read the list)")


def description(value: Any) -> str | None:
    """None, or a text of 1-500 characters without control characters. Raises ValueError."""
    return None if value is None else literals.short_text(value, MAX_DESCRIPTION_LENGTH)


def note(value: Any) -> str | None:
    """None, or a text of 1-200 characters without control characters. Raises ValueError."""
    return None if value is None else literals.short_text(value, MAX_NOTE_LENGTH)


def expires_at_ms(value: Any, now_ms: int) -> int | None:
    """None (never expires), or epoch ms in a timestamp's forms (epoch ms, RFC 3339 with a zone), later than
    `now_ms` (epoch ms) and not after 9999-12-31. Raises ValueError."""
    if value is None:
        return None
    try:
        ms = instant_ms(value)
    except ValueError as exc:
        raise ValueError(str(exc).replace("timestamp", "expires_at")) from None
    if ms <= now_ms:
        raise ValueError("is not in the future: an item that has expired already would never apply")
    if ms > LATEST_EXPIRY_MS:
        raise ValueError("is later than 9999-12-31T23:59:59.999Z; omit it for an item that never expires")
    return ms


def actor(value: Any) -> str:
    """Who made a change, as the audit records it: a text of 1-200 characters (control characters refused).
    Raises ValueError."""
    return literals.short_text(value, MAX_ACTOR_LENGTH)


MISSING: Any = object()  # a field not given (None is a given null)


class ItemChecker:
    """Validates items of a list of one `kind` at `now_ms` (epoch ms), one at a time (`check`) or as a batch
    (`check_all`): the one check of an item, whether it came as a JSON object or a CSV row. An expiry's text is
    read once however many items carry it (an import of a million rows often has a handful of expiries)."""

    def __init__(self, kind: str, now_ms: int | None = None, position: str = "item") -> None:
        list_kind(kind)
        self.kind = kind
        self.position = position  # what an index counts, for the reason of a repeat: item, line
        self.now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        self._expiries: dict[Any, int | None] = {}
        self._seen: dict[str, tuple[int, ListItem]] = {}

    def check(
        self,
        index: int,
        value: Any,
        expires_at: Any = None,
        note_text: Any = None,
        unknown: Sequence[tuple[Any, Any]] = (),
    ) -> tuple[ListItem | None, list[ListProblem]]:
        """One item's fields (`value` MISSING when missing; `unknown`: (name, value) of fields an item does not
        have): (the item, []) or (None, its problems). A value repeated with the same expiry and note is the
        same item (returned as None, without problems); with another, a problem."""
        problems = [
            ListProblem(index, shorten(str(field)), raw, f"unknown field; an item has {', '.join(ITEM_FIELDS)}")
            for field, raw in unknown
        ]
        canonical = expiry = checked_note = None
        if value is MISSING:
            problems.append(ListProblem(index, "value", None, "is required"))
        else:
            try:
                canonical = attributes.list_value(self.kind, value)
            except ValueError as exc:
                problems.append(ListProblem(index, "value", value, str(exc)))
        if expires_at is not None:
            try:
                expiry = self._expiry(expires_at)
            except ValueError as exc:
                problems.append(ListProblem(index, "expires_at", expires_at, str(exc)))
        if note_text is not None:
            try:
                checked_note = note(note_text)
            except ValueError as exc:
                problems.append(ListProblem(index, "note", note_text, str(exc)))
        if problems or canonical is None:
            return None, problems
        item = ListItem(canonical, expiry, checked_note)
        first = self._seen.setdefault(canonical, (index, item))
        if first[0] == index:
            return item, []
        if first[1] == item:
            return None, []
        return None, [
            ListProblem(
                index, "value", canonical, f"repeats {self.position} {first[0]} with another expires_at or note"
            )
        ]

    def check_rows(
        self, rows: Iterable[tuple[int, Any, Any, Any]], problems: list[ListProblem], max_problems: int
    ) -> Iterator[ListItem]:
        """`check` of (index, value, expires_at, note) rows, yielding the items (each value once) and appending
        every problem to `problems`; stops after `max_problems`. The same checks as `check`, with the work of a
        row that has only a value done inline: an import checks a million of them."""
        value_check = attributes.list_value_check(self.kind)
        seen = self._seen
        new_item = tuple.__new__
        for index, value, expires_at, note_text in rows:
            if expires_at is None and note_text is None and value is not MISSING:
                try:
                    canonical = value_check(value)
                except ValueError:
                    pass  # `check` words the problem
                else:
                    item = new_item(ListItem, (canonical, None, None))  # NamedTuple's own __new__ is slower
                    first = seen.setdefault(canonical, (index, item))
                    if first[0] == index:
                        yield item
                        continue
                    if first[1] == item:
                        continue
            found, found_problems = self.check(index, value, expires_at, note_text)
            if found is not None:
                yield found
            problems.extend(found_problems)
            if len(problems) >= max_problems:
                return

    def _expiry(self, raw: Any) -> int | None:
        if not isinstance(raw, str | int):  # a JSON number with a fraction, an object, ...: never cached
            return expires_at_ms(raw, self.now_ms)
        key = (type(raw), raw)  # True == 1: the type keeps a boolean apart from an integer
        if key not in self._expiries:
            self._expiries[key] = expires_at_ms(raw, self.now_ms)
        return self._expiries[key]

    def check_object(self, index: int, item: Any) -> tuple[ListItem | None, list[ListProblem]]:
        """`check` of a decoded JSON item, or a CSV row as a dict of its non-empty cells."""
        if not isinstance(item, Mapping):
            return None, [ListProblem(index, None, item, "must be an object: {value, expires_at?, note?}")]
        return self.check(
            index,
            item.get("value", MISSING),
            item.get("expires_at"),
            item.get("note"),
            [(field, raw) for field, raw in item.items() if field not in ITEM_FIELDS],
        )


def check_item(kind: str, item: Any, index: int, now_ms: int) -> tuple[ListItem | None, list[ListProblem]]:
    """One decoded item (a JSON object, or a CSV row as a dict of text cells, empty cells omitted) of a list of
    `kind`, validated: (the item, []) or (None, its problems). Unknown fields are refused."""
    return ItemChecker(kind, now_ms).check_object(index, item)


def check_items(kind: str, items: Sequence[Any], now_ms: int | None = None) -> list[ListItem]:
    """A batch of decoded items of a list of `kind`, validated whole: the items in order, a value repeated with
    the same expiry and note kept once. Raises InvalidList naming every problem (a value repeated with another
    expiry or note is one) when any item is invalid."""
    checker = ItemChecker(kind, now_ms)
    problems: list[ListProblem] = []
    result: list[ListItem] = []
    for index, raw in enumerate(items):
        item, found = checker.check_object(index, raw)
        problems.extend(found)
        if item is not None:
            result.append(item)
    if problems:
        raise InvalidList(f"{len({p.index for p in problems})} of the items are invalid; nothing was stored", problems)
    return result


def check_values(kind: str, values: Sequence[Any]) -> list[str]:
    """Values to remove from a list of `kind`, in canonical text (repeats kept once). Raises InvalidList."""
    problems = []
    result: dict[str, None] = {}
    for index, value in enumerate(values):
        try:
            result[attributes.list_value(kind, value)] = None
        except ValueError as exc:
            problems.append(ListProblem(index, "value", value, str(exc)))
    if problems:
        raise InvalidList(f"{len(problems)} of the values are invalid; nothing was removed", problems)
    return list(result)


class BadCsvHeader(BadInput):
    """A CSV file of items whose first line is not a header of value[,expires_at][,note]."""

    def __init__(self, header: Sequence[str] | None) -> None:
        reason = (
            "the first line must be a header naming the columns: value[,expires_at][,note]"
            if header is None or "value" not in header
            else f"header {list(header)!r}: columns are value, expires_at and note, each once"
        )
        super().__init__(reason, [{"index": 1, "field": None, "value": echo(header), "reason": reason}])


def csv_rows(lines: Iterable[str], problems: list[ListProblem]) -> Iterator[tuple[int, Any, str | None, str | None]]:
    """The rows of CSV text of items (`txguard lists import`, the console's upload): a header naming `value` and
    optionally `expires_at` and `note`, in any order; then (line, value or MISSING, expires_at, note) per row, an
    empty cell None (as an omitted field), for ItemChecker.check_rows. A row of the wrong number of cells is
    appended to `problems` and skipped; blank lines are skipped. Raises BadCsvHeader."""
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None or "value" not in header or any(name not in ITEM_FIELDS for name in header):
        raise BadCsvHeader(header)
    if len(set(header)) != len(header):
        raise BadCsvHeader(header)
    width = len(header)
    at_value = header.index("value")
    at_expiry = header.index("expires_at") if "expires_at" in header else None
    at_note = header.index("note") if "note" in header else None
    for row in reader:
        if len(row) != width:
            if row:
                problems.append(
                    ListProblem(reader.line_num, None, None, f"the row has {len(row)} cells, the header {width}")
                )
            continue
        yield (
            reader.line_num,
            row[at_value] or MISSING,
            (row[at_expiry] or None) if at_expiry is not None else None,
            (row[at_note] or None) if at_note is not None else None,
        )
