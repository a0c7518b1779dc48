"""Point-in-time features: what was known of an account (and its merchant) before a transaction.

"Before" means a strictly earlier timestamp; a window of width W at time t covers (t - W, t).
The same definitions are written in SQL in migrations/0011_history_features.sql (transaction_features);
tests check that both give the same values and decisions.

Windows of 1 minute, 1 hour and 24 hours are exact. Windows of 7 and 30 days are day-aligned: the transaction's
UTC day up to (strictly before) its timestamp plus the previous 6 (29) whole UTC days, so they cost a few per-day
totals (account_daily, merchant_daily) and one day of transactions, never a scan. Merchant risk reads the
labelled frauds per day (merchant_label_daily) with a delay; local-time features read the rule set's time zone.

Attribute features read the account's recent values of one attribute: `distinct_countries_24h`,
`distinct_devices_24h` and `distinct_cards_24h` count the distinct values among the account's transactions in the
24 hours before (t - 24 h, t) AND the transaction itself (so a transaction with a country and none before has
distinct_countries_24h 1; transactions without the attribute add nothing); they cost a bisection and the values
of that window (bounded by the account's activity in a day, never by its history). `new_country` and `new_device`
are 1 when no earlier transaction of the account (strictly before t) has this value, else 0, and missing when the
transaction has none: the first use of each value per account is kept (account_values), moved back by a
late arrival, as `merchant_used_before` does with account_merchants.

Amounts are carried as integer ten-thousandths ("units") so that sums and sums of squares are exact.
Currencies are never mixed: counts and times are over all of an account's (merchant's) transactions, every amount
feature (sums, means, standard deviation, largest amount, ratio) over those in the currency of the transaction
decided. A timeline that holds one currency (the usual case) answers both from the same entries; a second currency
splits it into one timeline per currency beside the whole one.
The history of an account is held as aggregates of its stored transactions before a time (running totals, or
per-day totals for late arrivals) plus a sorted "tail" of the transactions within the windows' reach; a new
transaction costs a few bisections, not a scan of the history, whatever its timestamp.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from functools import lru_cache
from itertools import accumulate, islice
from math import isqrt
from zoneinfo import ZoneInfo

UNITS_PER_AMOUNT = 10_000

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
WINDOWS: tuple[tuple[str, int], ...] = (("1m", MINUTE_MS), ("1h", HOUR_MS), ("24h", DAY_MS))
LONGEST_WINDOW_MS = DAY_MS
# Day-aligned windows: (suffix, days including the transaction's own day up to its timestamp).
DAY_WINDOWS: tuple[tuple[str, int], ...] = (("7d", 7), ("30d", 30))
# Merchant risk windows (whole days of transactions, ending the label delay before the transaction's day).
RISK_WINDOWS: tuple[tuple[str, int], ...] = (("1d", 1), ("7d", 7), ("30d", 30))
LONGEST_DAY_WINDOW = 30

ACCOUNT_DAY_FEATURES = frozenset(
    {"count_7d", "sum_7d", "mean_amount_7d", "count_30d", "sum_30d", "mean_amount_30d", "amount_to_mean_30d"}
)
MERCHANT_DAY_FEATURES = frozenset({"merchant_count_7d", "merchant_count_30d"})
RISK_FEATURES = frozenset({"merchant_risk_1d", "merchant_risk_7d", "merchant_risk_30d"})
LOCAL_TIME_FEATURES = frozenset({"hour_of_day", "is_night", "is_weekend"})
NIGHT_UNTIL_HOUR = 6  # a local hour <= 6 is night (the Fraud Detection Handbook's TX_DURING_NIGHT)

DEFAULT_TIME_ZONE = "UTC"
DEFAULT_LABEL_DELAY_DAYS = 7
MAX_LABEL_DELAY_DAYS = 365


@dataclass(frozen=True, slots=True)
class FeatureSettings:
    """What a detector version pins about its features: the IANA time zone of hour_of_day, is_night and
    is_weekend, and the delay (whole days) before merchant risk counts a day's transactions."""

    time_zone: str = DEFAULT_TIME_ZONE
    label_delay_days: int = DEFAULT_LABEL_DELAY_DAYS


DEFAULT_FEATURE_SETTINGS = FeatureSettings()


def needs_account_days(needed: frozenset[str]) -> bool:
    """Whether these features read the account's per-day totals (the 7- and 30-day windows)."""
    return not needed.isdisjoint(ACCOUNT_DAY_FEATURES)


def merchant_days_back(needed: frozenset[str], settings: FeatureSettings) -> int:
    """How many whole days before a transaction's day its merchant's per-day counts must reach (0: none)."""
    back = 0
    if not needed.isdisjoint(MERCHANT_DAY_FEATURES):
        back = LONGEST_DAY_WINDOW - 1
    if not needed.isdisjoint(RISK_FEATURES):
        back = max(back, settings.label_delay_days + max(w for _, w in RISK_WINDOWS))
    return back


