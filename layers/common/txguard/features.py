"""Point-in-time features: what was known of an account (and its merchant) before a transaction.

"Before" means a strictly earlier timestamp; a window of width W at time t covers (t - W, t).
The same definitions are written in SQL in migrations/0002_detect_fraud.sql (transaction_features);
tests check that both give the same decisions.

Amounts are carried as integer ten-thousandths ("units") so that sums and sums of squares are exact.
The history of an account is held as aggregates of its stored transactions before a time (running totals, or
per-day totals for late arrivals) plus a sorted "tail" of the transactions within the windows' reach; a new
transaction costs a few bisections, not a scan of the history, whatever its timestamp.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import accumulate
from math import isqrt

UNITS_PER_AMOUNT = 10_000

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
WINDOWS: tuple[tuple[str, int], ...] = (("1m", MINUTE_MS), ("1h", HOUR_MS), ("24h", DAY_MS))
LONGEST_WINDOW_MS = DAY_MS


def window_reach_ms(needed: frozenset[str]) -> int:
    """How far back before a transaction the account's and merchant's tails must reach for these features."""
    widths = [width for name, width in WINDOWS if any(feature.endswith(f"_{name}") for feature in needed)]
    return max(widths, default=1)


def merchant_reach_ms(needed: frozenset[str]) -> int:
    """How far back a merchant's tail must reach for these features: 0 when none is about merchants."""
    merchant = frozenset(feature for feature in needed if feature.startswith("merchant_"))
    return window_reach_ms(merchant) if merchant else 0


FeatureValue = Decimal | int | None
Features = dict[str, FeatureValue]


@dataclass(frozen=True)
class FeatureInfo:
    """How a feature reads in a decision's explanation; `{count}` and `{merchant_id}` are filled in."""

    label: str
    money: bool = False


FEATURES: dict[str, FeatureInfo] = {
    "amount": FeatureInfo("amount", money=True),
    "count": FeatureInfo("the number of previous transactions"),
    "mean_amount": FeatureInfo("the mean of the {count} previous transactions", money=True),
    "std_amount": FeatureInfo("the standard deviation of the {count} previous amounts", money=True),
    "max_amount": FeatureInfo("the largest of the {count} previous amounts", money=True),
    "seconds_since_previous": FeatureInfo("the seconds since the previous transaction"),
    "account_age_seconds": FeatureInfo("the seconds since the account's first transaction"),
    "is_first_transaction": FeatureInfo("first transaction of the account (1 = yes)"),
    "count_1m": FeatureInfo("the number of transactions in the previous minute"),
    "sum_1m": FeatureInfo("the amount spent in the previous minute", money=True),
    "count_1h": FeatureInfo("the number of transactions in the previous hour"),
    "sum_1h": FeatureInfo("the amount spent in the previous hour", money=True),
    "count_24h": FeatureInfo("the number of transactions in the previous 24 hours"),
    "sum_24h": FeatureInfo("the amount spent in the previous 24 hours", money=True),
    "merchant_count_1m": FeatureInfo("the number of transactions at merchant {merchant_id} in the previous minute"),
    "merchant_sum_1m": FeatureInfo("the amount spent at merchant {merchant_id} in the previous minute", money=True),
    "merchant_count_1h": FeatureInfo("the number of transactions at merchant {merchant_id} in the previous hour"),
    "merchant_sum_1h": FeatureInfo("the amount spent at merchant {merchant_id} in the previous hour", money=True),
    "merchant_count_24h": FeatureInfo("the number of transactions at merchant {merchant_id} in the previous 24 hours"),
    "merchant_sum_24h": FeatureInfo("the amount spent at merchant {merchant_id} in the previous 24 hours", money=True),
}

ALL_FEATURES = frozenset(FEATURES)


def to_units(amount: Decimal) -> int:
    """Exact conversion; amounts are validated to at most four decimal places before they get here."""
    scaled = amount.scaleb(4)
    units = int(scaled)
    if units != scaled:
        raise ValueError(f"amount {amount} has more than four decimal places")
    return units


def from_units(units: int) -> Decimal:
    return Decimal(units).scaleb(-4)


