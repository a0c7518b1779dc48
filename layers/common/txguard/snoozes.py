"""Snoozing a rule for one entity: what a snooze request may be, and snoozing, listing and lifting through the
database (the API's /rules/{rule_id}/snoozes and `txguard rules snooze | snoozes | unsnooze` both call these).

A snooze names a rule of the newest rule set, an entity (a list kind of attributes.LIST_KINDS and a value in that
kind's canonical form: account 42, card tok_1, country FR), an end (`until`: epoch ms or RFC 3339, in the future,
at most MAX_SNOOZE_DAYS ahead), a note and who. While it is in force the rule does not fire for transactions of
that entity; the decision records a `snoozed` reason instead (rule_engine).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationInfo, field_validator, model_validator

from txguard import attributes, literals
from txguard.db import run_in_transaction
from txguard.domain import Transaction
from txguard.errors import NotFound
from txguard.rule_engine import Snoozed
from txguard.storage import rule_sets
from txguard.storage import rule_snoozes as storage
from txguard.storage.rule_snoozes import Snooze, SnoozeChange

MAX_SNOOZE_DAYS = 366
MAX_NOTE_LENGTH = 500
ACTOR = r"^[A-Za-z0-9][A-Za-z0-9_.@:\-]{0,63}$"


class RuleNotFound(NotFound):
    code = "rule_not_found"

    def __init__(self, rule_id: str, known: Sequence[str]) -> None:
        shown = ", ".join(known[:20]) or "none"
        super().__init__(
            f"rule {rule_id} is not in the newest rule set; its rules: {shown}",
            [{"index": None, "field": "rule_id", "value": rule_id, "reason": "no such rule in the newest rule set"}],
        )


def until_ms(value: Any) -> int:
    """A snooze's end in epoch ms, from epoch ms (a JSON integer or its digits) or an RFC 3339 date-time with a
    zone: after now, at most MAX_SNOOZE_DAYS ahead. Raises ValueError saying why not."""
    if isinstance(value, str) and ":" in value:
        ms = literals.rfc3339_ms(value)
    elif isinstance(value, str):
        ms = literals.integer_from_text(value, 0, 2**53)
    else:
        ms = literals.integer_from_json(value, 0, 2**53)
    now = int(time.time() * 1000)
    if ms <= now:
        raise ValueError("must be in the future (a snooze that ended already would change nothing)")
    if ms > now + MAX_SNOOZE_DAYS * 86_400_000:
        raise ValueError(f"must be at most {MAX_SNOOZE_DAYS} days ahead")
    return ms


class SnoozeIn(BaseModel):
    """A snooze request: the entity (`kind`, `value`), until when, why (`note`) and who (`by`)."""

    model_config = ConfigDict(extra="forbid")

    kind: attributes.ListKind = Field(
        description="the entity's kind: which field of the transaction its value is matched against"
    )
    value: Annotated[str, Field(min_length=1, max_length=64, description="the entity, in the kind's canonical form")]
    until: Annotated[
        int | str | None,
        Field(
            description="epoch milliseconds or an RFC 3339 date-time with a zone; in the future, at most "
            f"{MAX_SNOOZE_DAYS} days ahead (give this or for_days)"
        ),
    ] = None
    for_days: Annotated[
        StrictInt | None,
        Field(
            ge=1,
            le=MAX_SNOOZE_DAYS,
            validate_default=True,
            description="the snooze's length in days from now (give this or until)",
        ),
    ] = None
    note: Annotated[str | None, Field(max_length=MAX_NOTE_LENGTH)] = None
    by: Annotated[str, Field(pattern=ACTOR, description="who snoozes (an analyst's or a system's name)")]

    @field_validator("until")
    @classmethod
    def _until(cls, value: int | str | None) -> int | None:
        return None if value is None else until_ms(value)

    @field_validator("for_days")
    @classmethod
    def _one_end(cls, value: int | None, info: ValidationInfo) -> int | None:
        # Checked here rather than on the whole model so that the problem names a field; an invalid `until` is
        # absent from info.data and refused on its own.
        if "until" in info.data and (info.data["until"] is None) == (value is None):
            raise ValueError("give the snooze's end as until (a time) or for_days (a number of days), one of them")
        return value

    @model_validator(mode="after")
    def _end(self) -> SnoozeIn:
        if self.for_days is not None:
            self.until = int(time.time() * 1000) + self.for_days * 86_400_000
        return self

    @field_validator("note")
    @classmethod
    def _note(cls, value: str | None) -> str | None:
        # The same check as every stored free text: no control characters or lone surrogates (NUL fails in SQL).
        return None if value is None else literals.short_text(value, MAX_NOTE_LENGTH)

    @field_validator("value")
    @classmethod
    def _value_of_its_kind(cls, value: str, info: ValidationInfo) -> str:
        # A field validator (kind is declared first, so it is known here): the refusal names `value`.
        kind = info.data.get("kind")
        if kind is None:  # the kind was refused itself: that is the error to report
            return value
        try:
            return attributes.list_value(kind, value)
        except ValueError as exc:
            raise ValueError(f"is not a valid {kind} value: it {exc}") from None

    def until_time(self) -> datetime:
        assert self.until is not None  # _one_end has set it
        return datetime.fromtimestamp(int(self.until) / 1000, UTC)


def _require_rule(cur: Any, rule_id: str) -> None:
    stored = rule_sets.latest(cur)
    known = [] if stored is None else [rule.id for rule in stored.rule_set.rules]
    if rule_id not in known:
        raise RuleNotFound(rule_id, known)


def snooze_with(cur: Any, rule_id: str, request: SnoozeIn) -> tuple[Snooze, str]:
    """In the caller's database transaction: store the snooze (stored, changed, or unchanged when the same one is
    sent again). Raises RuleNotFound."""
    _require_rule(cur, rule_id)
    return storage.snooze(cur, rule_id, request.kind, request.value, request.until_time(), request.note, request.by)


@dataclass(frozen=True)
class SnoozePage:
    """A page of a rule's snoozes (storage.rule_snoozes.of_rule's order), the cursor of the next page (None: the
    last), and the rule's last 100 snooze changes (on every page)."""

    snoozes: list[Snooze]
    next_cursor: str | None
    changes: list[SnoozeChange]


