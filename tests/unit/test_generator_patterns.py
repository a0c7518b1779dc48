"""Each fraud pattern tells its own story, in plausible amounts and times."""

from __future__ import annotations

import itertools
import random
from statistics import median

import pytest

from txguard_generator.accounts import merchant_pool_size, population
from txguard_generator.patterns import (
    MINUTE_MS,
    PATTERNS,
    Scene,
    Step,
    account_takeover,
    amount_spike,
    budgets,
    burst,
    card_testing,
    compromised_merchant,
    inject,
    place,
)

ACCOUNTS = population(200)
SCENE = Scene(ACCOUNTS, merchant_pool_size(200), 1_000_000.0, 1_000_000.0 + 10 * 86_400_000)
MEAN = {a.account_id: a.mean_cents for a in ACCOUNTS}


def incidents(make: object, count: int = 200) -> list[list[Step]]:
    rng = random.Random(3)
    return [make(rng, SCENE, 100) for _ in range(count)]  # type: ignore[operator]


def test_an_amount_spike_is_one_purchase_several_times_the_accounts_mean() -> None:
    for steps in incidents(amount_spike):
        ((_, account, cents, merchant),) = steps
        assert 4 <= cents / MEAN[account] <= 20 and merchant is not None


def test_a_burst_is_many_transactions_of_one_account_seconds_apart() -> None:
    for steps in incidents(burst):
        assert 5 <= len(steps) <= 12
        assert len({account for _, account, _, _ in steps}) == 1
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(steps)]
        assert all(gap >= 299.9 for gap in gaps)
        assert median(gaps) < 15_000


def test_card_testing_is_tiny_amounts_then_a_large_one() -> None:
    for steps in incidents(card_testing):
        *tiny, (_, account, large, _) = steps
        assert 3 <= len(tiny) <= 6
        assert all(50 <= cents < 500 for _, _, cents, _ in tiny)
        assert large >= 3 * MEAN[account] - 1
        assert steps[-1][0] - tiny[-1][0] >= MINUTE_MS


def test_a_compromised_merchant_defrauds_several_accounts_at_one_merchant_within_minutes() -> None:
    for steps in incidents(compromised_merchant):
        assert len({merchant for *_, merchant in steps}) == 1
        assert len({account for _, account, _, _ in steps}) == len(steps) >= 4
        assert steps[-1][0] - steps[0][0] <= 5 * MINUTE_MS


def test_an_account_takeover_shifts_one_accounts_spending_up_for_a_few_hours() -> None:
    for steps in incidents(account_takeover):
        accounts = {account for _, account, _, _ in steps}
        assert len(accounts) == 1
        (account,) = accounts
        assert median(cents for _, _, cents, _ in steps) > 2 * MEAN[account]
        assert steps[-1][0] - steps[0][0] <= 4 * 3_600_000


def test_patterns_share_the_fraud_budget_equally() -> None:
    assert budgets(400) == {p.name: 80 for p in PATTERNS}
    assert sum(budgets(13).values()) == 13


@pytest.mark.parametrize("fraud_count", [0, 1, 2, 7, 400])
def test_injection_gives_exactly_the_budget(fraud_count: int) -> None:
    assert len(inject(random.Random(1), SCENE, fraud_count)) == fraud_count


def test_an_incident_longer_than_the_run_is_squeezed_into_it() -> None:
    short = Scene(ACCOUNTS, SCENE.pool_size, 0.0, 60_000.0)
    placed = place(random.Random(1), [(0.0, 1, 100, None), (3_600_000.0, 1, 100, None)], short)
    assert all(0 <= ts <= 60_000 for ts, *_ in placed)
