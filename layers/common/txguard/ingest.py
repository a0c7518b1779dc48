"""Storing transactions, each with the decision taken on what came before it, in one database transaction.

For a batch: lock the running totals of the accounts with a transaction not stored yet (and the merchants),
finding which ids are already stored in the same statement, read only the recent tail of each account and
merchant, then decide every new transaction in time order
in memory while COPY streams the decided rows in (PostgreSQL stores one chunk while the next is being
decided), and write the new totals. Nothing is written if anything conflicts.
Cost per transaction does not grow with the account's history; see features.py.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import psycopg2.extensions

from txguard import account_tails, outcomes
from txguard.detection import Detector, decisions_in_time_order, list_values
from txguard.domain import Decision, StoreResult, Transaction
from txguard.errors import BadInput, Conflict
from txguard.features import (
    ATTRIBUTE_FEATURES,
    DAY_MS,
    LONGEST_DAY_WINDOW,
    MERCHANT_DAY_FEATURES,
    AccountHistory,
    CurrencyDailyTotals,
    Prior,
    Span,
    Timeline,
    constant_totals,
    merchant_reach_ms,
    needs_account_days,
    spans_before,
)
from txguard.lists import ListDefinition
from txguard.storage import account_stats, labels, merchants, rule_snoozes, transactions


class DuplicateIdConflict(Conflict):
    """Ids already stored with different content; nothing was stored."""

    code = "transaction_id_conflict"

    def __init__(self, conflicts: list[tuple[int, int, list[str]]], in_request: bool = False) -> None:
        # (index in the request, transaction id, differing fields)
        self.conflicts = conflicts
        self.in_request = in_request
        ids = ", ".join(str(tid) for _, tid, _ in conflicts[:5])
        super().__init__(
            f"transaction ids already used with different content: {ids}",
            [
                {"index": index, "field": "transaction_id", "value": tid, "reason": f"differs in {', '.join(fields)}"}
                for index, tid, fields in conflicts
            ],
        )
        self.message = (
            f"transaction_id {', '.join(str(tid) for _, tid, _ in conflicts[:10])} is already stored with "
            "different content; nothing was stored"
        )


class DuplicateIdInRequest(BadInput, DuplicateIdConflict):
    """One request names an id twice with different content: bad input, whatever is stored; nothing was stored."""

    code = "validation_error"

    def __init__(self, conflicts: list[tuple[int, int, list[str]]]) -> None:
        super().__init__(conflicts, in_request=True)
        self.message = "the same transaction_id appears twice with different content"


def store_transactions(
    cur: psycopg2.extensions.cursor,
    batch: Sequence[Transaction],
    detector: Detector,
    lists: Mapping[str, ListDefinition] | None = None,
) -> list[StoreResult]:
    """Store each transaction exactly once with the decision `detector` takes on it, after the allow and block
    lists (`lists`: the list definitions, as the detector cache keeps them; None: read now) and with the rules
    snoozed for its entities (txguard.outcomes); results in request order.
    An account another transaction holds is waited for (lock_timeout, then DatabaseUnavailable: nothing stored)."""
    return [r for r in _store(cur, batch, detector, skip_busy=False, lists=lists) if r is not None]


def store_unless_busy(
    cur: psycopg2.extensions.cursor,
    batch: Sequence[Transaction],
    detector: Detector,
    lists: Mapping[str, ListDefinition] | None = None,
) -> list[StoreResult | None]:
    """store_transactions for a stream batch: an account that another transaction holds is not waited for. Its
    transactions that are not stored yet are left for a later delivery (None in the results, in request order;
    none of them stored, so the account's order holds); the other accounts' are stored in this transaction."""
    return _store(cur, batch, detector, skip_busy=True, lists=lists)


def _store(
    cur: psycopg2.extensions.cursor,
    batch: Sequence[Transaction],
    detector: Detector,
    skip_busy: bool,
    lists: Mapping[str, ListDefinition] | None = None,
) -> list[StoreResult | None]:
    first_index, repeats, in_request_conflicts = _index_request(batch)
    if in_request_conflicts:
        raise DuplicateIdInRequest(in_request_conflicts)

    # Which ids are stored already is asked under the locks, in the lock statement (lock_accounts), which takes no
    # lock for a stored transaction: a replay waits for no writer, and a transaction stored alone costs no round
    # trip of its own for the question. The stream path (skip_busy) asks first, on its own: it tries the accounts'
    # locks before that statement, and an account held elsewhere must not hold up an answer for a replay.
    stored = transactions.stored_by_id(cur, list(first_index)) if skip_busy else {}
    _refuse_conflicts(batch, stored)
    stats: dict[int, AccountHistory] = {}
    # The days the day windows read and their per-day totals, as lock_accounts read them (None: to be read).
    window: tuple[dict[int, tuple[int, int]], dict[int, dict[str, dict[int, list[int]]]]] | None = None
    busy: set[int] = set()
    written_by: dict[int, int | None] = {}
    if len(stored) < len(first_index):
        pending = [batch[i] for i in first_index.values() if batch[i].transaction_id not in stored]
        if skip_busy:
            accounts = sorted({t.account_id for t in pending})
            busy = set(accounts) - account_stats.lock_accounts_now(cur, accounts)
            pending = [t for t in pending if t.account_id not in busy]
        # Under the locks, in the same round trip: which of them are stored (a batch for the same accounts may
        # have stored them meanwhile), and the per-day totals the day windows read. And what the lists and snoozes
        # say about them (outcomes.for_batch's question, asked in the same statement).
        reach_days = _window_days(pending) if needs_account_days(detector.needed_features) else {}
        asked = outcomes.ask(cur, pending, lists, list_values(pending, detector))
        also = rule_snoozes.in_force_with_list_items_as_json(cur, asked.values, asked.wanted)
        locked = account_stats.lock_accounts(cur, pending, reach_days, also)
        stats = locked.histories
        written_by = locked.written_by
        window = (reach_days, locked.window_days)
        if locked.stored_ids:
            stored.update(transactions.stored_by_id(cur, locked.stored_ids))
            _refuse_conflicts(batch, stored)
            window = None  # read again for the transactions left

    new = sorted(
        (t for i in first_index.values() if (t := batch[i]).transaction_id not in stored and t.account_id not in busy),
        key=lambda t: (t.ts, t.transaction_id),
    )
    decisions: dict[int, Decision] = {}
    if new:
        transactions.lock_merchants(cur, {t.merchant_id for t in new if t.merchant_id is not None})
        needed = detector.needed_features
        with_values = not needed.isdisjoint(ATTRIBUTE_FEATURES)
        in_order = _load_histories(
            cur, new, stats, detector.window_reach_ms, needs_account_days(needed), with_values, window, written_by
        )
        if "merchant_used_before" in needed:
            pairs = {(t.account_id, t.merchant_id) for t in new if t.merchant_id is not None}
            for account_id, used in account_stats.merchants_first_used(cur, pairs).items():
                stats[account_id].merchant_first = used
        if with_values:
            wanted = account_stats.first_use_wanted(new)
            for account_id, first_use in account_stats.values_first_used(cur, wanted).items():
                stats[account_id].first_use = first_use
        at_merchants = transactions.merchant_windows(
            cur, new, merchant_reach_ms(needed), from_day_start=not needed.isdisjoint(MERCHANT_DAY_FEATURES)
        )
        merchants.attach_history(cur, new, at_merchants, needed, detector.feature_settings)
        # The lists the rules read, the rules snoozed for the batch's entities and its values in the allow and
        # block lists, as read under the locks.
        judged = outcomes.answer(asked, rule_snoozes.snoozes_and_items_from_json(locked.also, asked.wanted))
        in_lists = judged.in_lists
        # Positional: no stored model scores (the champion scores), then the lists' memberships and the snoozes.
        # Each decided row carries the JSON of the features stored with it (those the detector read), and no
        # features dict: only the decision and that JSON are stored.
        decided = decisions_in_time_order(
            new,
            stats,
            at_merchants,
            detector,
            None,
            in_lists,
            judged.snoozed,
            record=tuple(sorted(needed)),
            keep_features=False,
        )
        if judged.matches:
            decided = (d._replace(decision=judged.judge(d.transaction, d.decision)) for d in decided)
        # The unit of work's statement timeout, from the settings read when its connection was opened.
        timeout_ms = getattr(cur, "statement_timeout_ms", 0)
        transactions.copy_in(cur, decided, len(new), decisions, timeout_ms)
        writer = account_tails.new_writer()
        account_stats.write_totals(cur, stats, {t.account_id for t in new}, writer)
        after_commit = getattr(cur, "after_commit", None)
        if after_commit is not None:
            after_commit(lambda: account_tails.keep(writer, stats, in_order, with_values))
        account_stats.add_to_daily_totals(cur, new)
        account_stats.add_to_merchants_used(cur, new)
        account_stats.add_to_values_used(cur, new)
        merchants.add_to_daily_counts(cur, new)
        # Labels that arrived before their transactions count from now on (merchant_label_daily).
        labels.apply_pending_labels(cur, new)

    results: list[StoreResult | None] = []
    for index, t in enumerate(batch):
        if t.transaction_id in stored:
            original, decision = stored[t.transaction_id]
            results.append(StoreResult(original, "duplicate", decision))
        elif t.account_id in busy:
            results.append(None)
        elif index in repeats:
            results.append(StoreResult(t, "duplicate", decisions[t.transaction_id]))
        else:
            results.append(StoreResult(t, "stored", decisions[t.transaction_id]))
    return results


def _refuse_conflicts(batch: Sequence[Transaction], stored: dict[int, tuple[Transaction, Decision]]) -> None:
    conflicts = [
        (index, t.transaction_id, differing)
        for index, t in enumerate(batch)
        if t.transaction_id in stored and (differing := t.same_content(stored[t.transaction_id][0]))
    ]
    if conflicts:
        raise DuplicateIdConflict(conflicts)


def _index_request(
    batch: Sequence[Transaction],
) -> tuple[dict[int, int], set[int], list[tuple[int, int, list[str]]]]:
    first_index: dict[int, int] = {}
    repeats: set[int] = set()
    conflicts = []
    for index, t in enumerate(batch):
        seen = first_index.get(t.transaction_id)
        if seen is None:
            first_index[t.transaction_id] = index
            continue
        differing = t.same_content(batch[seen])
        if differing:
            conflicts.append((index, t.transaction_id, differing))
        else:
            repeats.add(index)
    return first_index, repeats, conflicts


def _load_histories(
    cur: psycopg2.extensions.cursor,
    new: list[Transaction],
    histories: dict[int, AccountHistory],
    reach_ms: int,
    with_days: bool = False,
    with_values: bool = False,
    window: tuple[dict[int, tuple[int, int]], dict[int, dict[str, dict[int, list[int]]]]] | None = None,
    written_by: Mapping[int, int | None] | None = None,
) -> set[int]:
    """Load what deciding each account's new transactions needs, whatever their timestamps.

    An account whose new transactions are all newer than everything stored (the usual case) is decided on its
    running totals and the stored transactions within the rules' widest window before its earliest new one. For
    an account with late or back-dated arrivals, the history before each new transaction comes from per-day
    totals plus the stored transactions from the start of that transaction's day (and within the window) up to
    it: a bounded read per new transaction, however much history lies after it.

    `with_days` (the 7- and 30-day windows): the tails also reach back to the start of each new transaction's day,
    and carry the per-day totals of the 29 days before the earliest one's day up to the latest one's day.
    `with_values` (the attribute features): the attribute values of the same stored transactions as the tails.
    `window`: _window_days(new) and those per-day totals, when lock_accounts has read them already.
    `written_by`: each account's account_stats.written_by as lock_accounts read it under the lock; an account's tail
    kept in memory (account_tails) is used instead of reading it when it is still the account's.

    Returns the accounts whose new transactions all come after their stored ones: their tails, as deciding leaves
    them, may be kept once the unit of work commits (account_tails.keep).
    """
    times: dict[int, list[int]] = defaultdict(list)
    for t in new:  # sorted by time
        times[t.account_id].append(t.ts)
    spans: dict[int, list[Span]] = {}
    late: dict[int, tuple[int, int]] = {}
    in_order: set[int] = set()
    for account_id, account_times in times.items():
        history, earliest = histories[account_id], account_times[0]
        if history.last_ts is not None and history.last_ts >= earliest:
            late[account_id] = (earliest // DAY_MS, account_times[-1] // DAY_MS)
            spans[account_id] = spans_before(account_times, reach_ms, from_day_start=True)
        else:
            whole = Prior(history.count, 0, 0, None, history.last_ts)
            history.stored_before = constant_totals(whole, {c: a.prior() for c, a in history.amounts.items()})
            low = earliest - reach_ms + 1
            if with_days:
                low = min(low, earliest - earliest % DAY_MS)
            in_order.add(account_id)
            # Every stored transaction is older than the earliest new one: only those within reach of it matter.
            taken = (
                None
                if written_by is None
                else account_tails.take(account_id, written_by.get(account_id), low, with_values)
            )
            if taken is not None:
                history.tail = taken.tail
                if taken.values is not None:
                    history.recent_values = taken.values
                continue
            history.tail = Timeline(complete_from=low)
            if history.last_ts is not None and history.last_ts >= low:
                spans[account_id] = [(low, earliest)]
    if with_values:
        near, values = transactions.account_rows_and_values(cur, spans)
        for account_id, recent in values.items():
            histories[account_id].recent_values = recent
    else:
        near = transactions.account_rows(cur, spans)
    days = account_stats.daily_totals(cur, late)
    for account_id, timeline in near.items():
        history = histories[account_id]
        if account_id in late:
            history.stored_before = CurrencyDailyTotals(*days[account_id], timeline.copy()).before
        history.tail = timeline
    if with_days:
        if window is None:
            reach_days = _window_days(new)
            window_days = account_stats.day_totals_for_windows(cur, reach_days)
        else:
            reach_days, window_days = window
        for account_id, (first, _) in reach_days.items():
            histories[account_id].tail.use_days(first, window_days[account_id])
    return in_order


def _window_days(transactions: Iterable[Transaction]) -> dict[int, tuple[int, int]]:
    """Per account, the UTC days (first, until) whose totals the day windows of its transactions read: the 29 days
    before the earliest one's day up to the latest one's day."""
    spans: dict[int, tuple[int, int]] = {}
    for t in transactions:
        low, high = spans.get(t.account_id, (t.ts, t.ts))
        spans[t.account_id] = (min(low, t.ts), max(high, t.ts))
    return {a: (low // DAY_MS - LONGEST_DAY_WINDOW + 1, high // DAY_MS) for a, (low, high) in spans.items()}