@dataclass
class Timeline:
    """Sorted timestamps (ms) with amounts and prefix sums, complete from `complete_from` onwards."""

    complete_from: int
    ts: list[int] = field(default_factory=list)
    units: list[int] = field(default_factory=list)
    _prefix: list[int] = field(default_factory=lambda: [0])

    @classmethod
    def of(cls, complete_from: int, rows: list[tuple[int, int]]) -> Timeline:
        ordered = sorted(rows)
        return cls.from_sorted(complete_from, [ts for ts, _ in ordered], [units for _, units in ordered])

    @classmethod
    def from_sorted(cls, complete_from: int, ts: list[int], units: list[int]) -> Timeline:
        return cls(complete_from, ts, units, [0, *accumulate(units)])

    def add(self, ts: int, units: int) -> None:
        if not self.ts or ts >= self.ts[-1]:
            self.ts.append(ts)
            self.units.append(units)
            self._prefix.append(self._prefix[-1] + units)
            return
        position = bisect_left(self.ts, ts)
        self.ts.insert(position, ts)
        self.units.insert(position, units)
        del self._prefix[position + 1 :]
        for value in self.units[position:]:
            self._prefix.append(self._prefix[-1] + value)

    def before(self, t: int) -> int:
        """Index one past the last entry strictly before t."""
        return bisect_left(self.ts, t)

    def window(self, t: int, width_ms: int) -> tuple[int, int]:
        """Count and sum (units) of the entries in (t - width, t)."""
        if t - width_ms + 1 < self.complete_from:
            raise ValueError(f"this timeline does not reach back {width_ms} ms before {t}")
        end = bisect_left(self.ts, t)
        start = bisect_left(self.ts, t - width_ms + 1)
        return end - start, self._prefix[end] - self._prefix[start]


@dataclass(frozen=True, slots=True)
class Prior:
    """Aggregates of transactions strictly before some time: count, sums (units), largest amount (units) and the
    latest timestamp (ms); None where there are none."""

    count: int = 0
    sum_units: int = 0
    sum_sq_units: int = 0
    max_units: int | None = None
    last_ts: int | None = None

    def plus(self, ts: Sequence[int], units: Sequence[int]) -> Prior:
        """These aggregates with more transactions (timestamps sorted) added."""
        if not units:
            return self
        largest = max(units)
        return Prior(
            self.count + len(units),
            self.sum_units + sum(units),
            self.sum_sq_units + sum(u * u for u in units),
            largest if self.max_units is None else max(self.max_units, largest),
            ts[-1] if self.last_ts is None else max(self.last_ts, ts[-1]),
        )