def window_reach_ms(needed: frozenset[str]) -> int:
    """How far back before a transaction the account's and merchant's tails must reach for these features."""
    widths = [width for name, width in WINDOWS if any(feature.endswith(f"_{name}") for feature in needed)]
    return max(widths, default=1)


def merchant_reach_ms(needed: frozenset[str]) -> int:
    """How far back a merchant's tail must reach for these features: 0 when none is about merchants."""
    merchant = frozenset(f for f in needed if f.startswith("merchant_") and f != "merchant_used_before")
    return window_reach_ms(merchant) if merchant else 0


# A feature is a number (None: missing); a str is a text field's value (rule_engine), read by rules, never stored.
FeatureValue = Decimal | int | str | None
Features = dict[str, FeatureValue]
# What deciding reads of one transaction's features: a Features dict, or a row read from a chunk's columns on
# demand (feature_columns.FeatureRow), with the same keys and values.
FeatureReader = Mapping[str, FeatureValue]


def model_score_feature(model_score: float) -> Decimal:
    """`model_score` as rules read it: the shortest decimal that gives back the same double (repr)."""
    return Decimal(repr(model_score))


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
    "mean_amount_24h": FeatureInfo("the mean amount of the previous 24 hours", money=True),
    "count_7d": FeatureInfo("the number of transactions this UTC day and the 6 days before"),
    "sum_7d": FeatureInfo("the amount spent this UTC day and the 6 days before", money=True),
    "mean_amount_7d": FeatureInfo("the mean amount of this UTC day and the 6 days before", money=True),
    "count_30d": FeatureInfo("the number of transactions this UTC day and the 29 days before"),
    "sum_30d": FeatureInfo("the amount spent this UTC day and the 29 days before", money=True),
    "mean_amount_30d": FeatureInfo("the mean amount of this UTC day and the 29 days before", money=True),
    "amount_to_mean_30d": FeatureInfo("the amount divided by the mean of this UTC day and the 29 days before"),
    "merchant_used_before": FeatureInfo("an earlier transaction of the account at merchant {merchant_id} (1 = yes)"),
    "hour_of_day": FeatureInfo("the local hour of day"),
    "is_night": FeatureInfo("at night, local hour 6 or earlier (1 = yes)"),
    "is_weekend": FeatureInfo("on a local Saturday or Sunday (1 = yes)"),
    "merchant_count_7d": FeatureInfo(
        "the number of transactions at merchant {merchant_id} this UTC day and the 6 days before"
    ),
    "merchant_count_30d": FeatureInfo(
        "the number of transactions at merchant {merchant_id} this UTC day and the 29 days before"
    ),
    "merchant_risk_1d": FeatureInfo("the share of known frauds at merchant {merchant_id} over 1 day, delayed"),
    "merchant_risk_7d": FeatureInfo("the share of known frauds at merchant {merchant_id} over 7 days, delayed"),
    "merchant_risk_30d": FeatureInfo("the share of known frauds at merchant {merchant_id} over 30 days, delayed"),
    "distinct_countries_24h": FeatureInfo("the number of countries of the previous 24 hours and this transaction"),
    "distinct_devices_24h": FeatureInfo("the number of devices of the previous 24 hours and this transaction"),
    "distinct_cards_24h": FeatureInfo("the number of cards of the previous 24 hours and this transaction"),
    "new_country": FeatureInfo("the account's first transaction in this country (1 = yes)"),
    "new_device": FeatureInfo("the account's first transaction from this device (1 = yes)"),
}

# The attribute each attribute feature reads (Transaction's field name).
ATTRIBUTE_FIELDS = ("card_id", "country", "device_id")  # those the attribute features read
DISTINCT_FEATURES = {
    "distinct_countries_24h": "country",
    "distinct_devices_24h": "device_id",
    "distinct_cards_24h": "card_id",
}
NEW_VALUE_FEATURES = {"new_country": "country", "new_device": "device_id"}
# The attributes whose first use per account is kept (account_values).
FIRST_USE_FIELDS = tuple(sorted(set(NEW_VALUE_FEATURES.values())))
ATTRIBUTE_FEATURES = frozenset(DISTINCT_FEATURES) | frozenset(NEW_VALUE_FEATURES)

# What rules may read besides the features: the champion model's probability 0-1 (models/serving.py), missing (so
# no comparison with it holds) when there is no champion or it fell back. Never a model's input, never recorded.
MODEL_SCORE = "model_score"
RULE_FEATURES: dict[str, FeatureInfo] = {**FEATURES, MODEL_SCORE: FeatureInfo("the model's score")}

ALL_FEATURES = frozenset(FEATURES)
# Not a feature (rules cannot read it, it is never stored): how many previous transactions of an account with
# several currencies are in the decided one's, which mean_amount, std_amount and max_amount are over; the
# explanations' "{count}" of those. Missing when it equals `count` (an account in one currency).
COUNT_IN_CURRENCY = "_count_in_currency"
# The features running totals and a tail of recent transactions give alone: no per-day totals, label steps, time
# zone or first use of merchants loaded.
TAIL_FEATURES = (
    ALL_FEATURES
    - ACCOUNT_DAY_FEATURES
    - MERCHANT_DAY_FEATURES
    - RISK_FEATURES
    - LOCAL_TIME_FEATURES
    - ATTRIBUTE_FEATURES
    - {"merchant_used_before"}
)


