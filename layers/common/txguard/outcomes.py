"""What allow and block lists and rule snoozes do to a batch's decisions: steps 1 and 2 of the precedence
(rule_engine's docstring), and the snoozes the rules are decided with.

`for_batch` reads, once per batch and in one statement (storage.rule_snoozes.in_force_with_list_items), the
snoozes in force of the batch's entities and the memberships of their values, with each item's expiry, in the lists
that decide by themselves (`action` allow or block) and in the lists the rules read (one index probe per value
asked), then answers per transaction:
- `snoozed(t)`: the rules snoozed for its entities (rule id -> the snooze in words), or None;
- `judge(t, decision)`: the decision after the lists: an allow-list match allows ("allowed by list vip_accounts:
  account_id 42 is in allow list vip_accounts; without it: block (score 0.9700)"), and each block-list match it
  overrides is still given ("card_id tok_1 is in block list stolen_cards; overridden by allow list
  vip_accounts"); else the block-list matches block ("card_id tok_1 is in block list stolen_cards, until
  2026-12-31T00:00:00+00:00"). Each match is a `list` reason (rule_id `list:<name>`), the deciding one first;
  with no match, the decision as the detector took it.
An item applies while it has no expiry or its expiry is ahead of the decision's wall-clock time.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal

import psycopg2.extensions

from txguard.attributes import LIST_KINDS
from txguard.domain import Decision, Outcome, Reason, Transaction
from txguard.lists import CandidateLists, ListDefinition
from txguard.rule_engine import Snoozed
from txguard.snoozes import batch_entity_values, entity_values, snoozed_by_transaction
from txguard.storage import lists as list_storage
from txguard.storage import rule_snoozes

LIST_REASON_PREFIX = "list:"


@dataclass(frozen=True)
class ListMatch:
    """One of a transaction's values found in a list that decides: the list, its kind and action, the value and
    the item's expiry (epoch ms, None: never)."""

    list_name: str
    kind: str
    action: str
    value: str
    expires_at_ms: int | None

    def sentence(self) -> str:
        until = (
            ""
            if self.expires_at_ms is None
            else f", until {datetime.fromtimestamp(self.expires_at_ms / 1000, UTC).isoformat()}"
        )
        return f"{LIST_KINDS[self.kind]} {self.value} is in {self.action} list {self.list_name}{until}"


@dataclass(frozen=True)
class BatchOutcomes:
    """What lists and snoozes say about one batch: see the module docstring."""

    snoozed: Callable[[Transaction], Snoozed | None] | None
    matches: Mapping[tuple[str, str], Sequence[ListMatch]]  # (kind, value) -> its matches, allow lists first
    # For each list the rules read (for_batch's `rule_lists`), which of the values asked are its current items.
    in_lists: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def judge(self, t: Transaction, decision: Decision) -> Decision:
        """The decision after steps 1 and 2 of the precedence (an allow list, then a block list)."""
        if not self.matches:
            return decision
        found = [m for kind, value in entity_values(t).items() for m in self.matches.get((kind, value), ())]
        if not found:
            return decision
        allowing = [m for m in found if m.action == "allow"]
        blocking = [m for m in found if m.action == "block"]
        if allowing:
            first = allowing[0]
            # What the allow list overrode is part of the explanation: an analyst must see a block-listed card
            # used on an allow-listed account.
            would = "block (a block list matched)" if blocking else f"{decision.outcome} (score {decision.score})"
            explanation = f"allowed by list {first.list_name}: {first.sentence()}; without it: {would}"
            overridden = [f"{m.sentence()}; overridden by allow list {first.list_name}" for m in blocking]
            return _with_lists(decision, [first, *blocking], "allow", [explanation, *overridden])
        return _with_lists(decision, blocking, "block", [m.sentence() for m in blocking])


def _with_lists(
    decision: Decision, matches: Sequence[ListMatch], outcome: Outcome, explanations: Sequence[str]
) -> Decision:
    """`decision` with `outcome`, and a `list` reason per match (the deciding one first)."""
    reasons = tuple(
        Reason(LIST_REASON_PREFIX + match.list_name, "list", Decimal(0), explanation)
        for match, explanation in zip(matches, explanations, strict=True)
    )
    return replace(decision, fraud=outcome == "block", outcome=outcome, reasons=(*reasons, *decision.reasons))