class DailyTotals:
    """An account's stored history before any time t, read without scanning it.

    Per-day totals (the account_daily table, maintained on insert) give everything before t's day; the stored
    transactions from the start of t's day up to t, loaded for every t that will be asked about, give the rest.
    So the history before an old timestamp costs at most one row per day of the account's life (days are
    bounded: timestamps start in 2000) plus one day of transactions.
    """

    def __init__(self, before: Prior, days: Sequence[tuple[int, Prior]], near: Timeline) -> None:
        # before: the totals of every day before the first of `days`; days: (day number, totals of that day),
        # sorted; near: the stored transactions around the times asked for.
        self._days = [day for day, _ in days]
        self._cumulative = [before]
        for _, totals in days:
            last = self._cumulative[-1]
            self._cumulative.append(
                Prior(
                    last.count + totals.count,
                    last.sum_units + totals.sum_units,
                    last.sum_sq_units + totals.sum_sq_units,
                    _larger(last.max_units, totals.max_units),
                    _larger(last.last_ts, totals.last_ts),
                )
            )
        # Over the near transactions: running count, sum and sum of squares, and the largest amount since the start
        # of each one's day, so that a day's part before t costs two bisections.
        self._near_ts = near.ts
        self._near_from = near.complete_from
        self._sums = [0, *accumulate(near.units)]
        self._squares = [0, *accumulate(u * u for u in near.units)]
        self._day_max: list[int] = []
        for i, (ts, units) in enumerate(zip(near.ts, near.units, strict=True)):
            same_day = i > 0 and ts // DAY_MS == near.ts[i - 1] // DAY_MS
            self._day_max.append(max(units, self._day_max[-1]) if same_day else units)

    def before(self, t: int) -> Prior:
        """The stored transactions strictly before t; t's day must be covered by the near transactions."""
        day_start = t - t % DAY_MS
        if day_start < self._near_from:
            raise ValueError("the stored transactions loaded do not cover the start of this day")
        prior = self._cumulative[bisect_left(self._days, day_start // DAY_MS)]
        first, end = bisect_left(self._near_ts, day_start), bisect_left(self._near_ts, t)
        if first == end:
            return prior
        return Prior(
            prior.count + end - first,
            prior.sum_units + self._sums[end] - self._sums[first],
            prior.sum_sq_units + self._squares[end] - self._squares[first],
            _larger(prior.max_units, self._day_max[end - 1]),
            self._near_ts[end - 1],
        )


def _larger(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


@dataclass
class AccountHistory:
    """What is known of an account before each transaction to decide, which come in time order.

    `stored_before(t)` gives the account's stored transactions strictly before t: the running totals when every
    transaction to decide is newer than all stored ones, DailyTotals for late arrivals. The `added_*` fields
    accumulate the transactions decided since (all before the next one: decisions are taken in time order). The tail
    holds the stored transactions within the windows' reach of each transaction to decide, and the added ones.
    The totals (count ... last_ts) cover everything, stored and added: they are written back to account_stats.
    """

    count: int
    sum_units: int
    sum_sq_units: int
    max_units: int | None
    max_ts: int | None
    first_ts: int | None
    last_ts: int | None
    tail: Timeline
    stored_before: Callable[[int], Prior]
    # The transactions added so far (plain fields: updated once per transaction decided).
    added_count: int = 0
    added_sum_units: int = 0
    added_sum_sq_units: int = 0
    added_max_units: int | None = None
    added_last_ts: int | None = None

    def features(self, t: int, units: int, needed: frozenset[str] = ALL_FEATURES) -> Features:
        """The account's features for a transaction at t; only those in `needed` (plus amount and count).

        Raises ValueError for a t not after every transaction added so far, or outside what was loaded.
        """
        if self.added_last_ts is not None and self.added_last_ts >= t:
            raise ValueError("transactions must be decided in time order")
        stored = self.stored_before(t)
        count = stored.count + self.added_count
        total = stored.sum_units + self.added_sum_units
        total_sq = stored.sum_sq_units + self.added_sum_sq_units

        result: Features = {"amount": from_units(units), "count": count}
        if count:
            if "mean_amount" in needed:
                result["mean_amount"] = _mean(total, count)
            if "std_amount" in needed:
                result["std_amount"] = _std(total, total_sq, count)
            if "max_amount" in needed:
                largest = _larger(stored.max_units, self.added_max_units)
                assert largest is not None
                result["max_amount"] = from_units(largest)
            if "seconds_since_previous" in needed:
                end = self.tail.before(t)
                previous_ts = _larger(stored.last_ts, self.tail.ts[end - 1] if end else None)
                assert previous_ts is not None
                result["seconds_since_previous"] = Decimal(t - previous_ts).scaleb(-3)
            if "account_age_seconds" in needed:
                assert self.first_ts is not None
                result["account_age_seconds"] = Decimal(t - self.first_ts).scaleb(-3)
            result["is_first_transaction"] = 0
        else:
            result["account_age_seconds"] = Decimal(0)
            result["is_first_transaction"] = 1
        for name, width in WINDOWS:
            if f"count_{name}" in needed or f"sum_{name}" in needed:
                n, s = self.tail.window(t, width)
                result[f"count_{name}"] = n
                result[f"sum_{name}"] = from_units(s)
        return result

    def add(self, t: int, units: int) -> None:
        self.tail.add(t, units)
        self.added_count += 1
        self.added_sum_units += units
        self.added_sum_sq_units += units * units
        if self.added_max_units is None or units > self.added_max_units:
            self.added_max_units = units
        self.added_last_ts = t  # added in time order
        self.count += 1
        self.sum_units += units
        self.sum_sq_units += units * units
        if self.max_units is None or units > self.max_units or (units == self.max_units and t < (self.max_ts or t)):
            self.max_units, self.max_ts = units, t
        self.first_ts = t if self.first_ts is None else min(self.first_ts, t)
        self.last_ts = t if self.last_ts is None else max(self.last_ts, t)


def merchant_features(merchant: Timeline | None, t: int, needed: frozenset[str] = ALL_FEATURES) -> Features:
    result: Features = {}
    for name, width in WINDOWS:
        if f"merchant_count_{name}" not in needed and f"merchant_sum_{name}" not in needed:
            continue
        if merchant is None:
            result[f"merchant_count_{name}"] = result[f"merchant_sum_{name}"] = None
        else:
            n, s = merchant.window(t, width)
            result[f"merchant_count_{name}"] = n
            result[f"merchant_sum_{name}"] = from_units(s)
    return result


def _mean(total_units: int, count: int) -> Decimal:
    """total / count, rounded half up to six places, in exact integer arithmetic."""
    return _six_places(abs(total_units) * 100, count, negative=total_units < 0)


def _std(total_units: int, total_sq_units: int, count: int) -> Decimal:
    """Population standard deviation, sqrt((n*sum(x^2) - sum(x)^2) / n^2), rounded half up to six places.

    200 * sqrt(spread) is floored exactly with isqrt; flooring before the halving division changes nothing.
    """
    spread = max(count * total_sq_units - total_units * total_units, 0)
    return _six_places_of_floor(isqrt(40_000 * spread), count)


def _six_places(numerator: int, count: int, negative: bool = False) -> Decimal:
    """numerator / count (both >= 0, the numerator in millionths) rounded half up, as a six-place decimal."""
    millionths = (2 * numerator + count) // (2 * count)
    return Decimal(-millionths if negative else millionths).scaleb(-6)


def _six_places_of_floor(doubled_floor: int, count: int) -> Decimal:
    """Rounded half up from floor(2 * count * x), where x (in millionths) is the value wanted."""
    return Decimal((doubled_floor + count) // (2 * count)).scaleb(-6)


Span = tuple[int, int]  # [low, high) in epoch milliseconds


def spans_before(times: Sequence[int], reach_ms: int, from_day_start: bool = False) -> list[Span]:
    """The merged spans [t - reach + 1, t) (from the start of t's UTC day too, if asked) for sorted times."""
    spans: list[Span] = []
    for t in times:
        low = t - reach_ms + 1
        if from_day_start:
            low = min(low, t - t % DAY_MS)
        if spans and low <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], t))
        else:
            spans.append((low, t))
    return spans