def list_feature(name: str) -> str:
    """The features' key of whether the transaction's value is an item of the list `name` (1 or 0; rule_engine)."""
    return f"in list {name}"


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
    """Sorted timestamps (ms) with amounts and prefix sums, complete from `complete_from` onwards.

    When `days` is set (a dict), it holds per-UTC-day [count, sum of units], complete for the days from
    `days_from` on (loaded per-day totals plus every transaction added since), for the day-aligned windows.
    A merchant's timeline also holds its `label_steps`: (tx day, known day, signed frauds) from
    merchant_label_daily, for merchant risk.

    `currency` is the one currency of every entry (None: not known, or nothing in it). Once entries of a second
    currency are in it, `by_currency` holds one timeline per currency beside this whole one: counts read the whole
    timeline, amounts the currency's (window_in, day_windows_in).
    """

    complete_from: int
    ts: list[int] = field(default_factory=list)
    units: list[int] = field(default_factory=list)
    _prefix: list[int] = field(default_factory=lambda: [0])
    days: dict[int, list[int]] | None = None
    days_from: int = -(2**31)
    label_steps: list[tuple[int, int, int]] = field(default_factory=list)
    currency: str | None = None
    by_currency: dict[str, Timeline] | None = None
    _day_cache: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    _risk_cache: dict[int, tuple[Decimal, ...]] = field(default_factory=dict)
    _cached_until: int = -(2**31)

    @classmethod
    def of(cls, complete_from: int, rows: list[tuple[int, int]], currency: str | None = None) -> Timeline:
        ordered = sorted(rows)
        return cls.from_sorted(complete_from, [ts for ts, _ in ordered], [units for _, units in ordered], currency)

    @classmethod
    def from_sorted(cls, complete_from: int, ts: list[int], units: list[int], currency: str | None = None) -> Timeline:
        return cls(complete_from, ts, units, [0, *accumulate(units)], currency=currency)

    @classmethod
    def mixed(cls, complete_from: int, ts: list[int], units: list[int], currencies: list[str]) -> Timeline:
        """A timeline of sorted entries in several currencies (`currencies[i]` is entry i's)."""
        whole = cls.from_sorted(complete_from, ts, units)
        parts: dict[str, tuple[list[int], list[int]]] = {}
        for t, u, c in zip(ts, units, currencies, strict=True):
            part = parts.setdefault(c, ([], []))
            part[0].append(t)
            part[1].append(u)
        if len(parts) == 1:
            whole.currency = currencies[0]
        elif parts:
            whole.by_currency = {c: cls.from_sorted(complete_from, pt, pu, c) for c, (pt, pu) in parts.items()}
        return whole

    def copy(self) -> Timeline:
        """The entries and per-day totals, copied (not the label steps or caches)."""
        copied = Timeline(
            self.complete_from,
            list(self.ts),
            list(self.units),
            list(self._prefix),
            None if self.days is None else {day: list(totals) for day, totals in self.days.items()},
            self.days_from,
            currency=self.currency,
        )
        if self.by_currency is not None:
            copied.by_currency = {c: part.copy() for c, part in self.by_currency.items()}
        return copied

    def _empty_like(self, currency: str) -> Timeline:
        return Timeline(
            self.complete_from, days=None if self.days is None else {}, days_from=self.days_from, currency=currency
        )

    def sub(self, currency: str) -> Timeline:
        """The entries (and per-day totals) in `currency` alone: this timeline itself while it holds no other."""
        if self.by_currency is not None:
            part = self.by_currency.get(currency)
            return part if part is not None else self._empty_like(currency)
        return self if self.currency in (None, currency) else self._empty_like(currency)

    def _part(self, currency: str) -> Timeline:
        """The timeline of `currency` that additions go to, split off this one on the first second currency."""
        if self.by_currency is None:
            if self.currency is None:
                self.currency = currency
            if self.currency == currency:
                return self
            self.by_currency = {self.currency: self.copy()}
        part = self.by_currency.get(currency)
        if part is None:
            part = self.by_currency[currency] = self._empty_like(currency)
        return part

    def use_days(self, days_from: int, by_currency: dict[str, dict[int, list[int]]]) -> None:
        """Per-day [count, sum of units] per currency, complete from day `days_from`, replacing any held."""
        self.days_from = days_from
        self._day_cache.clear()
        self._risk_cache.clear()
        currencies = set(by_currency)
        if self.by_currency is not None:
            currencies.update(self.by_currency)
        elif self.currency is not None:
            currencies.add(self.currency)
        if len(currencies) <= 1 and self.by_currency is None:
            if currencies:
                self.currency = next(iter(currencies))
            self.days = {day: list(totals) for days in by_currency.values() for day, totals in days.items()}
            return
        for currency in currencies:
            self._part(currency)
        assert self.by_currency is not None
        whole: dict[int, list[int]] = {}
        for currency, part in self.by_currency.items():
            part.days = {day: list(totals) for day, totals in by_currency.get(currency, {}).items()}
            part.days_from = days_from
            part._day_cache.clear()
            for day, (count, total) in part.days.items():
                totals = whole.setdefault(day, [0, 0])
                totals[0] += count
                totals[1] += total
        self.days = whole

    def add(self, ts: int, units: int, currency: str | None = None) -> None:
        if currency is not None and (self.by_currency is not None or self.currency != currency):
            part = self._part(currency)
            if part is not self:
                part.add(ts, units)
        if self.days is not None:
            day = ts // DAY_MS
            totals = self.days.get(day)
            if totals is None:
                self.days[day] = [1, units]
            else:
                totals[0] += 1
                totals[1] += units
            if day < self._cached_until:
                # Cached windows end before their day: only an addition to an earlier day (out of time order)
                # can change one.
                self._day_cache.clear()
                self._risk_cache.clear()
                self._cached_until = day
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

    def add_all(self, ts: Sequence[int], units: Sequence[int], currency: str) -> None:
        """add() each entry, in this order (ts ascending), in one currency: the same timeline, built in bulk when
        they all come after its entries in its own currency."""
        if (self.by_currency is not None or self.currency not in (None, currency)) or (self.ts and ts[0] < self.ts[-1]):
            for t, u in zip(ts, units, strict=True):
                self.add(t, u, currency)
            return
        self.currency = currency
        if self.days is not None:
            days = self.days
            for t, u in zip(ts, units, strict=True):
                day = t // DAY_MS
                totals = days.get(day)
                if totals is None:
                    days[day] = [1, u]
                else:
                    totals[0] += 1
                    totals[1] += u
            first_day = ts[0] // DAY_MS
            if first_day < self._cached_until:  # as add() does for its first entry before the cached windows' end
                self._day_cache.clear()
                self._risk_cache.clear()
                self._cached_until = first_day
        self.ts.extend(ts)
        self.units.extend(units)
        self._prefix.extend(islice(accumulate(units, initial=self._prefix[-1]), 1, None))

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

    def whole_days(self, first: int, until: int) -> tuple[int, int]:
        """Count and sum (units) over the UTC days [first, until), from the per-day totals."""
        if self.days is None or first < self.days_from:
            raise ValueError(f"the per-day totals loaded do not reach back to day {first}")
        key = (until, until - first)
        cached = self._day_cache.get(key)
        if cached is None:
            count = total = 0
            days = self.days
            if len(days) < until - first:  # fewer days with transactions than days in the window: visit those
                for day, totals in days.items():
                    if first <= day < until:
                        count += totals[0]
                        total += totals[1]
            else:
                for day in range(first, until):
                    found = days.get(day)
                    if found is not None:
                        count += found[0]
                        total += found[1]
            if len(self._day_cache) > 64:
                self._day_cache.clear()
            cached = self._day_cache[key] = (count, total)
            self._cached_until = max(self._cached_until, until)
        return cached

    def day_windows(self, t: int) -> list[tuple[int, int]]:
        """Count and sum (units) of each day-aligned window of DAY_WINDOWS: t's UTC day up to t plus the previous
        6 (29) days. The part of t's day is read once for all of them."""
        day = t // DAY_MS
        n, s = self.window(t, t - day * DAY_MS + 1) if t > day * DAY_MS else (0, 0)
        windows = []
        for _, days in DAY_WINDOWS:
            count, total = self.whole_days(day - days + 1, day)
            windows.append((count + n, total + s))
        return windows

    def window_in(self, t: int, width_ms: int, currency: str) -> tuple[int, int, int]:
        """Count of every entry in (t - width, t), and count and sum (units) of those in `currency`."""
        n, s = self.window(t, width_ms)
        if self.by_currency is None:
            return (n, n, s) if self.currency in (None, currency) else (n, 0, 0)
        part = self.by_currency.get(currency)
        if part is None:
            return n, 0, 0
        n_c, s_c = part.window(t, width_ms)
        return n, n_c, s_c

    def day_windows_in(self, t: int, currency: str) -> list[tuple[int, int, int]]:
        """day_windows with, for each, the count of every entry and the count and sum (units) of `currency`'s."""
        whole = self.day_windows(t)
        if self.by_currency is None:
            if self.currency in (None, currency):
                return [(n, n, s) for n, s in whole]
            return [(n, 0, 0) for n, _ in whole]
        part = self.by_currency.get(currency)
        if part is None:
            return [(n, 0, 0) for n, _ in whole]
        return [(n, n_c, s_c) for (n, _), (n_c, s_c) in zip(whole, part.day_windows(t), strict=True)]

    def use_label_steps(self, steps: list[tuple[int, int, int]]) -> None:
        """Read merchant risk from these (tx day, known day, signed frauds) steps from now on."""
        self.label_steps = steps
        self._risk_cache.clear()

    def risk(self, t: int, delay_days: int) -> tuple[Decimal, ...]:
        """merchant_risk for each of RISK_WINDOWS: frauds known before t's day among the transactions of the
        days [d - delay - w, d - delay) ÷ those transactions, 0 when there are none; six places, half up."""
        day = t // DAY_MS
        cached = self._risk_cache.get(day)
        if cached is None:
            end = day - delay_days
            values = []
            for (_, width), frauds in zip(RISK_WINDOWS, known_frauds(self.label_steps, day, delay_days), strict=True):
                count, _ = self.whole_days(end - width, end)
                values.append(_six_places(frauds * 1_000_000, count) if count else _ZERO_RISK)
            if len(self._risk_cache) > 16:
                self._risk_cache.clear()
            cached = self._risk_cache[day] = tuple(values)
            self._cached_until = max(self._cached_until, day)
        return cached


