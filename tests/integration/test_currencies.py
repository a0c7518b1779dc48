"""Currencies are never mixed: ingest, recomputation and the SQL reference keep amount features per currency,
counts and times over every currency, and explanations write amounts in the currency's own minor units."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.conftest import Database
from tests.integration.helpers import T0, apply_rules, python_decisions, recompute, rule, sql_decisions, stats, store
from txguard.domain import Transaction

pytestmark = pytest.mark.integration

HOUR = 3_600_000


def paid(tid: int, ts: int, amount: str, currency: str, account: int = 1) -> Transaction:
    return Transaction(tid, account, ts, Decimal(amount), currency, "m-1")


def test_a_first_yen_payment_after_euros_has_no_mean_and_is_not_compared_with_euros(database: Database) -> None:
    # Given a rule on the mean and one on the count, and an account that paid EUR 10 and EUR 30
    apply_rules(
        database,
        [rule("big", "amount > 3 * mean_amount", "0.9"), rule("busy", "count >= 2 AND count_24h >= 2", "0.1")],
    )
    store([paid(1, T0, "10.00", "EUR"), paid(2, T0 + HOUR, "30.00", "EUR")])
    # When it pays JPY 5000 (a mixed mean would be 1,680 "units": 5000 would be 3 times more, and flagged)
    jpy = store([paid(3, T0 + 2 * HOUR, "5000", "JPY")])[0]
    # Then it is counted with the euros, but no amount feature adds yen to euros
    assert [r.rule_id for r in jpy.decision.reasons] == ["busy"]
    assert jpy.decision.score == Decimal("0.1")
    # When it pays JPY 20000, four times its yen mean
    again = store([paid(4, T0 + 3 * HOUR, "20000", "JPY")])[0]
    # Then it is compared with its yen alone, and the explanation writes yen without decimals
    assert sorted(r.rule_id for r in again.decision.reasons) == ["big", "busy"]
    big = next(r for r in again.decision.reasons if r.rule_id == "big")
    assert "amount 20000 is more than 3 × the mean of the 1 previous transactions (5000)" in big.explanation
    # and the running totals are kept per currency
    count, _, _, amounts = stats(database, 1)
    assert count == 4
    assert [(c, n, total) for c, n, total, *_ in amounts] == [
        ("EUR", 2, Decimal("40.0000")),
        ("JPY", 2, Decimal("25000.0000")),
    ]
    # and the SQL reference and the recomputation decide the same
    assert python_decisions(recompute(1)) == sql_decisions(database, 1)


def test_a_late_payment_in_another_currency_is_judged_on_its_own_currency_before_it(database: Database) -> None:
    apply_rules(database, [rule("small", "amount < 0.5 * mean_amount", "0.9")])
    # Given BHD 1.000 and 3.000, EUR 100.00 stored, then a BHD 0.500 that happened between them arrives late
    store(
        [paid(11, T0, "1.000", "BHD"), paid(12, T0 + 2 * HOUR, "3.000", "BHD"), paid(13, T0 + 3 * HOUR, "100", "EUR")]
    )
    late = store([paid(14, T0 + HOUR, "0.500", "BHD")])[0]
    # Then it is judged on BHD 1.000 alone (0.500 < 0.5 × 1.000 is false), not on a mean with the euros
    assert late.decision.reasons == ()
    # When BHD 0.700 follows, after BHD 1.000, 0.500 and 3.000 (mean 1.500) and EUR 100.00
    later = store([paid(15, T0 + 4 * HOUR, "0.700", "BHD")])[0]
    # Then 0.700 < 0.5 × 1.500 is flagged, the mean of the 3 BHD payments written with three decimals
    assert [r.rule_id for r in later.decision.reasons] == ["small"]
    assert "the mean of the 3 previous transactions (1.500)" in later.decision.reasons[0].explanation
    assert python_decisions(recompute(1)) == sql_decisions(database, 1)
