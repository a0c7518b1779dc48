"""Fraud patterns injected into genuine traffic, each a plausible story with its own label.

A pattern makes one incident at a time: a few transactions, as offsets from the incident's start, which
the generator then places inside the run. Amounts are drawn relative to the victim's own profile and
from continuous ranges (no round numbers, no reserved merchants or accounts), so only behaviour gives an
incident away: how much against the account's habit, how fast, how many, where.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from txguard_generator.accounts import AccountProfile, random_merchant

SECOND_MS = 1000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS


# (offset ms from the incident's start, account id, amount in cents, merchant id)
Step = tuple[float, int, int, str | None]


@dataclass(frozen=True)
class Scene:
    """What an incident may draw on: the population, and the time span it must fit in."""

    accounts: list[AccountProfile]
    pool_size: int
    earliest_ms: float
    latest_ms: float


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _cents(value: float) -> int:
    return max(1, int(value))


def _other_merchant(rng: random.Random, scene: Scene, victim: AccountProfile) -> str:
    """A merchant the account does not usually use (when the pool has one)."""
    for _ in range(8):
        merchant = random_merchant(rng, scene.pool_size)
        if merchant not in victim.favourites:
            return merchant
    return merchant


def amount_spike(rng: random.Random, scene: Scene, size: int) -> list[Step]:
    """One purchase far above what the account spends: a stolen card used for something expensive."""
    victim = rng.choice(scene.accounts)
    merchant = rng.choice(victim.favourites) if rng.random() < 0.3 else _other_merchant(rng, scene, victim)
    return [(0.0, victim.account_id, _cents(victim.mean_cents * _log_uniform(rng, 4, 20)), merchant)]


def burst(rng: random.Random, scene: Scene, size: int) -> list[Step]:
    """Many ordinary-looking purchases seconds apart: a script draining a card before it is blocked."""
    victim = rng.choice(scene.accounts)
    merchants = [_other_merchant(rng, scene, victim) for _ in range(rng.randint(1, 2))]
    count = min(size, rng.randint(5, 12))
    steps: list[Step] = []
    offset = 0.0
    for _ in range(count):
        cents = _cents(victim.mean_cents * _log_uniform(rng, 0.3, 2.5))
        steps.append((offset, victim.account_id, cents, rng.choice(merchants)))
        offset += max(300.0, rng.expovariate(1 / (4 * SECOND_MS)))
    return steps


def card_testing(rng: random.Random, scene: Scene, size: int) -> list[Step]:
    """A run of tiny amounts to check the card works, then a large purchase minutes later."""
    victim = rng.choice(scene.accounts)
    tiny = min(size - 1, rng.randint(3, 6))
    one_merchant = _other_merchant(rng, scene, victim) if rng.random() < 0.5 else None
    steps: list[Step] = []
    offset = 0.0
    for _ in range(tiny):
        merchant = one_merchant or _other_merchant(rng, scene, victim)
        steps.append((offset, victim.account_id, rng.randint(50, 499), merchant))
        offset += max(1000.0, rng.expovariate(1 / (20 * SECOND_MS)))
    offset += rng.uniform(1, 10) * MINUTE_MS
    large = _cents(victim.mean_cents * _log_uniform(rng, 3, 12))
    steps.append((offset, victim.account_id, large, _other_merchant(rng, scene, victim)))
    return steps


def compromised_merchant(rng: random.Random, scene: Scene, size: int) -> list[Step]:
    """Cards of several accounts charged at one merchant within minutes: a breached checkout or terminal."""
    merchant = random_merchant(rng, scene.pool_size)
    count = min(size, rng.randint(4, 10))
    if count <= len(scene.accounts):
        victims = rng.sample(scene.accounts, count)
    else:
        victims = [rng.choice(scene.accounts) for _ in range(count)]
    window = rng.uniform(1, 5) * MINUTE_MS
    return sorted(
        (rng.uniform(0, window), v.account_id, _cents(v.mean_cents * _log_uniform(rng, 1.5, 6)), merchant)
        for v in victims
    )


def account_takeover(rng: random.Random, scene: Scene, size: int) -> list[Step]:
    """Someone else controls the account for a few hours: spending shifts up, more often, at unfamiliar merchants."""
    victim = rng.choice(scene.accounts)
    count = min(size, rng.randint(4, 10))
    period = rng.uniform(0.5, 4) * HOUR_MS
    shift = _log_uniform(rng, 3, 8)
    return sorted(
        (
            rng.uniform(0, period),
            victim.account_id,
            _cents(victim.mean_cents * shift * math.exp(rng.gauss(0, 0.25))),
            _other_merchant(rng, scene, victim),
        )
        for _ in range(count)
    )


@dataclass(frozen=True)
class Pattern:
    name: str
    min_size: int  # fewer transactions than this would not tell the pattern's story
    make: Callable[[random.Random, Scene, int], list[Step]]


# Each pattern gets an equal share of the fraud transactions; amount_spike (one transaction an incident)
# comes last and takes whatever the others could not use.
PATTERNS: tuple[Pattern, ...] = (
    Pattern("burst", 3, burst),
    Pattern("card_testing", 2, card_testing),
    Pattern("compromised_merchant", 2, compromised_merchant),
    Pattern("account_takeover", 2, account_takeover),
    Pattern("amount_spike", 1, amount_spike),
)
PATTERN_NAMES: tuple[str, ...] = tuple(p.name for p in PATTERNS)


def place(rng: random.Random, steps: list[Step], scene: Scene) -> list[Step]:
    """Shift an incident to a random start inside the scene, squeezing it if the scene is shorter."""
    duration = max(offset for offset, *_ in steps)
    room = max(0.0, scene.latest_ms - scene.earliest_ms)
    squeeze = 1.0 if duration <= room or duration == 0 else room / duration
    start = scene.earliest_ms + rng.random() * (room - duration * squeeze)
    return [(start + offset * squeeze, account, cents, merchant) for offset, account, cents, merchant in steps]


def budgets(fraud_count: int) -> dict[str, int]:
    """Fraud transactions per pattern: equal shares, remainders to the first patterns."""
    share, extra = divmod(fraud_count, len(PATTERNS))
    return {p.name: share + (1 if i < extra else 0) for i, p in enumerate(PATTERNS)}


def inject(rng: random.Random, scene: Scene, fraud_count: int) -> list[tuple[float, int, int, str | None, str]]:
    """Exactly `fraud_count` fraud transactions: (ts ms, account id, cents, merchant id, pattern name)."""
    events: list[tuple[float, int, int, str | None, str]] = []
    leftover = 0
    for pattern, budget in zip(PATTERNS, budgets(fraud_count).values(), strict=True):
        budget += leftover if pattern.min_size == 1 else 0
        while budget >= pattern.min_size:
            steps = place(rng, pattern.make(rng, scene, budget), scene)
            events.extend((ts, account, cents, merchant, pattern.name) for ts, account, cents, merchant in steps)
            budget -= len(steps)
        leftover += budget
    return events