_ZERO_RISK = Decimal("0.000000")


def known_frauds(label_steps: Sequence[tuple[int, int, int]], day: int, delay_days: int) -> tuple[int, ...]:
    """For a transaction on UTC `day`, per RISK_WINDOWS (width w): the signed frauds among the (tx day, known day,
    signed frauds) label steps of the days [day - delay - w, day - delay) known before `day` (merchant risk's
    numerator)."""
    end = day - delay_days
    return tuple(
        sum(f for tx_day, known, f in label_steps if end - width <= tx_day < end and known < day)
        for _, width in RISK_WINDOWS
    )


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


# The account's stored transactions strictly before a time t, as (every currency's: count and latest timestamp;
# those in the currency asked for: count, sums, largest amount).
StoredBefore = Callable[[int, str], tuple[Prior, Prior]]

_NOTHING = Prior()


@dataclass(frozen=True, slots=True)
class ConstantTotals:
    """StoredBefore giving the same totals before every time asked about: for accounts whose stored transactions
    are all older than those to decide (which the columnar feature step, feature_columns, relies on)."""

    whole: Prior
    by_currency: Mapping[str, Prior]

    def __call__(self, t: int, currency: str) -> tuple[Prior, Prior]:
        return self.whole, self.by_currency.get(currency, _NOTHING)