def snoozes_with(
    cur: Any, rule_id: str, expired: bool = False, limit: int | None = None, cursor: str | None = None
) -> SnoozePage:
    """In the caller's database transaction: the rule's snoozes (in force; with `expired` the ended ones too), at
    most `limit` (None: all) after `cursor` (a next_cursor this returned; None: from the first), and its last
    changes. Raises RuleNotFound for a rule neither in the newest rule set nor ever snoozed, InvalidListCursor."""
    after = storage.snooze_key(cursor) if cursor else None
    found = storage.of_rule(cur, rule_id, expired, after, None if limit is None else limit + 1)
    recorded = storage.changes(cur, rule_id)
    if not found and not recorded:
        _require_rule(cur, rule_id)
    if limit is None or len(found) <= limit:
        return SnoozePage(found, None, recorded)
    return SnoozePage(found[:limit], storage.snooze_cursor(found[limit - 1]), recorded)


def unsnooze_with(cur: Any, rule_id: str, kind: str, value: str, by: str) -> Snooze:
    """In the caller's database transaction: lift the rule's snooze for the entity (recorded). Raises
    SnoozeNotFound, ValueError (a kind that is not a list kind, a value not of its kind)."""
    return storage.lift(cur, rule_id, kind, attributes.list_value(kind, value), by)


def snooze_rule(rule_id: str, request: SnoozeIn) -> tuple[Snooze, str]:
    """snooze_with in a unit of work of its own; also raises DatabaseUnavailable."""
    return run_in_transaction(lambda cur: snooze_with(cur, rule_id, request))


def rule_snoozes(rule_id: str, expired: bool, limit: int, cursor: str | None) -> SnoozePage:
    """snoozes_with in a unit of work of its own; also raises DatabaseUnavailable."""
    return run_in_transaction(lambda cur: snoozes_with(cur, rule_id, expired, limit, cursor))


def unsnooze(rule_id: str, kind: str, value: str, by: str) -> Snooze:
    """unsnooze_with in a unit of work of its own; the value is checked before the database is asked."""
    attributes.list_value(kind, value)
    return run_in_transaction(lambda cur: unsnooze_with(cur, rule_id, kind, value, by))


def entity_values(t: Transaction) -> dict[str, str]:
    """The transaction's value of each list kind it has (attributes.LIST_KINDS), as lists and snoozes hold them:
    account 42 as "42"."""
    values = {}
    for kind, field in attributes.LIST_KINDS.items():
        value = t.text_value(field)
        if value is not None:
            values[kind] = value
    return values


def batch_entity_values(batch: Iterable[Transaction]) -> dict[str, set[str]]:
    """The entity_values of every transaction of `batch`, merged: each list kind some transaction has a value of,
    with their distinct values; read a field at a time (a batch's accounts repeat, its missing fields are many)."""
    batch = list(batch)
    values: dict[str, set[str]] = {}
    for kind, field in attributes.LIST_KINDS.items():
        found = set(map(attrgetter(field), batch))
        found.discard(None)
        if found:
            # text_value's reading of each (an account id in digits).
            values[kind] = set(map(str, found)) if field == "account_id" else found
    return values


def snoozed_by_transaction(snoozes: Sequence[Snooze]) -> Callable[[Transaction], Snoozed | None]:
    """A function giving, for a transaction, the rules snoozed for its entities (rule id -> the snooze in words),
    from the snoozes read for its batch; None when none concerns it."""
    by_entity: dict[tuple[str, str], list[Snooze]] = {}
    for s in snoozes:
        by_entity.setdefault((s.kind, s.value), []).append(s)

    def snoozed(t: Transaction) -> Snoozed | None:
        found: dict[str, str] = {}
        for kind, value in entity_values(t).items():
            for s in by_entity.get((kind, value), ()):
                found.setdefault(s.rule_id, s.describe())
        return found or None

    return snoozed


def snooze_json(s: Snooze) -> dict[str, Any]:
    """A snooze as the API returns it: times in epoch ms."""
    return {
        "rule_id": s.rule_id,
        "kind": s.kind,
        "value": s.value,
        "until": int(s.until.timestamp() * 1000),
        "note": s.note,
        "by": s.created_by,
        "created_at": int(s.created_at.timestamp() * 1000),
    }


def change_json(c: SnoozeChange) -> dict[str, Any]:
    return {
        "change_id": c.change_id,
        "change": c.change,
        "rule_id": c.rule_id,
        "kind": c.kind,
        "value": c.value,
        "until": int(c.until.timestamp() * 1000),
        "note": c.note,
        "by": c.changed_by,
        "at": int(c.changed_at.timestamp() * 1000),
    }
