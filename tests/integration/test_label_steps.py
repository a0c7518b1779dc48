"""merchant_label_daily always equals the view merchant_label_steps (its definition), whatever order labels and
transactions arrive in: random label histories with superseding labels, out-of-order labelled_at, several labels
on one day, labels before their transactions, labels sent without labelled_at, re-sends and repeats in a batch."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Database
from tests.integration.helpers import T0, store, tx
from txguard import db
from txguard.domain import FraudLabel
from txguard.storage.labels import write_labels

pytestmark = pytest.mark.integration
DAY = 86_400_000
# transaction id -> (account, timestamp, merchant): days apart, some without a merchant.
TRANSACTIONS = {
    tid: (tid % 3 + 1, T0 + (tid % 4) * DAY + tid * 1000, ["m-a", "m-b", None][tid % 3]) for tid in range(1, 7)
}

labels = st.builds(
    FraudLabel,
    transaction_id=st.integers(1, 6),
    fraud=st.booleans(),
    source=st.sampled_from(["chargeback", "analyst:alice", "generator"]),
    labelled_at_ms=st.one_of(st.none(), st.integers(T0 - DAY, T0 + 8 * DAY)),
    reason=st.sampled_from([None, "stolen card"]),
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("store"), st.lists(st.integers(1, 6), min_size=1, max_size=3)),
        st.tuples(st.just("labels"), st.lists(labels, min_size=1, max_size=5), st.integers(T0, T0 + 8 * DAY)),
        st.tuples(st.just("resend"), st.integers(0, 50)),
    ),
    min_size=1,
    max_size=12,
)


def _table(database: Database, source: str) -> list[tuple[Any, ...]]:
    return database.query(f"SELECT merchant_id, tx_day, known_day, frauds FROM {source} ORDER BY 1, 2, 3")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_maintained_sums_equal_the_view(database: Database, ops: list[Any]) -> None:
    # DELETE, not TRUNCATE: a few rows per table, and TRUNCATE's new files cost 0.1-0.2 s an example.
    database.execute(
        "DELETE FROM labels; DELETE FROM merchant_label_daily; DELETE FROM transactions; DELETE FROM account_stats; "
        "DELETE FROM account_daily"
    )
    sent: list[tuple[list[FraudLabel], int]] = []
    for op in ops:
        if op[0] == "store":
            store([tx(*TRANSACTIONS[tid][:2], "5.00", TRANSACTIONS[tid][2], tid=tid) for tid in op[1]])
        elif op[0] == "labels":
            sent.append((op[1], op[2]))
            db.run_in_transaction(lambda cur, batch=op[1], now=op[2]: write_labels(cur, batch, now))
        elif sent:
            batch, now = sent[op[1] % len(sent)]
            results = db.run_in_transaction(lambda cur, batch=batch, now=now: write_labels(cur, batch, now))
            # A label sent again with its labelled_at is a duplicate. One sent as "now" is a duplicate only while it
            # repeats the transaction's latest label: after a different one superseded it, it is news again.
            assert all(r.status == "duplicate" for r, sent in zip(results, batch, strict=True) if sent.labelled_at_ms)
        assert _table(database, "merchant_label_daily") == _table(database, "merchant_label_steps")