def constant_totals(whole: Prior, by_currency: Mapping[str, Prior]) -> StoredBefore:
    """The same totals before every time asked about: for accounts whose stored transactions are all older."""
    return ConstantTotals(whole, by_currency)


class CurrencyDailyTotals:
    """DailyTotals over every currency (for counts and times) and over each currency alone (for amounts).

    `before` and `days` are per currency, as DailyTotals takes them; `near` holds every currency's stored
    transactions around the times asked about. An account with one currency reads one DailyTotals for both.
    """

    def __init__(
        self, before: Mapping[str, Prior], days: Mapping[str, Sequence[tuple[int, Prior]]], near: Timeline
    ) -> None:
        currencies = set(before) | set(days)
        if near.by_currency is not None:
            currencies.update(near.by_currency)
        elif near.currency is not None:
            currencies.add(near.currency)
        if len(currencies) == 1:
            (currency,) = currencies
            self._single: str | None = currency
            self._whole = DailyTotals(before.get(currency, _NOTHING), days.get(currency, ()), near)
            self._parts: dict[str, DailyTotals] = {}
            return
        self._single = None
        whole_before = _combined(before.values())
        by_day: dict[int, list[Prior]] = {}
        for currency_days in days.values():
            for day, totals in currency_days:
                by_day.setdefault(day, []).append(totals)
        whole_days = [(day, _combined(by_day[day])) for day in sorted(by_day)]
        self._whole = DailyTotals(whole_before, whole_days, near)
        self._parts = {
            c: DailyTotals(before.get(c, _NOTHING), days.get(c, ()), near.sub(c)) for c in sorted(currencies)
        }

    def before(self, t: int, currency: str) -> tuple[Prior, Prior]:
        """(every currency's, `currency`'s) stored transactions strictly before t."""
        whole = self._whole.before(t)
        if currency == self._single:
            return whole, whole
        part = self._parts.get(currency)
        return whole, _NOTHING if part is None else part.before(t)


def _combined(totals: Iterable[Prior]) -> Prior:
    """Counts and latest timestamps added up over currencies (the sums of different currencies are not used)."""
    count, last = 0, None
    for p in totals:
        count += p.count
        last = _larger(last, p.last_ts)
    return Prior(count, 0, 0, None, last)


@dataclass(slots=True)
class Amounts:
    """Running totals of an account's transactions in one currency: count, sum and sum of squares (units), the
    largest amount (units) and the earliest timestamp (ms) it occurs at."""

    count: int = 0
    sum_units: int = 0
    sum_sq_units: int = 0
    max_units: int | None = None
    max_ts: int | None = None

    def prior(self, last_ts: int | None = None) -> Prior:
        return Prior(self.count, self.sum_units, self.sum_sq_units, self.max_units, last_ts)

    def add_all(self, ts: Sequence[int], units: Sequence[int]) -> None:
        """add() each, in this order (ts ascending)."""
        self.count += len(units)
        self.sum_units += sum(units)
        self.sum_sq_units += sum(u * u for u in units)
        largest = max(units)
        at = ts[units.index(largest)]  # its earliest timestamp
        if (
            self.max_units is None
            or largest > self.max_units
            or (largest == self.max_units and at < (self.max_ts or at))
        ):
            self.max_units, self.max_ts = largest, at

    def add(self, t: int, units: int) -> None:
        self.count += 1
        self.sum_units += units
        self.sum_sq_units += units * units
        if self.max_units is None or units > self.max_units or (units == self.max_units and t < (self.max_ts or t)):
            self.max_units, self.max_ts = units, t


