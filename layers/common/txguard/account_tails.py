"""Each account's tail, kept in the function's memory from one batch to the next.

An account's tail is its stored transactions within the rules' reach before its new ones (timestamps, amounts in
units, and the attribute values when the rules read them): ingest reads it for every account of a batch, and it
was the largest read of a batch (about a sixth of a 5,000-transaction batch's wall time, for accounts with 30 to 80
transactions a day). After a batch commits, each account's tail as deciding left it (the stored rows plus the
batch's own) is what the database holds for the account from the tail's start on; the next batch for the account
takes it from here instead of reading it again.

When a kept tail is valid. Every unit of work that stores transactions for an account writes a random 63-bit
number of its own into the account's `account_stats.written_by` (migration 0024), in the statement that writes the
running totals, in the same database transaction as the rows. The next batch reads that number under the account's
lock. A kept tail is used only when it is the number written with it: no other writer (this function's or another's,
through any transport) has stored anything for the account since, and the rows are still those it wrote. A tail
is taken out when a batch uses it and kept again only after that batch's COMMIT has succeeded: a batch that rolls
back, fails or is retried leaves nothing behind, and its next attempt reads from the database. A database restored
to a copy holds, for each account, the number of the unit of work that left it so, with the same rows.

A tail is kept only for an account whose batch came in time order (every new transaction after every stored one:
the in-order path of ingest) and in one currency. Late arrivals read their tails as before. What is kept is
bounded: MAX_ENTRIES timestamps and attribute values in all, and MAX_ACCOUNTS accounts; the oldest-kept accounts
go first.

Any code that writes an account's stored transactions must write a new `written_by` with them
(account_stats.write_totals does). A writer that does not (code from before migration 0024, still serving while a
deploy rolls out) clears it instead, by the migration's trigger: its accounts' tails are then read again.
"""

from __future__ import annotations

import secrets
import threading
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from txguard.features import ATTRIBUTE_FIELDS, AccountHistory, RecentValues, Timeline

# What a function keeps at most: timestamps and attribute values (about 80-100 bytes each, with the amount or the
# value), and accounts (about 0.4 kB each, 1.4 kB with the attribute values' lists). Full, it held 17-28 MiB by
# tracemalloc for every shape of tail tried (tests/unit/test_account_tails.py keeps it under 40), of the ingest
# function's 512 MB.
MAX_ENTRIES = 200_000
MAX_ACCOUNTS = 20_000


class _Kept(NamedTuple):
    written_by: int
    complete_from: int  # epoch ms: the tail holds every stored transaction from here on
    ts: list[int]
    units: list[int]
    currency: str | None
    # Per attribute of features.ATTRIBUTE_FIELDS, (timestamps, values) of the rows that have one; None when the
    # rules did not read them, so the tail was read without them.
    values: dict[str, tuple[list[int], list[str]]] | None


def _size(kept: _Kept) -> int:
    """What a kept tail counts against MAX_ENTRIES: its timestamps and its attribute values."""
    return len(kept.ts) + (0 if kept.values is None else sum(len(ts) for ts, _ in kept.values.values()))


class Taken(NamedTuple):
    """A kept tail, as the database would have given it: the rows from `low` on."""

    tail: Timeline
    values: dict[str, RecentValues] | None


_kept: dict[int, _Kept] = {}
_entries = 0
_lock = threading.Lock()


def new_writer() -> int:
    """A random number in [1, 2^63) that identifies one unit of work's writes (`account_stats.written_by`)."""
    return secrets.randbits(63) or 1


def take(account_id: int, written_by: int | None, low: int, with_values: bool) -> Taken | None:
    """The kept tail of `account_id` from `low` (epoch ms) on, taken out of the memory, when it is still the
    account's (`written_by` is the number read under the account's lock) and reaches back to `low`, with the
    attribute values when `with_values`; None otherwise (read the tail from the database). Never raises."""
    global _entries
    with _lock:
        kept = _kept.pop(account_id, None)
        if kept is not None:
            _entries -= _size(kept)
    if kept is None or written_by is None or kept.written_by != written_by or kept.complete_from > low:
        return None
    if with_values and kept.values is None:
        return None
    start = bisect_left(kept.ts, low)
    if start == len(kept.ts):
        # As the database path leaves it: an empty tail with no currency, no attribute values loaded.
        return Taken(Timeline(complete_from=low), None)
    tail = Timeline.from_sorted(low, kept.ts[start:], kept.units[start:], kept.currency)
    if not with_values or kept.values is None:
        return Taken(tail, None)
    values = {}
    for name in ATTRIBUTE_FIELDS:
        ts, found = kept.values[name]
        first = bisect_left(ts, low)
        values[name] = RecentValues(ts[first:], found[first:])
    return Taken(tail, values)


def keep(written_by: int, histories: Mapping[int, AccountHistory], accounts: Iterable[int], with_values: bool) -> None:
    """Keep the tails of `accounts` as deciding left them in `histories`, written with `written_by`: called once the
    unit of work that wrote them has committed. A tail in several currencies is not kept. Never raises."""
    global _entries
    found = []
    for account_id in accounts:
        tail = histories[account_id].tail
        if tail.by_currency is not None:
            continue
        values = None
        if with_values:
            recent = histories[account_id].recent_values
            values = {
                name: (r.ts, r.values) if (r := recent.get(name)) is not None else ([], []) for name in ATTRIBUTE_FIELDS
            }
        found.append((account_id, _Kept(written_by, tail.complete_from, tail.ts, tail.units, tail.currency, values)))
    with _lock:
        for account_id, kept in found:
            replaced = _kept.pop(account_id, None)
            if replaced is not None:
                _entries -= _size(replaced)
            _kept[account_id] = kept
            _entries += _size(kept)
        while (_entries > MAX_ENTRIES or len(_kept) > MAX_ACCOUNTS) and _kept:
            _entries -= _size(_kept.pop(next(iter(_kept))))


def clear() -> None:
    """Forget every kept tail (tests; a function that switches databases need not: see the module's docstring)."""
    global _entries
    with _lock:
        _kept.clear()
        _entries = 0


def kept_entries() -> int:
    """How many timestamps and attribute values are kept in all (at most MAX_ENTRIES)."""
    return _entries


def kept_accounts() -> int:
    """How many accounts have a kept tail (at most MAX_ACCOUNTS)."""
    return len(_kept)
