"""What the lists function does, independent of HTTP: create and change lists, add and remove items (validated
against the list's kind by txguard.lists), read lists, items and their audit. Each call is one database
transaction (db.run_in_transaction: a database failure is DatabaseUnavailable, a retryable 503).

Apart from service.py so that the lists function loads neither the detector nor the models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from txguard import lists
from txguard.db import run_in_transaction
from txguard.observability import logger, metrics, tracer
from txguard.storage import lists as list_storage


@tracer.capture_method(capture_response=False, capture_error=False)
def create_list(
    name: str, kind: str, action: str | None, description: str | None, actor: str
) -> tuple[list_storage.StoredList, bool]:
    """Create a list (validated by txguard.lists); (the list, True), or (the stored list, False) when the same
    definition is stored (a retry). Raises ListExists, DatabaseUnavailable."""
    stored, created = run_in_transaction(lambda cur: list_storage.create(cur, name, kind, action, description, actor))
    if created:
        logger.info("list created", extra={"list": name, "kind": kind, "action": action, "actor": actor})
    return stored, created


@tracer.capture_method(capture_response=False, capture_error=False)
def redefine_list(name: str, changes: dict[str, Any], actor: str) -> list_storage.StoredList:
    """Change a list's `action` and/or `description` (the keys of `changes`, validated). A new version when
    either differs. Raises ListNotFound, DatabaseUnavailable."""
    stored, changed = run_in_transaction(lambda cur: list_storage.redefine(cur, name, actor, **changes))
    if changed:
        logger.info("list redefined", extra={"list": name, "version": stored.version, "actor": actor})
    return stored


def stored_list(name: str) -> list_storage.StoredList:
    """One list. Raises ListNotFound, DatabaseUnavailable."""
    return run_in_transaction(lambda cur: list_storage.get(cur, name))


@tracer.capture_method(capture_response=False, capture_error=False)
def add_list_items(name: str, raw_items: Sequence[Any], actor: str) -> list_storage.ItemsChanged:
    """Validate decoded items against the list's kind (txguard.lists.check_items) and add them all, or none.
    Raises ListNotFound, InvalidList (nothing stored), DatabaseUnavailable."""

    def work(cur: Any) -> list_storage.ItemsChanged:
        kind = list_storage.lock(cur, name).kind
        return list_storage.add_items(cur, name, lists.check_items(kind, raw_items), actor)

    result = run_in_transaction(work)
    metrics.add_metric(name="ListItemsChanged", unit=MetricUnit.Count, value=result.added + result.changed)
    logger.info("list items added", extra={"list": name, **result.as_json(), "actor": actor})
    return result


@tracer.capture_method(capture_response=False, capture_error=False)
def remove_list_items(name: str, raw_values: Sequence[Any], actor: str) -> list_storage.ItemsChanged:
    """Validate values against the list's kind and remove those present, all in one version. Raises
    ListNotFound, InvalidList (nothing removed), DatabaseUnavailable."""

    def work(cur: Any) -> list_storage.ItemsChanged:
        kind = list_storage.lock(cur, name).kind
        return list_storage.remove_items(cur, name, lists.check_values(kind, raw_values), actor)

    result = run_in_transaction(work)
    metrics.add_metric(name="ListItemsChanged", unit=MetricUnit.Count, value=result.removed)
    logger.info("list items removed", extra={"list": name, **result.as_json(), "actor": actor})
    return result


@dataclass(frozen=True)
class ListPage:
    items: list[Any]  # StoredList, StoredItem or ListChange
    next_cursor: str | None


def list_page(limit: int, cursor: str | None) -> ListPage:
    """A page of the lists in order of name: at most `limit`, after the cursor's list. Raises InvalidListCursor,
    DatabaseUnavailable."""
    after = list_storage.decode_cursor(cursor, "l") if cursor else None
    rows = run_in_transaction(lambda cur: list_storage.all_lists(cur, after, limit + 1))
    if len(rows) <= limit:
        return ListPage(rows, None)
    return ListPage(rows[:limit], list_storage.encode_cursor("l", rows[limit - 1].name))


def list_item_page(name: str, raw_value: Any, limit: int, cursor: str | None) -> ListPage:
    """A page of a list's items in order of value (only `raw_value`'s item when given, in the list kind's
    canonical form). Raises ListNotFound, InvalidList, InvalidListCursor, DatabaseUnavailable."""
    after = list_storage.decode_item_cursor(cursor) if cursor else None
    rows = _read(name, raw_value, lambda cur, value: list_storage.items(cur, name, after, value, limit + 1))
    if len(rows) <= limit:
        return ListPage(rows, None)
    return ListPage(rows[:limit], list_storage.encode_cursor("i", rows[limit - 1].value))


def list_change_page(name: str, raw_value: Any, limit: int, cursor: str | None) -> ListPage:
    """A page of a list's audit in order of change (only `raw_value`'s changes when given). Raises ListNotFound,
    InvalidList, InvalidListCursor, DatabaseUnavailable."""
    after = list_storage.decode_change_cursor(cursor) if cursor else None
    rows = _read(name, raw_value, lambda cur, value: list_storage.changes(cur, name, after, value, limit + 1))
    if len(rows) <= limit:
        return ListPage(rows, None)
    return ListPage(rows[:limit], list_storage.encode_cursor("c", rows[limit - 1].change_id))


def _read(name: str, raw_value: Any, read: Callable[[Any, str | None], list[Any]]) -> list[Any]:
    """`read(cur, value)` in one database transaction, `raw_value` first read as a value of the list's kind."""

    def work(cur: Any) -> list[Any]:
        value = None
        if raw_value is not None:
            value = lists.lookup_value(list_storage.definition(cur, name).kind, raw_value)
        return read(cur, value)

    return run_in_transaction(work)