@dataclass
class RecentValues:
    """The values of one attribute of an account's transactions (those that have one), sorted by timestamp (ms)."""

    ts: list[int] = field(default_factory=list)
    values: list[str] = field(default_factory=list)

    def add(self, t: int, value: str) -> None:
        position = bisect_right(self.ts, t)
        self.ts.insert(position, t)
        self.values.insert(position, value)

    def add_all(self, ts: Sequence[int], values: Sequence[str]) -> None:
        """add() each value at its time, in this order (ts ascending)."""
        if not self.ts or (ts and self.ts[-1] <= ts[0]):
            self.ts.extend(ts)
            self.values.extend(values)
        else:
            for t, value in zip(ts, values, strict=True):
                self.add(t, value)

    def distinct(self, t: int, width_ms: int, own: str | None) -> int:
        """The number of distinct values in (t - width, t), `own` (the transaction's, None: none) included."""
        found = set(self.values[bisect_left(self.ts, t - width_ms + 1) : bisect_left(self.ts, t)])
        if own is not None:
            found.add(own)
        return len(found)


@dataclass
class AccountHistory:
    """What is known of an account before each transaction to decide, which come in time order.

    `stored_before(t, currency)` gives the account's stored transactions strictly before t (every currency's, and
    those in `currency`): the running totals when every transaction to decide is newer than all stored ones,
    CurrencyDailyTotals for late arrivals. The `added*` fields accumulate the transactions decided since (all
    before the next one: decisions are taken in time order). The tail holds the stored transactions within the
    windows' reach of each transaction to decide, and the added ones.
    The totals (count, first_ts, last_ts over every currency; `amounts` per currency) cover everything, stored and
    added: they are written back to account_stats and account_currency_stats.
    """

    count: int
    first_ts: int | None
    last_ts: int | None
    amounts: dict[str, Amounts]
    tail: Timeline
    stored_before: StoredBefore
    # The transactions added so far (updated once per transaction decided): over every currency, and per currency.
    added_count: int = 0
    added_last_ts: int | None = None
    added: dict[str, Amounts] = field(default_factory=dict)
    # The earliest timestamp of the account's transactions at each merchant (stored and added), for
    # merchant_used_before: loaded for the merchants asked about.
    merchant_first: dict[str, int] = field(default_factory=dict)
    # For the attribute features (loaded when a detector reads them): per attribute, its values in the tail's
    # reach (RecentValues), and the earliest timestamp of each value asked about (FIRST_USE_FIELDS).
    recent_values: dict[str, RecentValues] = field(default_factory=dict)
    first_use: dict[str, dict[str, int]] = field(default_factory=dict)

    def attribute_features(self, t: int, values: Mapping[str, str | None], needed: frozenset[str]) -> Features:
        """The attribute features in `needed` of a transaction at t whose attributes are `values` (field -> value,
        None when absent): see the module's docstring."""
        result: Features = {}
        for name, attribute in DISTINCT_FEATURES.items():
            if name in needed:
                recent = self.recent_values.get(attribute)
                result[name] = (
                    (1 if values.get(attribute) is not None else 0)
                    if recent is None
                    else recent.distinct(t, DAY_MS, values.get(attribute))
                )
        for name, attribute in NEW_VALUE_FEATURES.items():
            if name in needed:
                value = values.get(attribute)
                if value is None:
                    result[name] = None
                else:
                    first = self.first_use.get(attribute, {}).get(value)
                    result[name] = 0 if first is not None and first < t else 1
        return result

    def add_values(self, t: int, values: Mapping[str, str | None]) -> None:
        """Add a decided transaction's attributes to the recent values and first uses held."""
        for attribute in DISTINCT_FEATURES.values():
            value = values.get(attribute)
            if value is not None:
                recent = self.recent_values.get(attribute)
                if recent is None:
                    recent = self.recent_values[attribute] = RecentValues()
                recent.add(t, value)
        for attribute in FIRST_USE_FIELDS:
            value = values.get(attribute)
            if value is not None:
                firsts = self.first_use.setdefault(attribute, {})
                if value not in firsts or t < firsts[value]:
                    firsts[value] = t

    def add_all_values(self, ts: Sequence[int], values: Mapping[str, Sequence[str | None]]) -> None:
        """add_values() each transaction, in this order (ts ascending): `values` holds each attribute's values, one
        per transaction."""
        for attribute in DISTINCT_FEATURES.values():
            column = values[attribute]
            present = [i for i, value in enumerate(column) if value is not None]
            if present:
                recent = self.recent_values.get(attribute)
                if recent is None:
                    recent = self.recent_values[attribute] = RecentValues()
                recent.add_all([ts[i] for i in present], [column[i] for i in present])  # type: ignore[misc]
        for attribute in FIRST_USE_FIELDS:
            for t, value in zip(ts, values[attribute], strict=True):
                if value is not None:
                    firsts = self.first_use.setdefault(attribute, {})
                    if value not in firsts or t < firsts[value]:
                        firsts[value] = t

    def features(
        self,
        t: int,
        units: int,
        currency: str,
        needed: frozenset[str] = TAIL_FEATURES,
        merchant_id: str | None = None,
    ) -> Features:
        """The account's features for a transaction at t of `units` in `currency` (at `merchant_id`); only those in
        `needed` (plus amount and count). Counts and times are over every currency, amounts over `currency`'s
        transactions alone: mean_amount, std_amount and max_amount are missing when there is none in it.

        Raises ValueError for a t not after every transaction added so far, or outside what was loaded.
        """
        if self.added_last_ts is not None and self.added_last_ts >= t:
            raise ValueError("transactions must be decided in time order")
        stored, in_currency = self.stored_before(t, currency)
        count = stored.count + self.added_count

        result: Features = {"amount": from_units(units), "count": count}
        if count:
            added = self.added.get(currency)
            if added is None:
                n_c, total, total_sq = in_currency.count, in_currency.sum_units, in_currency.sum_sq_units
            else:
                n_c = in_currency.count + added.count
                total = in_currency.sum_units + added.sum_units
                total_sq = in_currency.sum_sq_units + added.sum_sq_units
            if n_c != count:
                result[COUNT_IN_CURRENCY] = n_c
            if n_c:
                if "mean_amount" in needed:
                    result["mean_amount"] = _mean(total, n_c)
                if "std_amount" in needed:
                    result["std_amount"] = _std(total, total_sq, n_c)
                if "max_amount" in needed:
                    largest = _larger(in_currency.max_units, None if added is None else added.max_units)
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
                n, n_c, s = self.tail.window_in(t, width, currency)
                result[f"count_{name}"] = n
                result[f"sum_{name}"] = from_units(s)
                if name == "24h" and "mean_amount_24h" in needed:
                    result["mean_amount_24h"] = _mean(s, n_c) if n_c else None
        if "mean_amount_24h" in needed and "count_24h" not in result:
            _, n_c, s = self.tail.window_in(t, DAY_MS, currency)
            result["mean_amount_24h"] = _mean(s, n_c) if n_c else None
        if not needed.isdisjoint(ACCOUNT_DAY_FEATURES):
            windows = self.tail.day_windows_in(t, currency)
            for (name, _), (n, n_c, s) in zip(DAY_WINDOWS, windows, strict=True):
                result[f"count_{name}"] = n
                result[f"sum_{name}"] = from_units(s)
                result[f"mean_amount_{name}"] = _mean(s, n_c) if n_c else None
            if "amount_to_mean_30d" in needed:
                _, n_c, s = windows[-1]  # DAY_WINDOWS ends with the 30 days
                # amount ÷ (sum ÷ n) = amount × n ÷ sum, exactly; missing when the mean is 0 or there is none.
                result["amount_to_mean_30d"] = _six_places(units * n_c * 1_000_000, s) if n_c and s > 0 else None
        if "merchant_used_before" in needed:
            if merchant_id is None:
                result["merchant_used_before"] = None
            else:
                first = self.merchant_first.get(merchant_id)
                result["merchant_used_before"] = 1 if first is not None and first < t else 0
        return result

    def add_all(
        self, ts: Sequence[int], units: Sequence[int], currency: str, merchant_ids: Sequence[str | None]
    ) -> None:
        """add() each transaction, in this order (ts ascending, all after the added ones), in one currency."""
        if not ts:
            return
        self.tail.add_all(ts, units, currency)
        firsts = self.merchant_first
        for t, merchant_id in zip(ts, merchant_ids, strict=True):
            if merchant_id is not None:
                first = firsts.get(merchant_id)
                if first is None or t < first:
                    firsts[merchant_id] = t
        self.added_count += len(ts)
        self.added_last_ts = ts[-1]
        for amounts in (self.added, self.amounts):
            found = amounts.get(currency)
            if found is None:
                found = amounts[currency] = Amounts()
            found.add_all(ts, units)
        self.count += len(ts)
        self.first_ts = ts[0] if self.first_ts is None else min(self.first_ts, ts[0])
        self.last_ts = ts[-1] if self.last_ts is None else max(self.last_ts, ts[-1])

    def add(self, t: int, units: int, currency: str, merchant_id: str | None = None) -> None:
        self.tail.add(t, units, currency)
        if merchant_id is not None:
            first = self.merchant_first.get(merchant_id)
            if first is None or t < first:
                self.merchant_first[merchant_id] = t
        self.added_count += 1
        self.added_last_ts = t  # added in time order
        added = self.added.get(currency)
        if added is None:
            added = self.added[currency] = Amounts()
        added.add(t, units)
        totals = self.amounts.get(currency)
        if totals is None:
            totals = self.amounts[currency] = Amounts()
        totals.add(t, units)
        self.count += 1
        self.first_ts = t if self.first_ts is None else min(self.first_ts, t)
        self.last_ts = t if self.last_ts is None else max(self.last_ts, t)


