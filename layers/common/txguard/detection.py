"""Deciding transactions in time order against an account's (and merchant's) history.

Two steps per transaction: the feature step (features.py) computes its point-in-time features, and a
`Detector` decides on them. One loop serves every path that decides: ingest (new transactions against the
stored history), `?recompute=true` and backtests (a whole stored history replayed from nothing). Features are
computed in time order; the detector then decides a chunk of them at once (`decide_batch`), so that a model
scores the chunk's feature matrix in one call.

A detector version (detector_versions) pins a rule set, a champion model and shadow models; the `DetectorCache`
loads the current one (models/serving.py: the rules and the models combined), or the newest rule set alone while
no detector version is recorded. Each decision records its rule set's version and its detector version.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from itertools import groupby, pairwise
from typing import Any, NamedTuple, Protocol

import psycopg2.extensions

from txguard.domain import Decision, Transaction
from txguard.feature_columns import FeatureColumns, columnar_features
from txguard.features import (
    ATTRIBUTE_FEATURES,
    ATTRIBUTE_FIELDS,
    LOCAL_TIME_FEATURES,
    MODEL_SCORE,
    AccountHistory,
    Features,
    FeatureSettings,
    FeatureValue,
    Prior,
    Timeline,
    constant_totals,
    features_json,
    list_feature,
    local_time_features,
    merchant_features,
    to_units,
)
from txguard.lists import ListDefinition
from txguard.memory import collection_paused
from txguard.models.serving import load_detector
from txguard.rule_engine import COLUMN_ROWS, CompiledRuleSet, Snoozed
from txguard.rule_language import RuleSetError
from txguard.storage import detector_versions, lists
from txguard.storage.lists import list_definitions
from txguard.storage.rule_sets import newest_version, version


class Detector(Protocol):
    """What decides a transaction from its features.

    `version` is recorded with every decision; `needed_features` names the features it reads (only those are
    computed); `window_reach_ms` is how far back (ms) the widest of them looks; `feature_settings` pins the time
    zone and the label delay its features are computed with. A detector may also offer
    `decide_batch(items: Sequence[(features, merchant_id, currency)]) -> list[Decision]` (the rule set and the
    model detector do): the loop then hands it DECIDE_CHUNK transactions at once; and `text_fields` and
    `list_fields` (CompiledRuleSet's): the text fields and the lists its rules read, which the feature step adds.
    When a snooze concerns a transaction, the loop passes each one's snoozed rules (rule_engine.Snoozed) as
    `snoozed` (decide's fourth argument, decide_batch's second).
    """

    version: int
    needed_features: frozenset[str]
    window_reach_ms: int
    feature_settings: FeatureSettings

    def decide(self, features: Features, merchant_id: str | None, currency: str) -> Decision:
        """The decision on one transaction's features; amounts in explanations in `currency`'s minor units."""
        ...


# How many transactions a detector decides at once: a model scores them in one call, and COPY still gets its
# first rows early.
DECIDE_CHUNK = 256


class Decided(NamedTuple):
    """A transaction, the features it was decided on (None when decisions_in_time_order was asked not to keep
    them), and the decision; `recorded`: the JSON object of the features decisions_in_time_order was asked to
    `record` (features.features_json, what storage writes), None when it was not asked."""

    transaction: Transaction
    features: Features | None
    decision: Decision
    recorded: str | None = None


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
    model_scores: Mapping[int, Decimal | None] | None = None,
    memberships: Mapping[str, frozenset[str]] | None = None,
    snoozes: Callable[[Transaction], Snoozed | None] | None = None,
) -> dict[int, Decision]:
    """Each transaction's decision, by transaction id; see decisions_in_time_order."""
    decided = decisions_in_time_order(transactions, histories, merchants, detector, model_scores, memberships, snoozes)
    return {d.transaction.transaction_id: d.decision for d in decided}


def decisions_in_time_order(
    transactions: list[Transaction],
    histories: dict[int, AccountHistory],
    merchants: dict[str, Timeline],
    detector: Detector,
    model_scores: Mapping[int, Decimal | None] | None = None,
    memberships: Mapping[str, frozenset[str]] | None = None,
    snoozes: Callable[[Transaction], Snoozed | None] | None = None,
    *,
    as_columns: bool = True,
    record: Sequence[str] | None = None,
    keep_features: bool = True,
) -> Iterator[Decided]:
    """Decide each transaction (sorted by time) on what came strictly before it, then add it to the history.

    Transactions sharing a timestamp are not "before" each other: the whole group is decided first.
    Decisions come out as they are taken (a chunk at a time, as columns too: COLUMN_CHUNK), so a caller can write them
    while the rest are still being decided; the histories are complete only once every decision has been taken
    (every caller takes them all). `model_scores` (by transaction id; backtests): the stored champion
    scores that rules read as `model_score`, instead of a champion's. `memberships` (list_memberships): the
    values of the transactions that are current items of each list the detector reads (none when not given).
    `snoozes` (ingest): the rules snoozed for a transaction's entities. `record` (ingest): the features whose
    JSON object each Decided carries as `recorded` (features.features_json; written from the columns on the
    columnar path, byte for byte the same). `keep_features=False` (ingest, which stores `recorded`): each
    Decided's `features` is None, and the columnar path builds no features dict (the rules read the few rows they
    explain from the columns).

    From rule_engine.COLUMN_ROWS transactions on, a detector with `decide_columns` (the rule set, the model
    detector) decides them as columns when feature_columns.columnar_features computes their features (the common
    case: one currency, no late arrivals): the same features, decisions and histories as
    one by one, which `as_columns=False` asks for (benchmarks, parity tests).
    """
    text_reads = TextReads(detector, memberships)
    needed = detector.needed_features
    settings = detector.feature_settings
    decide_columns = getattr(detector, "decide_columns", None)
    if as_columns and decide_columns is not None and len(transactions) >= COLUMN_ROWS:
        with collection_paused():
            columns = columnar_features(transactions, histories, merchants, needed, settings)
        if columns is not None:
            yield from _decided_as_columns(
                transactions,
                columns,
                histories,
                merchants,
                decide_columns,
                model_scores,
                text_reads,
                snoozes,
                record,
                not needed.isdisjoint(ATTRIBUTE_FEATURES),
                keep_features,
            )
            return
    wants_merchant = any(name.startswith("merchant_") and name != "merchant_used_before" for name in needed)
    wants_local_time = not needed.isdisjoint(LOCAL_TIME_FEATURES)
    wants_attributes = not needed.isdisjoint(ATTRIBUTE_FEATURES)
    decide_batch = getattr(detector, "decide_batch", None)
    pending: list[tuple[Transaction, Features]] = []
    for _, same_time in groupby(transactions, key=lambda t: t.ts):
        group = [(t, to_units(t.amount)) for t in same_time]
        for t, units in group:
            features = histories[t.account_id].features(t.ts, units, t.currency, needed, t.merchant_id)
            if wants_merchant:
                merchant = merchants.get(t.merchant_id) if t.merchant_id else None
                features.update(merchant_features(merchant, t.ts, t.currency, needed, settings))
            if wants_local_time:
                features.update(local_time_features(t.ts, needed, settings.time_zone))
            if wants_attributes:
                features.update(histories[t.account_id].attribute_features(t.ts, attribute_values(t), needed))
            if model_scores is not None:
                features[MODEL_SCORE] = model_scores.get(t.transaction_id)
            if text_reads:
                text_reads.add(features, t)
            pending.append((t, features))
        for t, units in group:
            histories[t.account_id].add(t.ts, units, t.currency, t.merchant_id)
            if wants_attributes:
                histories[t.account_id].add_values(t.ts, attribute_values(t))
            if t.merchant_id is not None:
                merchants[t.merchant_id].add(t.ts, units, t.currency)
        # Features never depend on decisions, so deciding after the group was added changes nothing.
        if len(pending) >= DECIDE_CHUNK:
            yield from _decided(pending, detector, decide_batch, snoozes, record, keep_features)
            pending = []
    if pending:
        yield from _decided(pending, detector, decide_batch, snoozes, record, keep_features)


def _decided_as_columns(
    transactions: list[Transaction],
    columns: FeatureColumns,
    histories: dict[int, AccountHistory],
    merchants: dict[str, Timeline],
    decide_columns: Any,
    model_scores: Mapping[int, Decimal | None] | None,
    text_reads: TextReads,
    snoozes: Callable[[Transaction], Snoozed | None] | None,
    record: Sequence[str] | None,
    wants_attributes: bool,
    keep_features: bool,
) -> Iterator[Decided]:
    """decisions_in_time_order for features computed as columns (feature_columns.columnar_features): the same
    features dicts (built after deciding, when kept), decisions and recorded JSON, COLUMN_CHUNK rows at a time
    (column_chunks), then the same histories once the last chunk is taken."""
    with collection_paused():
        if model_scores is not None:
            columns.add_values(MODEL_SCORE, [model_scores.get(t.transaction_id) for t in transactions])
        if text_reads:
            for name, values in text_reads.columns(transactions).items():
                columns.add_values(name, values)
        currency = transactions[0].currency  # columnar_features: one currency
        merchant_ids = [t.merchant_id for t in transactions]
        snoozed = None if snoozes is None else [snoozes(t) for t in transactions]
        if snoozed is not None and not any(snoozed):
            snoozed = None
    for start, stop in column_chunks(len(transactions)):
        with collection_paused():
            part = columns.part(start, stop)
            decisions = decide_columns(
                part, part.items(merchant_ids[start:stop], currency), None if snoozed is None else snoozed[start:stop]
            )
            # After deciding: a champion adds its scores to the part's columns (model_score).
            rows: Sequence[Features | None] = part.rows() if keep_features else [None] * (stop - start)
            recorded: Sequence[str | None] = [None] * (stop - start) if record is None else part.json_rows(record)
            decided = list(map(Decided, transactions[start:stop], rows, decisions, recorded))
        yield from decided
    with collection_paused():
        _add_to_histories(transactions, columns, histories, merchants, currency, wants_attributes)


# How many transactions decided as columns are decided (and their features JSON written) at a time: COPY gets the
# first chunk's rows, and the database stores them, while the next chunk is being decided. Large enough that the
# predicates' fixed cost per chunk stays small beside the rows' own.
COLUMN_CHUNK = 1_024


def column_chunks(count: int) -> list[tuple[int, int]]:
    """[start, stop) of each chunk of `count` rows decided as columns: about COLUMN_CHUNK rows each (all in one
    up to 1.5 × COLUMN_CHUNK), in order, covering 0..count."""
    parts = max(1, round(count / COLUMN_CHUNK))
    bounds = [count * k // parts for k in range(parts + 1)]
    return list(pairwise(bounds))


def _add_to_histories(
    transactions: list[Transaction],
    columns: FeatureColumns,
    histories: dict[int, AccountHistory],
    merchants: dict[str, Timeline],
    currency: str,
    wants_attributes: bool,
) -> None:
    """The histories as adding each transaction in turn leaves them: per account and per merchant, in time order."""
    units = columns.numbers["amount"].scaled.tolist()
    by_account: dict[int, list[int]] = {}
    by_merchant: dict[str, list[int]] = {}
    for i, t in enumerate(transactions):
        by_account.setdefault(t.account_id, []).append(i)
        if t.merchant_id is not None:
            by_merchant.setdefault(t.merchant_id, []).append(i)
    for account_id, indexes in by_account.items():
        histories[account_id].add_all(
            [transactions[i].ts for i in indexes],
            [units[i] for i in indexes],
            currency,
            [transactions[i].merchant_id for i in indexes],
        )
    for merchant_id, indexes in by_merchant.items():
        merchants[merchant_id].add_all([transactions[i].ts for i in indexes], [units[i] for i in indexes], currency)
    if wants_attributes:
        for account_id, indexes in by_account.items():
            histories[account_id].add_all_values(
                [transactions[i].ts for i in indexes],
                {name: [getattr(transactions[i], name) for i in indexes] for name in ATTRIBUTE_FIELDS},
            )


class TextReads:
    """What the detector's rules read of a transaction's text fields, added to its features: each field's value
    (None when it has none) and, for each list read, rule_engine.list_feature(list): 1 when the value is among the
    list's `memberships` (list_memberships), 0 when not, None without a value."""

    def __init__(self, detector: Detector, memberships: Mapping[str, frozenset[str]] | None) -> None:
        list_fields: Mapping[str, str] = getattr(detector, "list_fields", {})
        self.fields = tuple(getattr(detector, "text_fields", frozenset()) | set(list_fields.values()))
        found = memberships or {}
        self.lists = tuple(
            (list_feature(name), field, found.get(name, frozenset())) for name, field in list_fields.items()
        )

    def __bool__(self) -> bool:
        return bool(self.fields)

    def columns(self, transactions: Sequence[Transaction]) -> dict[str, list[FeatureValue]]:
        """What `add` adds, as one column per key (in `add`'s order)."""
        found: dict[str, list[FeatureValue]] = {}
        for field in self.fields:
            found[field] = [t.text_value(field) for t in transactions]
        for key, field, items in self.lists:
            found[key] = [None if value is None else int(value in items) for value in found[field]]
        return found

    def add(self, features: Features, t: Transaction) -> None:
        for field in self.fields:
            features[field] = t.text_value(field)
        for key, field, items in self.lists:
            value = features[field]
            features[key] = None if value is None else int(value in items)


def attribute_values(t: Transaction) -> dict[str, str | None]:
    """The attributes the attribute features read (features.ATTRIBUTE_FIELDS), by name."""
    return {name: getattr(t, name) for name in ATTRIBUTE_FIELDS}


def list_memberships(
    cur: psycopg2.extensions.cursor, transactions: Iterable[Transaction], detector: Detector
) -> dict[str, frozenset[str]]:
    """For each list the detector's rules read, which of these transactions' values are its current items: one
    query (storage.lists.memberships) for the whole batch, none when no rule reads a list."""
    wanted = list_values(transactions, detector)
    return lists.memberships(cur, wanted) if wanted else {}


def list_values(transactions: Iterable[Transaction], detector: Detector) -> dict[str, set[str]]:
    """For each list the detector's rules read (its `list_fields`), the values of these transactions they would
    look up in it (every such list is a key); empty when no rule reads a list."""
    list_fields: Mapping[str, str] = getattr(detector, "list_fields", {})
    wanted: dict[str, set[str]] = {name: set() for name in list_fields}
    for t in transactions:
        for name, field in list_fields.items():
            value = t.text_value(field)
            if value is not None:
                wanted[name].add(value)
    return wanted


def _decided(
    pending: list[tuple[Transaction, Features]],
    detector: Detector,
    decide_batch: Any,
    snoozes: Callable[[Transaction], Snoozed | None] | None = None,
    record: Sequence[str] | None = None,
    keep_features: bool = True,
) -> Iterator[Decided]:
    decided = _decided_rows(pending, detector, decide_batch, snoozes)
    if record is None and keep_features:
        yield from decided
        return
    for t, features, decision, _ in decided:
        assert features is not None  # _decided_rows keeps them
        recorded = None if record is None else features_json(features, record)
        yield Decided(t, features if keep_features else None, decision, recorded)


def _decided_rows(
    pending: list[tuple[Transaction, Features]],
    detector: Detector,
    decide_batch: Any,
    snoozes: Callable[[Transaction], Snoozed | None] | None = None,
) -> Iterator[Decided]:
    snoozed = None if snoozes is None else [snoozes(t) for t, _ in pending]
    if snoozed is not None and not any(snoozed):
        snoozed = None  # the usual case: no snooze concerns the chunk
    if decide_batch is None:  # a detector that decides one transaction at a time
        for i, (t, features) in enumerate(pending):
            if snoozed is None:
                yield Decided(t, features, detector.decide(features, t.merchant_id, t.currency))
            else:
                yield Decided(t, features, detector.decide(features, t.merchant_id, t.currency, snoozed[i]))  # type: ignore[call-arg]
        return
    items = [(features, t.merchant_id, t.currency) for t, features in pending]
    decisions = decide_batch(items) if snoozed is None else decide_batch(items, snoozed)
    for (t, features), decision in zip(pending, decisions, strict=True):
        yield Decided(t, features, decision)


class DetectorCache:
    """The current detector version, ready to decide, re-read from the database at most every `max_age_s` s.

    The current detector version (detector_versions) is its rule set compiled with its champion and shadow models
    (models/serving.py); while none is recorded, the newest rule set alone. A new rule set or model status is
    picked up within `max_age_s`, with no redeploy; models are read from the artifact store once per version.
    """

    def __init__(self) -> None:
        self._detector: Detector | None = None
        self._lists: dict[str, ListDefinition] = {}
        self._key: tuple[int | None, int] | None = None
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    def current(self, cur: psycopg2.extensions.cursor, max_age_s: float) -> Detector:
        """Raises RuleSetError when no rule set is stored or the one to use fails validation. A model that cannot
        be loaded never raises: the detector falls back to the rules (ModelDetector.fallback)."""
        with self._lock:
            now = time.monotonic()
            if self._detector is None or now - self._loaded_at > max_age_s:
                pinned = detector_versions.current(cur)
                if pinned is None:
                    newest = newest_version(cur)
                    if newest is None:
                        raise RuleSetError(["no rule set is stored; run `txguard db migrate`"])
                    key: tuple[int | None, int] = (None, newest)
                else:
                    key = (pinned.version, pinned.rule_set_version)
                # A detector version never changes once recorded: the same key is the same detector, except that
                # a model that failed to load is tried again.
                if self._detector is None or self._key != key or getattr(self._detector, "incomplete", False):
                    stored = version(cur, key[1])
                    if stored is None:
                        raise RuleSetError([f"detector version {key[0]} names rule set {key[1]}, which is not stored"])
                    rules = CompiledRuleSet(stored.version, stored.rule_set, key[0])
                    self._detector = rules if pinned is None else load_detector(cur, pinned, rules)
                    self._key = key
                # The lists' definitions (which decide by themselves, and how) are picked up with the detector.
                self._lists = list_definitions(cur)
                self._loaded_at = now
            return self._detector

    def lists(self) -> dict[str, ListDefinition]:
        """The list definitions read with the current detector (storage.lists.list_definitions), by name."""
        with self._lock:
            return self._lists

    def clear(self) -> None:
        with self._lock:
            self._detector = None
            self._key = None


detector_cache = DetectorCache()
