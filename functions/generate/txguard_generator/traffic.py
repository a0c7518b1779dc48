"""Generating a run: genuine traffic from the population, fraud incidents injected, all in time order.

Work is done on floats and integer cents; Decimal amounts and Transaction objects are made once, at the end.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import NamedTuple

from txguard.domain import Transaction
from txguard.labels import GENUINE
from txguard.memory import collection_paused
from txguard_generator.accounts import (
    DAY_MS,
    FAVOURITE_SHARE,
    OTHER_MERCHANT_SHARE,
    AccountProfile,
    merchant_pool_size,
    population,
    random_merchant,
)
from txguard_generator.attributes import AttributeDraw
from txguard_generator.ids import check_run_id, new_run_id, transaction_id
from txguard_generator.params import EARLIEST_START_MS, GenerateParams
from txguard_generator.patterns import Scene, inject

CURRENCY = "EUR"
# Where a run without a start is drawn before it is moved to the present: midnight UTC, the earliest
# timestamp the API accepts.
CANONICAL_START_MS = EARLIEST_START_MS
# Incidents start after this share of the run, so their victims usually have some history already.
HISTORY_SHARE = 0.15
_TWO_PI_PER_DAY = 2 * math.pi / DAY_MS


class Labelled(NamedTuple):
    """A generated transaction and the pattern that produced it ("genuine" for ordinary traffic)."""

    transaction: Transaction
    pattern: str


@dataclass(frozen=True)
class GeneratedRun:
    run_id: int
    seed: int
    start_ms: int
    items: list[Labelled]

    def __iter__(self) -> Iterator[Labelled]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def fraud_count(self) -> int:
        return sum(1 for item in self.items if item.pattern != GENUINE)


def new_seed() -> int:
    return random.SystemRandom().randrange(2**32)


def generate(params: GenerateParams, run_id: int | None = None, now_ms: int | None = None) -> GeneratedRun:
    """`params.num_transactions` labelled transactions in time order, ids derived from the run id.

    The same seed and parameters give the same transactions whenever the run happens (ids aside, unless the
    run id is the same too). Without a start, the run is drawn on a fixed calendar (from CANONICAL_START_MS)
    and moved by whole days so that its last transaction falls in the day up to `now_ms` (epoch ms; default:
    the current time): two runs at different times differ only by that whole-day shift, which keeps every
    account's daily rhythm at its hour.
    """
    # Millions of small acyclic objects would trigger the cyclic collector over and over for nothing (it halves
    # the generation rate); nothing made here can form a cycle.
    with collection_paused():
        return _generate(params, run_id, now_ms)


def _generate(params: GenerateParams, run_id: int | None, now_ms: int | None) -> GeneratedRun:
    now = int(time.time() * 1000) if now_ms is None else now_ms
    run_id = new_run_id(now) if run_id is None else run_id
    check_run_id(run_id)
    seed = new_seed() if params.seed is None else params.seed
    rng = random.Random(seed)

    accounts = population(params.num_accounts)
    fraud_count = round(params.num_transactions * params.fraud_rate)
    genuine_count = params.num_transactions - fraud_count
    mean_gap_ms = params.mean_gap * 1000
    # The draw must not depend on the clock: the daily cycle makes it depend on the start's time of day.
    start = CANONICAL_START_MS if params.start is None else params.start

    events = _genuine(rng, accounts, genuine_count, float(start), mean_gap_ms)
    end = events[-1][0] if events else float(start)
    earliest = start + HISTORY_SHARE * (end - start)
    scene = Scene(accounts, merchant_pool_size(params.num_accounts), earliest, end)
    fraud = inject(rng, scene, fraud_count)
    if fraud:
        events.extend(fraud)
        events.sort(key=lambda e: e[0])  # stable and nearly sorted already: cheap
    shift = 0
    if params.start is None and events:
        # Whole days only, so that the same seed gives the same traffic, at the same hours, on any day;
        # never before the canonical start (a run longer than the years since then would end in the future).
        shift = max(0, (now - int(events[-1][0])) // DAY_MS) * DAY_MS

    scale = Decimal(1).scaleb(-2)
    draw = AttributeDraw(seed)
    items = [
        Labelled(
            Transaction(
                transaction_id(run_id, index),
                account,
                int(ts) + shift,
                Decimal(cents) * scale,
                CURRENCY,
                merchant,
                *draw.attributes(account, merchant, pattern),
            ),
            pattern,
        )
        for index, (ts, account, cents, merchant, pattern) in enumerate(events)
    ]
    return GeneratedRun(run_id, seed, start + shift, items)


def _genuine(
    rng: random.Random, accounts: list[AccountProfile], count: int, start: float, mean_gap_ms: float
) -> list[tuple[float, int, int, str | None, str]]:
    """The first `count` transactions of all accounts' processes together, in time order.

    Each account's arrival times are drawn up to a horizon expected to hold a few more than needed
    (extended until it does), then all are sorted and cut at `count`.
    """
    if count == 0:
        return []
    pool_size = merchant_pool_size(len(accounts))
    random_, log, cos = rng.random, math.log, math.cos
    pending = [start] * len(accounts)  # per account: its next arrival not yet taken (start: none drawn yet)
    times: list[tuple[float, int]] = []
    rate_per_ms = sum(1 / (a.gap_scale * mean_gap_ms) for a in accounts)
    horizon = start + (count * 1.05 + 10 * math.sqrt(count)) / rate_per_ms
    while True:
        for i, account in enumerate(accounts):
            # Thinning: candidates at the peak rate (1 + swing) / gap, kept in proportion to the momentary rate.
            swing, peak = account.swing, account.peak_ms
            ceiling = 1 + swing
            gap = account.gap_scale * mean_gap_ms / ceiling
            t = pending[i]
            if t != start:
                if t > horizon:
                    continue
                times.append((t, i))
            while True:
                t -= log(1.0 - random_()) * gap
                if random_() * ceiling < 1 + swing * cos((t - peak) * _TWO_PI_PER_DAY):
                    if t > horizon:
                        break
                    times.append((t, i))
            pending[i] = t
        if len(times) >= count:
            break
        horizon += (horizon - start) * 0.5
    times.sort()
    del times[count:]

    gauss, exp = rng.gauss, math.exp
    favourite_share, merchant_share = FAVOURITE_SHARE, FAVOURITE_SHARE + OTHER_MERCHANT_SHARE
    events: list[tuple[float, int, int, str | None, str]] = []
    append = events.append
    for t, i in times:
        account = accounts[i]
        u = random_()
        if u < favourite_share:
            favourites = account.favourites
            merchant: str | None = favourites[int(random_() * len(favourites))]
        elif u < merchant_share:
            merchant = random_merchant(rng, pool_size)
        else:
            merchant = None
        cents = int(exp(gauss(account.log_median_cents, account.sigma))) or 1
        append((t, account.account_id, cents, merchant, GENUINE))
    return events