def merchant_features(
    merchant: Timeline | None,
    t: int,
    currency: str,
    needed: frozenset[str] = TAIL_FEATURES,
    settings: FeatureSettings = DEFAULT_FEATURE_SETTINGS,
) -> Features:
    """The merchant's features for a transaction at t in `currency` (None for each when there is no merchant):
    counts over every currency, merchant_sum_* over the transactions in `currency`."""
    result: Features = {}
    if not needed.isdisjoint(MERCHANT_DAY_FEATURES):
        counts = [None] * len(DAY_WINDOWS) if merchant is None else [n for n, _ in merchant.day_windows(t)]
        for (name, _), count in zip(DAY_WINDOWS, counts, strict=True):
            result[f"merchant_count_{name}"] = count
    if not needed.isdisjoint(RISK_FEATURES):
        risks = (None,) * len(RISK_WINDOWS) if merchant is None else merchant.risk(t, settings.label_delay_days)
        for (name, _), value in zip(RISK_WINDOWS, risks, strict=True):
            result[f"merchant_risk_{name}"] = value
    for name, width in WINDOWS:
        if f"merchant_count_{name}" not in needed and f"merchant_sum_{name}" not in needed:
            continue
        if merchant is None:
            result[f"merchant_count_{name}"] = result[f"merchant_sum_{name}"] = None
        else:
            n, _, s = merchant.window_in(t, width, currency)
            result[f"merchant_count_{name}"] = n
            result[f"merchant_sum_{name}"] = from_units(s)
    return result


