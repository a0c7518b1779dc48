"""Lists: what a list and its items may be, checked in one place for every path (the API, `txguard lists ...`, the
console's CSV upload), and the vocabulary storage.lists speaks.

A list has a `name` (lower-case letters, digits and '_', from a letter, at most 63: as a rule id), a `kind` (a key
of attributes.LIST_KINDS: the transaction field its values match), an `action` (None: only rules read it;
`allow` or `block`: a match also decides by itself) and an optional `description` (1-500 characters).

An item has a `value` in the canonical text of attributes.list_value(kind, ...) ("fr" in a country list is "FR"),
an optional `expires_at` (epoch ms; in the forms of a transaction's timestamp; in the future when an item is sent on
its own, past ones taken from CSV files: ItemChecker's `past_expiries`) and an optional `note` (1-200
characters). An item applies while it has no expiry or its expiry is later than now.

A batch of items is refused whole when any item is invalid: `check_items` returns every problem, by index, field,
value and reason, and stores nothing is the caller's part (it raises InvalidListItems before any write).
"""

from __future__ import annotations

import csv
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from txguard import attributes, literals
from txguard.errors import NOT_CSV, BadInput, Conflict, Malformed, NotFound, echo, quoted, shorten
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
    """A cursor the paged reads of lists (GET /lists, /lists/{name}/items, /changes) or snoozes did not issue."""

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

    def __init__(self, name: str, differences: Sequence[tuple[str, Any, Any]]) -> None:
        """`differences`: (field, the value sent, the value stored) of each field that differs."""
        fields = [field for field, _, _ in differences]
        super().__init__(
            f"list {name!r} exists with another {', '.join(fields)}; "
            + (
                "a list's kind never changes: create the list under another name"
                if "kind" in fields
                else f"change it with PATCH /lists/{name} (txguard lists set)"
            ),
            [
                {"index": None, "field": field, "value": sent, "reason": f"list {name!r} has {field} {quoted(stored)}"}
                for field, sent, stored in differences
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


def expires_at_ms(value: Any, now_ms: int | None) -> int | None:
    """None (never expires), or epoch ms in a timestamp's forms (epoch ms, RFC 3339 with a zone), later than
    `now_ms` (epoch ms; None: any time, past ones included) and not after 9999-12-31. Raises ValueError."""
    if value is None:
        return None
    try:
        ms = instant_ms(value)
    except ValueError as exc:
        raise ValueError(str(exc).replace("timestamp", "expires_at")) from None
    if now_ms is not None and ms <= now_ms:
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
    read once however many items carry it (an import of a million rows often has a handful of expiries).

    `past_expiries`: an expiry already past is taken (the item is stored, or previewed, as expired: it never
    matches). CSV files take them, because `txguard lists export` writes the expired items it lists and an import of
    its file must read them back; an item sent on its own (the API, `lists add`) must expire in the future."""

    def __init__(
        self, kind: str, now_ms: int | None = None, position: str = "item", past_expiries: bool = False
    ) -> None:
        list_kind(kind)
        self.kind = kind
        self.position = position  # what an index counts, for the reason of a repeat: item, line
        self.now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        self._earliest_ms = None if past_expiries else self.now_ms
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
        valid row done inline: an import checks a million of them. A row with any problem goes through `check`,
        which words each one."""
        value_check = attributes.list_value_check(self.kind)
        expiry_of = self._expiry
        seen = self._seen
        new_item = tuple.__new__
        for index, value, expires_at, note_text in rows:
            if value is not MISSING:
                try:
                    canonical = value_check(value)
                    expiry = None if expires_at is None else expiry_of(expires_at)
                    checked_note = None if note_text is None else note(note_text)
                except ValueError:
                    pass  # `check` words the problem
                else:
                    item = new_item(ListItem, (canonical, expiry, checked_note))  # NamedTuple's __new__ is slower
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
            return expires_at_ms(raw, self._earliest_ms)
        key = (type(raw), raw)  # True == 1: the type keeps a boolean apart from an integer
        if key not in self._expiries:
            self._expiries[key] = expires_at_ms(raw, self._earliest_ms)
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


def lookup_value(kind: str, value: Any) -> str:
    """A value looked up in a list of `kind` (GET /lists/{name}/items?value=, /changes?value=, `txguard lists
    changes --value`), in canonical text. Raises InvalidList: the value can be no item of the list (a read: nothing
    was changed either way)."""
    try:
        return attributes.list_value(kind, value)
    except ValueError as exc:
        raise InvalidList(
            f"value is not a value of a {kind} list, so no item holds it", [ListProblem(None, "value", value, str(exc))]
        ) from None


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
    appended to `problems` and skipped; blank lines are skipped. Text that is not CSV as written (a quoted cell the
    text ends in, as in a file cut short, or text after a closing quote) is a problem of its line that ends the
    rows, rather than a cell holding the rest of the text. Raises BadCsvHeader."""
    reader = csv.reader(lines, strict=True)
    try:
        header = next(reader, None)
    except csv.Error:
        raise BadCsvHeader(None) from None
    if header is None or "value" not in header or any(name not in ITEM_FIELDS for name in header):
        raise BadCsvHeader(header)
    if len(set(header)) != len(header):
        raise BadCsvHeader(header)
    width = len(header)
    at_value = header.index("value")
    at_expiry = header.index("expires_at") if "expires_at" in header else None
    at_note = header.index("note") if "note" in header else None
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            problems.append(ListProblem(reader.line_num, None, None, f"{NOT_CSV}: {exc}"))
            return
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


# Candidate lists: `txguard backtest --lists FILE` re-judges stored history as if these lists stood instead of the
# stored ones, without writing anything. The file is {"lists": [entry, ...]}; an entry is a list's definition in
# the shape of POST /lists (name, kind, action, description), and either
# - "items": [...] (the shape of POST /lists/{name}/items' batch), or "items_csv": "FILE" (a CSV file as
#   `txguard lists import` reads and `txguard lists export` writes, relative to the JSON file): the list would
#   hold exactly these items;
# - neither: the list keeps its stored items (a stored list whose action or description would change);
# or {"name": ..., "removed": true}: the list would not exist.
# For a stored list, an omitted action or description keeps the stored one and a kind, when given, must be its own
# (a list's kind never changes); a new list needs its kind, and its action defaults to null.
CANDIDATE_FIELDS = ("name", "kind", "action", "description", "items", "items_csv", "removed")


@dataclass(frozen=True)
class CandidateLists:
    """Lists as a backtest sees them instead of the stored ones. `definitions`: the definition of each list the
    candidate names (None: removed); `items`: the items (by canonical value) of each list whose items it gives; a
    list it names without items keeps its stored items, one it does not name stays as stored. A candidate item
    applies while it has no expiry or its expiry is later than `now_ms` (epoch ms: when the file was read), as a
    stored item applies while its expiry is ahead of the decision's wall-clock time."""

    definitions: Mapping[str, ListDefinition | None]
    items: Mapping[str, Mapping[str, ListItem]]
    now_ms: int

    def over(self, stored: Mapping[str, ListDefinition]) -> dict[str, ListDefinition]:
        """The definitions by name with the candidate's in place of `stored` (removed lists left out)."""
        merged = {name: d for name, d in stored.items() if name not in self.definitions}
        merged.update({name: d for name, d in self.definitions.items() if d is not None})
        return dict(sorted(merged.items()))

    def holds(self, name: str) -> bool:
        """Whether the candidate decides what list `name` holds (its items given, or the list removed)."""
        return name in self.items or (name in self.definitions and self.definitions[name] is None)

    def members(self, name: str, values: Iterable[str]) -> frozenset[str]:
        """Those of `values` (canonical text) that are items in force of candidate list `name` (`holds(name)`)."""
        items = self.items.get(name, {})
        now_ms = self.now_ms
        return frozenset(
            v
            for v in values
            if (item := items.get(v)) is not None and (item.expires_at_ms is None or item.expires_at_ms > now_ms)
        )


def check_candidates(
    document: Any,
    stored: Mapping[str, ListDefinition],
    read_csv: Callable[[str, str], list[ListItem]],
    now_ms: int | None = None,
) -> CandidateLists:
    """A decoded candidate-lists document (the comment above CANDIDATE_FIELDS) validated against the `stored`
    definitions by the checks of every other path (list_name, list_kind, list_action, description, ItemChecker).
    `read_csv(path, kind)` reads an "items_csv" file's items (raising ValueError saying why not). Raises
    InvalidList naming every problem (index: the entry's, field: e.g. "items[3].value")."""
    if not isinstance(document, Mapping) or set(document) != {"lists"} or not isinstance(document["lists"], list):
        raise InvalidList(
            'a candidate lists file is an object {"lists": [...]}',
            [ListProblem(None, None, document, 'must be an object {"lists": [{name, kind, action, ...}, ...]}')],
        )
    problems: list[ListProblem] = []
    definitions: dict[str, ListDefinition | None] = {}
    items: dict[str, dict[str, ListItem]] = {}
    named: set[str] = set()
    for index, entry in enumerate(document["lists"]):
        name = entry.get("name") if isinstance(entry, Mapping) else None
        if isinstance(name, str):
            if name in named:
                problems.append(ListProblem(index, "name", name, "is named by another entry too"))
                continue
            named.add(name)
        problems.extend(_check_candidate(index, entry, stored, read_csv, now_ms, definitions, items))
    if not document["lists"]:
        problems.append(ListProblem(None, "lists", [], "is empty: name at least one list"))
    if problems:
        raise InvalidList(f"the candidate lists are refused ({len(problems)} problem(s)); nothing was read", problems)
    return CandidateLists(definitions, items, int(time.time() * 1000) if now_ms is None else now_ms)


def _check_candidate(
    index: int,
    entry: Any,
    stored: Mapping[str, ListDefinition],
    read_csv: Callable[[str, str], list[ListItem]],
    now_ms: int | None,
    definitions: dict[str, ListDefinition | None],
    items: dict[str, dict[str, ListItem]],
) -> list[ListProblem]:
    """One entry checked and, when valid, recorded in `definitions` and `items`; its problems."""
    if not isinstance(entry, Mapping):
        return [ListProblem(index, None, entry, "must be an object: {name, kind, action, description, items, ...}")]
    problems = [
        ListProblem(index, shorten(str(field)), raw, f"unknown field; an entry has {', '.join(CANDIDATE_FIELDS)}")
        for field, raw in entry.items()
        if field not in CANDIDATE_FIELDS
    ]
    try:
        name = list_name(entry.get("name"))
    except ValueError as exc:
        return [*problems, ListProblem(index, "name", entry.get("name"), str(exc))]
    current = stored.get(name)
    if "removed" in entry:
        if entry["removed"] is not True:
            problems.append(ListProblem(index, "removed", entry["removed"], "must be true (or omitted)"))
        others = sorted(set(entry) & set(CANDIDATE_FIELDS) - {"name", "removed"})
        if others:
            problems.append(ListProblem(index, others[0], entry[others[0]], "a removed list has only a name"))
        if current is None:
            problems.append(ListProblem(index, "name", name, "is not a stored list: there is nothing to remove"))
        if not problems:
            definitions[name] = None
        return problems
    kind = current.kind if current is not None else None
    if "kind" in entry or current is None:
        try:
            kind = list_kind(entry.get("kind"))
        except ValueError as exc:
            problems.append(ListProblem(index, "kind", entry.get("kind"), str(exc)))
        else:
            if current is not None and kind != current.kind:
                problems.append(
                    ListProblem(index, "kind", kind, f"list {name} holds {current.kind} values: a kind never changes")
                )
    action = current.action if current is not None else None
    if "action" in entry:
        try:
            action = list_action(entry["action"])
        except ValueError as exc:
            problems.append(ListProblem(index, "action", entry["action"], str(exc)))
    if "description" in entry:
        try:
            description(entry["description"])
        except ValueError as exc:
            problems.append(ListProblem(index, "description", entry["description"], str(exc)))
    if "items" in entry and "items_csv" in entry:
        problems.append(ListProblem(index, "items_csv", entry["items_csv"], "give items or items_csv, not both"))
    if kind is None:  # items cannot be checked without their kind
        return problems
    found: list[ListItem] | None = None
    if "items" in entry:
        raw = entry["items"]
        if not isinstance(raw, list):
            return [
                *problems,
                ListProblem(index, "items", raw, "must be an array of items {value, expires_at?, note?}"),
            ]
        checker = ItemChecker(kind, now_ms)
        found = []
        for at, raw_item in enumerate(raw):
            item, item_problems = checker.check_object(at, raw_item)
            problems.extend(
                ListProblem(index, f"items[{at}]" + (f".{p.field}" if p.field else ""), p.value, p.reason)
                for p in item_problems
            )
            if item is not None:
                found.append(item)
    elif "items_csv" in entry:
        path = entry["items_csv"]
        if not isinstance(path, str) or not path:
            return [*problems, ListProblem(index, "items_csv", path, "must be the path of a CSV file")]
        try:
            found = read_csv(path, kind)
        except ValueError as exc:
            problems.append(ListProblem(index, "items_csv", path, str(exc)))
    if problems:
        return problems
    definitions[name] = ListDefinition(name, kind, action, current.version if current is not None else 0)
    if found is not None or current is None:  # a new list given no items holds none
        items[name] = {item.value: item for item in found or ()}
    return []
