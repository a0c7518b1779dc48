"""Accounts and merchants of the simulated population, and how each account spends.

Generated accounts live in a reserved range, apart from any real account: the n-th generated account has
the id SYNTHETIC_ACCOUNT_BASE + n (9,000,000,000,000,000,001 and up; `num_accounts` is at most 10,000,000).
Real accounts must not use ids above SYNTHETIC_ACCOUNT_BASE; generated traffic then never adds to a real
account's history, and `account_id > 9000000000000000000` selects it in SQL.

An account's profile depends only on its number n (and the size of the merchant pool), never on the run's
seed: account n is the same customer in every run, so scheduled runs keep adding to a consistent history.

- Amounts: log-normal around the account's own median (medians themselves log-normal across accounts,
  around 40.00), each account with its own spread.
- Rhythm: each account has its own mean gap (a log-normal multiple of `mean_gap`, mean 1) and its own
  daily cycle: the rate swings around its busiest time of day. Gaps are exponential at the momentary
  rate (a non-homogeneous Poisson process), so they vary both randomly and with the hour.
- Merchants: a few favourites per account, sometimes another merchant, rarely none (e.g. a transfer).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache

DAY_MS = 86_400_000
SYNTHETIC_ACCOUNT_BASE = 9_000_000_000_000_000_000
MEDIAN_AMOUNT_CENTS = 4000
MEDIAN_SPREAD = 0.8  # log-scale spread of account medians across the population
GAP_SPREAD = 0.6  # log-scale spread of accounts' mean gaps around `mean_gap`
FAVOURITE_SHARE = 0.85
OTHER_MERCHANT_SHARE = 0.12  # the remaining 3 % carry no merchant


@dataclass(frozen=True)
class AccountProfile:
    account_id: int
    log_median_cents: float
    sigma: float  # log-scale spread of the account's amounts
    gap_scale: float  # the account's mean gap, as a multiple of the run's mean_gap
    peak_ms: int  # busiest time of day, ms after midnight UTC
    swing: float  # daily cycle: the rate goes from (1 - swing) to (1 + swing) times its mean
    favourites: tuple[str, ...]

    @property
    def mean_cents(self) -> float:
        return math.exp(self.log_median_cents + self.sigma * self.sigma / 2)


def merchant_pool_size(num_accounts: int) -> int:
    """About two accounts per merchant: small merchants see a few transactions an hour."""
    return max(10, num_accounts // 2)


def merchant_id(index: int) -> str:
    return f"M{index:05d}"


def synthetic_account_id(number: int) -> int:
    """The id of generated account `number` (1-based), inside the reserved range."""
    return SYNTHETIC_ACCOUNT_BASE + number


@lru_cache(maxsize=65_536)
def profile(number: int, pool_size: int) -> AccountProfile:
    """Generated account `number` (1-based): its id and how it spends."""
    rng = random.Random(f"txguard-account-{number}")
    favourites = tuple(sorted({merchant_id(_popular_index(rng, pool_size)) for _ in range(rng.randint(2, 6))}))
    return AccountProfile(
        account_id=synthetic_account_id(number),
        log_median_cents=math.log(MEDIAN_AMOUNT_CENTS) + rng.gauss(0, MEDIAN_SPREAD),
        sigma=rng.uniform(0.25, 0.55),
        gap_scale=math.exp(rng.gauss(-GAP_SPREAD * GAP_SPREAD / 2, GAP_SPREAD)),
        peak_ms=int(rng.uniform(9, 21) * 3_600_000),
        swing=rng.uniform(0.4, 0.9),
        favourites=favourites,
    )


def population(num_accounts: int) -> list[AccountProfile]:
    """Generated accounts 1..num_accounts (ids SYNTHETIC_ACCOUNT_BASE + 1 and up)."""
    pool = merchant_pool_size(num_accounts)
    return [profile(number, pool) for number in range(1, num_accounts + 1)]


def _popular_index(rng: random.Random, pool_size: int) -> int:
    # Mildly skewed: the most popular merchants are a few times busier than the median one.
    return min(pool_size - 1, int(pool_size * rng.random() ** 1.5))


def random_merchant(rng: random.Random, pool_size: int) -> str:
    return merchant_id(_popular_index(rng, pool_size))