def features_json(features: Mapping[str, Decimal | int | bool | str | None], names: Sequence[str]) -> str:
    """The named features as a JSON object (exact numbers in plain notation, null when missing): the stored
    `features` column and GET /is_fraud?features=true; names are feature names (identifiers: nothing to escape)."""
    parts = []
    for name in names:
        value = features.get(name)
        if value is None:
            parts.append(f'"{name}":null')
        elif isinstance(value, int):
            parts.append(f'"{name}":{int(value)}')
        elif type(value) is Decimal:
            # str() is plain notation unless it writes an exponent, and about 2.5× faster than format "f" (every
            # stored decision writes ~30 of these).
            text = str(value)
            parts.append(f'"{name}":{format(value, "f") if "E" in text else text}')
        else:
            parts.append(f'"{name}":{value:f}')
    return "{" + ",".join(parts) + "}"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@lru_cache(maxsize=8)
def _zone(name: str) -> tzinfo:
    return ZoneInfo(name)


def local_time_features(t: int, needed: frozenset[str], time_zone: str = DEFAULT_TIME_ZONE) -> Features:
    """hour_of_day (0-23), is_night (local hour <= 6) and is_weekend (local Saturday or Sunday) of the instant t
    (epoch ms) in the IANA `time_zone`; only those in `needed`."""
    bucket = (time_zone, t // _QUARTER_HOUR_MS)
    hour_and_day = _LOCAL_QUARTERS.get(bucket)
    if hour_and_day is None:
        hour_and_day = _local_hour_and_weekday(t, time_zone)
    hour, weekday = hour_and_day
    result: Features = {}
    if "hour_of_day" in needed:
        result["hour_of_day"] = hour
    if "is_night" in needed:
        result["is_night"] = 1 if hour <= NIGHT_UNTIL_HOUR else 0
    if "is_weekend" in needed:
        result["is_weekend"] = 1 if weekday >= 5 else 0
    return result


_QUARTER_HOUR_MS = 900_000
# Local (hour, weekday) per (zone, UTC quarter hour), for the quarter hours where it is the same throughout; a
# bounded cache, emptied when full.
_LOCAL_QUARTERS: dict[tuple[str, int], tuple[int, int]] = {}


def _local_hour_and_weekday(t: int, time_zone: str) -> tuple[int, int]:
    zone = _zone(time_zone)
    local = (_EPOCH + timedelta(milliseconds=t)).astimezone(zone)
    # The whole UTC quarter hour has this local hour and day when the zone's offset is a whole number of quarter
    # hours and does not change within it (as for every zone since 1980): then remember it for the others.
    start = t - t % _QUARTER_HOUR_MS
    first = (_EPOCH + timedelta(milliseconds=start)).astimezone(zone)
    last = (_EPOCH + timedelta(milliseconds=start + _QUARTER_HOUR_MS - 1)).astimezone(zone)
    offset = first.utcoffset()
    if offset is not None and offset == last.utcoffset() and offset.total_seconds() % 900 == 0:
        if len(_LOCAL_QUARTERS) >= 100_000:
            _LOCAL_QUARTERS.clear()
        _LOCAL_QUARTERS[(time_zone, start // _QUARTER_HOUR_MS)] = (local.hour, local.weekday())
    return local.hour, local.weekday()


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