NO_LISTS_OR_SNOOZES = BatchOutcomes(None, {})


def decisive_lists(definitions: Mapping[str, ListDefinition]) -> list[ListDefinition]:
    """The lists that decide by themselves (action allow or block), allow lists first, then by name."""
    return sorted(
        (d for d in definitions.values() if d.action is not None), key=lambda d: (d.action != "allow", d.name)
    )


@dataclass(frozen=True)
class Asked:
    """What for_batch asks the database about a batch: its entities' values (kind -> values: their snoozes and
    their memberships in the lists that decide), those lists (allow lists first), and the values each list asks
    for (the deciding lists' and `rule_lists`')."""

    values: Mapping[str, set[str]]
    deciding: Sequence[ListDefinition]
    wanted: Mapping[str, set[str]]
    rule_lists: tuple[str, ...]


def ask(
    cur: psycopg2.extensions.cursor,
    batch: Sequence[Transaction],
    definitions: Mapping[str, ListDefinition] | None = None,
    rule_lists: Mapping[str, Collection[str]] | None = None,
    candidates: CandidateLists | None = None,
) -> Asked:
    """What for_batch reads about `batch` (arguments as for_batch's), for rule_snoozes.in_force_with_list_items
    or its json form; `answer` turns what it read into the BatchOutcomes."""
    values = batch_entity_values(batch)
    stored = list_storage.list_definitions(cur) if definitions is None else definitions
    deciding = decisive_lists(stored if candidates is None else candidates.over(stored))
    wanted: dict[str, set[str]] = {name: set(asked) for name, asked in (rule_lists or {}).items()}
    for d in deciding:
        if values.get(d.kind):
            wanted.setdefault(d.name, set()).update(values[d.kind])
    return Asked(values, deciding, wanted, tuple(rule_lists or ()))


def answer(asked: Asked, read: rule_snoozes.SnoozesAndItems) -> BatchOutcomes:
    """The BatchOutcomes of what was read for `asked` (the snoozes, and per list the items found with their
    expiry)."""
    snoozes, items = read
    matches: dict[tuple[str, str], list[ListMatch]] = {}
    for d in asked.deciding:
        found = items.get(d.name, {})
        for value in sorted(v for v in asked.values.get(d.kind, ()) if v in found):
            matches.setdefault((d.kind, value), []).append(
                ListMatch(d.name, d.kind, str(d.action), value, found[value])
            )
    in_lists = {name: frozenset(items.get(name, {})) for name in asked.rule_lists}
    return BatchOutcomes(snoozed_by_transaction(snoozes) if snoozes else None, matches, in_lists)


def for_batch(
    cur: psycopg2.extensions.cursor,
    batch: Sequence[Transaction],
    definitions: Mapping[str, ListDefinition] | None = None,
    rule_lists: Mapping[str, Collection[str]] | None = None,
    candidates: CandidateLists | None = None,
) -> BatchOutcomes:
    """Read what lists and snoozes say about `batch` (see the module docstring) in one statement: the snoozes in
    force of its entities and the current items, with their expiries, among its values in the lists that decide
    and in `rule_lists` (list name -> the values the rules look up: detection.list_values), whose memberships
    come back as `in_lists`. `definitions` (storage.lists.list_definitions; the detector cache keeps them): None
    reads them now. `candidates` (a backtest's --lists): the lists as they would stand instead, their items read
    from it where it gives them. Ingest asks the same inside its lock statement (ask, then answer)."""
    asked = ask(cur, batch, definitions, rule_lists, candidates)
    held = {name for name in asked.wanted if candidates is not None and candidates.holds(name)}
    snoozes, items = rule_snoozes.in_force_with_list_items(
        cur, asked.values, {name: v for name, v in asked.wanted.items() if name not in held}
    )
    if candidates is not None:
        items = dict(items)
        for name in held:
            found = candidates.members(name, asked.wanted[name])
            items[name] = {value: candidates.items[name][value].expires_at_ms for value in found}
    return answer(asked, (snoozes, items))
