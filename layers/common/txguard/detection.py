"""Deciding transactions in time order against an account's (and merchant's) history.

One loop serves every path that decides: ingest (new transactions against the stored history),
`?recompute=true` and backtests (a whole stored history replayed from nothing).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import groupby

from txguard.domain import Decision
from txguard.domain import Transaction as Transaction  # re-exported for generator/ until it imports domain
from txguard.features import AccountHistory, Prior, Timeline, merchant_features, to_units
from txguard.rule_engine import CompiledRuleSet


def empty_history() -> AccountHistory:
    """An account with nothing stored yet, whose tail is complete from the beginning of time."""
    return AccountHistory(
        count=0,
        sum_units=0,
        sum_sq_units=0,
        max_units=None,
        max_ts=None,
        first_ts=None,
        last_ts=None,
        tail=Timeline(complete_from=-(2**62)),
        stored_before=lambda _t: Prior(),
    )


def decide_in_time_order(
    transactions: list[Transaction],
    histories: dict[int, AccountHistory],
    merchants: dict[str, Timeline],
    rules: CompiledRuleSet,
) -> dict[int, Decision]:
    """Each transaction's decision, by transaction id; see decisions_in_time_order."""
    return {t.transaction_id: d for t, d in decisions_in_time_order(transactions, histories, merchants, rules)}


def decisions_in_time_order(
    transactions: list[Transaction],
    histories: dict[int, AccountHistory],
    merchants: dict[str, Timeline],
    rules: CompiledRuleSet,
) -> Iterator[tuple[Transaction, Decision]]:
    """Decide each transaction (sorted by time) on what came strictly before it, then add it to the history.

    Transactions sharing a timestamp are not "before" each other: the whole group is decided first.
    Decisions come out as they are taken, so a caller can write them while the rest are still being decided.
    """
    needed = rules.needed_features
    wants_merchant = any(name.startswith("merchant_") for name in needed)
    for _, same_time in groupby(transactions, key=lambda t: t.ts):
        group = [(t, to_units(t.amount)) for t in same_time]
        decided = []
        for t, units in group:
            features = histories[t.account_id].features(t.ts, units, needed)
            if wants_merchant:
                merchant = merchants.get(t.merchant_id) if t.merchant_id else None
                features.update(merchant_features(merchant, t.ts, needed))
            decided.append((t, rules.decide(features, t.merchant_id, t.currency)))
        for t, units in group:
            histories[t.account_id].add(t.ts, units)
            if t.merchant_id is not None:
                merchants[t.merchant_id].add(t.ts, units)
        yield from decided
