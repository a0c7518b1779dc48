"""The decider seam: any Detector decides on the write path, and a replay keeps the features it computed."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.conftest import Database
from tests.integration.helpers import T0, apply_rules, recompute, rule, tx
from txguard import db
from txguard.detection import Detector
from txguard.domain import Decision, Reason
from txguard.features import DEFAULT_FEATURE_SETTINGS, Features, window_reach_ms
from txguard.ingest import store_transactions

pytestmark = pytest.mark.integration


class AboveTwiceTheMean:
    """A detector that is not a rule set: flags an amount above twice the account's mean."""

    version = 7
    needed_features = frozenset({"amount", "mean_amount", "count"})
    window_reach_ms = window_reach_ms(needed_features)
    feature_settings = DEFAULT_FEATURE_SETTINGS

    def decide(self, features: Features, merchant_id: str | None, currency: str) -> Decision:
        amount, mean = features.get("amount"), features.get("mean_amount")
        if isinstance(amount, Decimal) and isinstance(mean, Decimal) and amount > 2 * mean:
            reason = Reason("twice_the_mean", "active", Decimal(1), f"{amount} > 2 × {mean}")
            return Decision(True, Decimal("1.0000"), (reason,), self.version)
        return Decision(False, Decimal("0.0000"), (), self.version)


def test_a_detector_other_than_the_rules_decides_through_the_one_write_path(database: Database) -> None:
    detector: Detector = AboveTwiceTheMean()
    batch = [tx(1, T0, "10.00"), tx(1, T0 + 1000, "10.00"), tx(1, T0 + 2000, "30.00")]
    results = db.run_in_transaction(lambda cur: store_transactions(cur, batch, detector))
    assert [r.decision.fraud for r in results] == [False, False, True]
    stored = database.query("SELECT fraud, rule_set_version, reasons->0->>'rule_id' FROM transactions ORDER BY ts")
    assert stored == [(False, 7, None), (False, 7, None), (True, 7, "twice_the_mean")]


def test_a_replay_gives_each_decision_with_the_features_it_was_taken_on(database: Database) -> None:
    apply_rules(database, [rule("spike", "amount > 2 * mean_amount")])
    db.run_in_transaction(
        lambda cur: store_transactions(cur, [tx(1, T0, "10.00"), tx(1, T0 + 1000, "30.00")], AboveTwiceTheMean())
    )
    replayed = recompute(1)
    assert [j.decision.fraud for j in replayed] == [False, True]
    assert replayed[1].features is not None
    assert replayed[1].features["amount"] == Decimal("30.00")
    assert replayed[1].features["mean_amount"] == Decimal("10")
    assert replayed[1].features["count"] == 1
