"""Deciding transactions in time order against an account's (and merchant's) history.

Two steps per transaction: the feature step (features.py) computes its point-in-time features, and a
`Detector` decides on them. One loop serves every path that decides: ingest (new transactions against the
stored history), `?recompute=true` and backtests (a whole stored history replayed from nothing).

Today the only detector is the compiled rule set (rule_engine.CompiledRuleSet). A trained model's detector
will live beside rule_engine.py and implement the same protocol; the `DetectorCache` then loads a detector
version that pins a rule set and its models. Until then a detector version is the rule set's version, which
each decision records as `rule_set_version`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from itertools import groupby
from typing import NamedTuple, Protocol

import psycopg2.extensions

from txguard.domain import Decision, Transaction
from txguard.features import (
    LOCAL_TIME_FEATURES,
    AccountHistory,
    Features,
    FeatureSettings,
    Prior,
    Timeline,
    constant_totals,
    local_time_features,
    merchant_features,
    to_units,
)
from txguard.rule_engine import CompiledRuleSet
from txguard.rule_language import RuleSetError
from txguard.storage.rule_sets import newest_version, version


class Detector(Protocol):
    """What decides a transaction from its features.

    `version` is recorded with every decision; `needed_features` names the features it reads (only those are
    computed); `window_reach_ms` is how far back (ms) the widest of them looks; `feature_settings` pins the time
    zone and the label delay its features are computed with.
    """

    version: int
    needed_features: frozenset[str]
    window_reach_ms: int
    feature_settings: FeatureSettings

    def decide(self, features: Features, merchant_id: str | None, currency: str) -> Decision:
        """The decision on one transaction's features; amounts in explanations in `currency`'s minor units."""
        ...


class Decided(NamedTuple):
    """A transaction, the features it was decided on, and the decision."""

    transaction: Transaction
    features: Features
    decision: Decision


def empty_history() -> AccountHistory:
    """An account with nothing stored yet, whose tail (and per-day totals) are complete from the beginning of
    time."""
    return AccountHistory(
        count=0,
        first_ts=None,
        last_ts=None,
        amounts={},
        tail=empty_timeline(),
        stored_before=constant_totals(Prior(), {}),
    )


def empty_timeline() -> Timeline:
    """A history with nothing in it yet, complete from the beginning of time (per-day totals too)."""
    return Timeline(complete_from=-(2**62), days={})


def decide_in_time_order(
    transactions: list[Transaction],
    histories: dict[int, AccountHistory],
    merchants: dict[str, Timeline],
    detector: Detector,
) -> dict[int, Decision]:
    """Each transaction's decision, by transaction id; see decisions_in_time_order."""
    return {t.transaction_id: d for t, _, d in decisions_in_time_order(transactions, histories, merchants, detector)}


def decisions_in_time_order(
    transactions: list[Transaction],
    histories: dict[int, AccountHistory],
    merchants: dict[str, Timeline],
    detector: Detector,
) -> Iterator[Decided]:
    """Decide each transaction (sorted by time) on what came strictly before it, then add it to the history.

    Transactions sharing a timestamp are not "before" each other: the whole group is decided first.
    Decisions come out as they are taken, so a caller can write them while the rest are still being decided.
    """
    needed = detector.needed_features
    settings = detector.feature_settings
    wants_merchant = any(name.startswith("merchant_") and name != "merchant_used_before" for name in needed)
    wants_local_time = not needed.isdisjoint(LOCAL_TIME_FEATURES)
    for _, same_time in groupby(transactions, key=lambda t: t.ts):
        group = [(t, to_units(t.amount)) for t in same_time]
        decided = []
        for t, units in group:
            features = histories[t.account_id].features(t.ts, units, t.currency, needed, t.merchant_id)
            if wants_merchant:
                merchant = merchants.get(t.merchant_id) if t.merchant_id else None
                features.update(merchant_features(merchant, t.ts, t.currency, needed, settings))
            if wants_local_time:
                features.update(local_time_features(t.ts, needed, settings.time_zone))
            decided.append(Decided(t, features, detector.decide(features, t.merchant_id, t.currency)))
        for t, units in group:
            histories[t.account_id].add(t.ts, units, t.currency, t.merchant_id)
            if t.merchant_id is not None:
                merchants[t.merchant_id].add(t.ts, units, t.currency)
        yield from decided


class DetectorCache:
    """The newest detector version, ready to decide, re-read from the database at most every `max_age_s` s.

    A detector version is, for now, a rule set version: the detector is that rule set compiled.
    """

    def __init__(self) -> None:
        self._detector: CompiledRuleSet | None = None
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    def current(self, cur: psycopg2.extensions.cursor, max_age_s: float) -> Detector:
        """Raises RuleSetError when no rule set is stored or the newest fails validation."""
        with self._lock:
            now = time.monotonic()
            if self._detector is None or now - self._loaded_at > max_age_s:
                newest = newest_version(cur)
                if newest is None:
                    raise RuleSetError(["no rule set is stored; run `txguard db migrate`"])
                if self._detector is None or self._detector.version != newest:
                    stored = version(cur, newest)
                    assert stored is not None
                    self._detector = CompiledRuleSet(stored.version, stored.rule_set)
                self._loaded_at = now
            return self._detector

    def clear(self) -> None:
        with self._lock:
            self._detector = None


detector_cache = DetectorCache()
