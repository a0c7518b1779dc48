"""Features computed as columns (feature_columns) are the row engine's: the same features dicts (keys, values,
order), stored JSON, decisions and explanations, and the same histories afterwards, whatever the timestamps (equal
ones included), merchants, attributes, labels and rules, from nothing or over a stored history."""

from __future__ import annotations

import copy
import random
import re
from collections import defaultdict
from decimal import Decimal
from itertools import pairwise
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from txguard.detection import (
    COLUMN_CHUNK,
    Decided,
    Detector,
    column_chunks,
    decisions_in_time_order,
    empty_history,
    empty_timeline,
)
from txguard.domain import Transaction
from txguard.feature_columns import Column, FeatureColumns, columnar_features
from txguard.features import DAY_MS, FEATURES, Prior, Timeline, constant_totals, features_json
from txguard.models.artifact import decode_artifact
from txguard.models.scoring import TreeModel
from txguard.models.serving import ModelDetector, ServedModel
from txguard.rule_engine import COLUMN_ROWS, CompiledRuleSet
from txguard.rule_language import validate_rule_set
from txguard.storage.rule_sets import default_rule_set
from txguard_generator import GenerateParams, generate

D0 = 19_800 * DAY_MS
# Every feature a rule can read (the columns compute each one).
COLUMN_FEATURES = sorted(FEATURES)


class RowByRow:
    """A detector deciding as the given one does, offering no `decide_columns`: the row-by-row engine."""

    def __init__(self, detector: Any) -> None:
        self._detector = detector

    def __getattr__(self, name: str) -> Any:
        if name == "decide_columns":
            raise AttributeError(name)
        return getattr(self._detector, name)


def every_feature_rules(time_zone: str = "UTC", delay: int = 7) -> CompiledRuleSet:
    """The default rules, and a shadow rule reading every feature (so each is computed and explained)."""
    document = default_rule_set().model_dump(mode="json", exclude={"rules": {"__all__": {"condition"}}})
    document["features"] = {"time_zone": time_zone, "label_delay_days": delay, "record": COLUMN_FEATURES}
    document["rules"].append(
        {
            "id": "every_feature",
            "description": "reads every feature",
            "when": " OR ".join(f"{name} > 0.5" for name in COLUMN_FEATURES),
            "score": "0.1",
            "mode": "shadow",
        }
    )
    return CompiledRuleSet(1, validate_rule_set(document))


def replay(
    transactions: list[Transaction],
    detector: Detector,
    steps: dict[str, list[tuple[int, int, int]]],
    record: list[str] | None = None,
    stored: tuple[dict[int, Any], dict[str, Timeline]] | None = None,
    keep_features: bool = True,
) -> tuple[list[Decided], dict[int, Any], dict[str, Timeline]]:
    """Decide a history from nothing, as backtests do, with each merchant's label steps; or over `stored`
    histories (copied, not changed)."""
    if stored is None:
        histories: dict[int, Any] = defaultdict(empty_history)
        merchants: dict[str, Timeline] = defaultdict(empty_timeline)
        for merchant, merchant_steps in steps.items():
            merchants[merchant].use_label_steps(merchant_steps)
    else:
        histories, merchants = copy.deepcopy(stored)
    decided = list(
        decisions_in_time_order(
            transactions, histories, merchants, detector, record=record, keep_features=keep_features
        )
    )
    return decided, histories, merchants


def as_stored(
    transactions: list[Transaction], detector: Any, steps: dict[str, list[tuple[int, int, int]]]
) -> tuple[dict[int, Any], dict[str, Timeline]]:
    """The histories and merchants after `transactions`, as ingest loads them once those are stored: running
    totals before every new transaction (nothing added since), the tails, recent values and first uses."""
    _, histories, merchants = replay(transactions, RowByRow(detector), steps)
    for history in histories.values():
        whole = Prior(history.count, 0, 0, None, history.last_ts)
        history.stored_before = constant_totals(whole, {c: a.prior() for c, a in history.amounts.items()})
        history.added_count, history.added_last_ts, history.added = 0, None, {}
    return histories, merchants


def assert_same(
    transactions: list[Transaction],
    detector: Any,
    steps: dict[str, list[tuple[int, int, int]]],
    record: bool = True,
    stored: tuple[dict[int, Any], dict[str, Timeline]] | None = None,
) -> None:
    # The columns are computed for this history (the columnar path is taken, not the row path's fallback).
    histories, merchants = (
        (defaultdict(empty_history), defaultdict(empty_timeline)) if stored is None else copy.deepcopy(stored)
    )
    computed = columnar_features(
        transactions, histories, merchants, detector.needed_features, detector.feature_settings
    )
    assert computed is not None
    # The stored features' JSON written from the columns is what features_json writes of each row.
    names = sorted(detector.needed_features)
    assert computed.json_rows(names) == [features_json(row, names) for row in computed.rows()]
    # Each row read from the columns on demand (what rules and the champion explain) is the row's dict.
    for i, row in enumerate(computed.rows()):
        read = computed.row(i)
        assert [(k, type(v), str(v)) for k, v in read.items()] == [(k, type(v), str(v)) for k, v in row.items()]
        assert len(read) == len(row) and "absent" not in read and read.get("absent", 7) == 7
    # Read at many rows at once (rules explain the rows they fire on column-wise), in any order: each row's value,
    # the default where the row has no such key.
    picked = list(range(0, computed.size, 2)) + list(range(computed.size - 1, 0, -2))
    for name in {*computed.row_names(True), *computed.row_names(False), "absent"}:
        expected = [computed.row(i).get(name, "no key") for i in picked]
        found = computed.values_at(name, picked, "no key")
        assert [(type(v), str(v)) for v in found] == [(type(v), str(v)) for v in expected]
    # Each decided row also carries the JSON storage writes of the features the detector reads (`record`).
    recorded = names if record else None
    rows, row_histories, row_merchants = replay(transactions, RowByRow(detector), steps, recorded, stored)
    columns, column_histories, column_merchants = replay(transactions, detector, steps, recorded, stored)
    if record:
        # As ingest asks: no features dicts kept, the same decisions and stored JSON.
        without, _, _ = replay(transactions, detector, steps, recorded, stored, keep_features=False)
        kept = [(None, d.decision, d.recorded) for d in columns]
        assert [(d.features, d.decision, d.recorded) for d in without] == kept
    for by_row, by_column in zip(rows, columns, strict=True):
        # str(): the exact decimals as stored (features_json), 0 and 0.000 differ
        assert [(k, str(v)) for k, v in by_row.features.items()] == [(k, str(v)) for k, v in by_column.features.items()]
        assert by_row.decision == by_column.decision
        # The stored JSON, written from the columns, is byte for byte what the row engine's dict gives.
        if record:
            assert by_row.recorded == by_column.recorded == features_json(by_row.features, names)
    for account_id, history in row_histories.items():
        other = column_histories[account_id]
        assert (history.count, history.first_ts, history.last_ts, history.amounts) == (
            other.count,
            other.first_ts,
            other.last_ts,
            other.amounts,
        )
        assert (history.tail.ts, history.tail.units, history.tail._prefix, history.tail.days) == (
            other.tail.ts,
            other.tail.units,
            other.tail._prefix,
            other.tail.days,
        )
        assert (history.added_count, history.added_last_ts, history.added) == (
            other.added_count,
            other.added_last_ts,
            other.added,
        )
        assert history.merchant_first == other.merchant_first
        assert (history.recent_values, history.first_use) == (other.recent_values, other.first_use)
    assert {m: (t.ts, t.units, t._prefix, t.days, t.currency) for m, t in row_merchants.items()} == {
        m: (t.ts, t.units, t._prefix, t.days, t.currency) for m, t in column_merchants.items()
    }


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Transaction], dict[str, list[tuple[int, int, int]]]]:
    size = draw(st.integers(COLUMN_ROWS, 60))
    # Steps from a millisecond to days, and many zero steps: equal timestamps, windows' edges.
    steps = st.sampled_from([0, 0, 0, 1, 999, 59_999, 60_000, 3_599_999, 3_600_000, 86_399_999, DAY_MS, 7 * DAY_MS])
    ts = D0
    transactions = []
    for tid in range(size):
        ts += draw(steps)
        amount = draw(st.sampled_from(["0", "0.01", "1", "41.2", "912.00", "0.0001", "99999.9999", "5000000000"]))
        merchant = draw(st.sampled_from([None, "m1", "m2", "m3"]))
        transaction = Transaction(tid, draw(st.integers(1, 4)), ts, Decimal(amount), "EUR", merchant)
        # Few values per attribute (the same ones again within and across windows), or none.
        attributes = {
            "country": draw(st.sampled_from([None, "FR", "FR", "DE", "US"])),
            "device_id": draw(st.sampled_from([None, "d1", "d1", "d2", "d3"])),
            "card_id": draw(st.sampled_from([None, "c1", "c2"])),
        }
        transactions.append(transaction._replace(**attributes))
    label_steps = {
        merchant: sorted(
            draw(
                st.lists(
                    st.tuples(st.integers(19_760, 19_900), st.integers(19_760, 19_910), st.sampled_from([1, 1, -1])),
                    max_size=8,
                )
            )
        )
        for merchant in draw(st.sets(st.sampled_from(["m1", "m2"])))
    }
    return transactions, label_steps


@settings(max_examples=60, deadline=None)
@given(
    history=histories(),
    time_zone=st.sampled_from(["UTC", "Europe/Paris", "Asia/Kolkata"]),
    delay=st.sampled_from([0, 1, 7]),
)
def test_columns_give_the_row_engine_s_features_decisions_and_histories(
    history: tuple[list[Transaction], dict[str, list[tuple[int, int, int]]]], time_zone: str, delay: int
) -> None:
    # Given any history (equal timestamps, windows' edges, labels), replayed by both engines with every feature,
    transactions, steps = history
    # then every feature, decision and history is the same.
    assert_same(transactions, every_feature_rules(time_zone, delay), steps)


@settings(max_examples=40, deadline=None)
@given(history=histories(), cut=st.integers(0, 60), time_zone=st.sampled_from(["UTC", "Asia/Kolkata"]))
def test_columns_continue_a_stored_history_as_the_row_engine(
    history: tuple[list[Transaction], dict[str, list[tuple[int, int, int]]]], cut: int, time_zone: str
) -> None:
    # Given a history whose first part is stored (its tails, recent attribute values and first uses loaded as
    # ingest loads them),
    transactions, steps = history
    detector = every_feature_rules(time_zone)
    stored = as_stored(transactions[:cut], detector, steps)
    new = transactions[cut:]
    if len(new) < COLUMN_ROWS:
        new = transactions[-COLUMN_ROWS:]
        stored = as_stored(transactions[:-COLUMN_ROWS], detector, steps)
    # then the rest is decided as columns with the row engine's features, decisions and histories.
    assert_same(new, detector, steps, stored=stored)


def generated(count: int, seed: int) -> tuple[list[Transaction], dict[str, list[tuple[int, int, int]]]]:
    """Generated traffic with timestamps cut to the second (many equal ones) and its frauds labelled, each known
    0-10 days after its day."""
    run = generate(GenerateParams(num_transactions=count, num_accounts=max(count // 40, 10), seed=seed))
    draw = random.Random(seed)
    transactions = sorted(
        (
            labelled.transaction._replace(ts=labelled.transaction.ts - labelled.transaction.ts % 1000)
            for labelled in run
        ),
        key=lambda t: (t.ts, t.transaction_id),
    )
    steps: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for labelled in run:
        t = labelled.transaction
        if labelled.pattern != "genuine" and t.merchant_id is not None:
            steps[t.merchant_id].append((t.ts // DAY_MS, t.ts // DAY_MS + draw.randint(0, 10), 1))
    return transactions, {m: sorted(s) for m, s in steps.items()}


def test_columns_decide_5_000_generated_transactions_as_the_row_engine() -> None:
    transactions, steps = generated(5_000, seed=3)
    assert_same(transactions, every_feature_rules(), steps)


def test_chunks_cover_the_rows_in_order_and_a_part_reads_as_the_whole_does() -> None:
    # Chunks of about COLUMN_CHUNK rows, in order, covering every row once (one chunk below 1.5 chunks' worth).
    for count in (8, 1_000, 1_535, 1_536, 5_000, 100_003):
        chunks = column_chunks(count)
        assert chunks[0][0] == 0 and chunks[-1][1] == count
        assert all(a[1] == b[0] for a, b in pairwise(chunks))
        assert len(chunks) == 1 or all(abs(b - a - COLUMN_CHUNK) <= COLUMN_CHUNK // 4 + 1 for a, b in chunks)
        assert (len(chunks) == 1) == (count < 1.5 * COLUMN_CHUNK)
    # Given the columns of generated traffic, with values given per row and a champion's scores added,
    transactions, _ = generated(3_000, seed=6)
    detector = every_feature_rules()
    whole = columnar_features(
        transactions, defaultdict(empty_history), defaultdict(empty_timeline), detector.needed_features,
        detector.feature_settings,
    )  # fmt: skip
    assert whole is not None
    whole.add_values("country", [t.country for t in transactions])
    whole.add_model_scores([random.Random(i).random() for i in range(whole.size)])
    names = sorted({*whole.row_names(True), *whole.row_names(False)})
    recorded = [name for name in names if name != "country"]  # the stored JSON holds numbers only
    rows, texts = whole.rows(), whole.json_rows(recorded)
    # then each part reads its rows as the whole does: dicts, stored JSON, floats and values at any rows.
    for start, stop in column_chunks(whole.size):
        part = whole.part(start, stop)
        assert part.size == stop - start
        assert part.rows() == rows[start:stop]
        assert part.json_rows(recorded) == texts[start:stop]
        for name in names:
            if name != "country":
                assert np.array_equal(part.number(name)[0], whole.number(name)[0][start:stop], equal_nan=True)
            assert part.values_at(name, [0, part.size - 1]) == whole.values_at(name, [start, stop - 1])
    assert whole.part(0, whole.size) is whole


def test_columns_decide_with_a_champion_as_the_row_engine() -> None:
    # Given a champion that flags some transactions (explained from the columns' rows) and rules reading its score,
    from tests.model_fixtures import trained_artifact

    artifact = decode_artifact(trained_artifact(threshold=0.5))
    document = every_feature_rules().rule_set.document()
    document["rules"].append({"id": "scored", "description": "model", "when": "model_score > 0.3", "score": "0.2"})
    rules = CompiledRuleSet(1, validate_rule_set(document))
    detector = ModelDetector(2, rules, ServedModel(1, TreeModel.from_artifact(artifact), 0.5))
    transactions, steps = generated(2_000, seed=5)
    # then features (model_score included), decisions and explanations are the row engine's.
    assert_same(transactions, detector, steps)
    decided, _, _ = replay(transactions, detector, steps)
    assert any(r.mode == "model" for d in decided for r in d.decision.reasons)
    assert all(d.features is not None and "model_score" in d.features for d in decided)


def test_columns_decide_100_000_generated_transactions_as_the_row_engine() -> None:
    transactions, steps = generated(100_000, seed=4)
    assert_same(transactions, every_feature_rules("Europe/Paris", 7), steps, record=False)


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(
        st.tuples(
            st.one_of(
                st.integers(-(2**53), 2**53),
                st.integers(0, 10**7),
                st.integers(-(2**63), 2**63 - 1),
                st.sampled_from([0, 1, 5, 999_999, 2**52 - 1, 2**52, 2**53 - 1, -(2**52) + 1, 10**15 + 5, 10**16]),
                st.sampled_from([9_999, 10_000, 99_999_999, 10**8, 10**18, 2**63 - 1, -(2**63) + 1, -(2**63), -1]),
            ),
            st.booleans(),
            st.booleans(),
            st.one_of(st.none(), st.integers(-(2**70), 2**70), st.decimals(allow_nan=False, allow_infinity=False)),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_the_stored_json_written_from_columns_is_the_row_dicts_json_at_every_magnitude(
    values: list[tuple[int, bool, bool, int | Decimal | None]],
) -> None:
    # Given exact columns of 0 to 12 places (values over int64's range, missing ones, accounts' first rows, an
    # account age), one of Python integers beyond int64 and one given per row (ints, Decimals, None),
    scaled = np.array([v for v, _, _, _ in values], dtype=np.int64)
    present = np.array([p for _, p, _, _ in values])
    first = np.array([f for _, _, f, _ in values])
    numbers = {
        f"p{places}{'_missing' if missing else ''}": Column(scaled, places, present if missing else None)
        for places in (0, 1, 2, 3, 4, 5, 6, 7, 8, 12)
        for missing in (False, True)
    }
    numbers["account_age_seconds"] = Column(scaled, 3)
    wide = [v * 2**20 + 1 for v, _, _, _ in values]  # beyond int64, within Decimal's 28 digits
    numbers["wide"] = Column(np.array(wide, dtype=object), 4, present)
    names = sorted(numbers)
    columns = FeatureColumns(len(values), numbers, ["account_age_seconds", *names[:3]], names, first)
    columns.add_values("given", [g for _, _, _, g in values])
    keys = [*names, "given", "absent"]
    # then the JSON written from the columns is features_json of each row's dict, byte for byte.
    assert columns.json_rows(keys) == [features_json(row, keys) for row in columns.rows()]


# Sums of squares q such that, with count 1 and total 0 (S = q), 40,000 × q is at or just beside a square m² for m
# near 10^15, where float64's square root lands on the wrong side of an integer. The last six also change the
# rounded millionths: float64's floor is one too low (first three) or one too high (last three).
NEAR_SQUARES = [
    q
    for j in (10**10 + 3, 11_609_337_231, 13_280_387_012, 27_756_959_221)
    for q in (j * (40_000 * j + 2), 40_000 * j * j, 40_000 * j * j - 1, 40_000 * j * j + 1)
] + [
    6_710_067_940_840_411_516_497_766,
    6_076_342_933_146_384_628_139_593,
    6_544_054_577_119_805_204_167_080,
    3_697_713_520_207_372_959_907_105,
    11_833_245_711_280_223_823_499_794,
    5_566_029_787_988_137_181_544_372,
]


@settings(max_examples=200, deadline=None)
@given(
    accounts=st.lists(
        st.tuples(
            # The stored count, total and sum of squares (any: the spread may be negative, then 0, as in _std),
            st.one_of(st.integers(0, 10**6), st.just(1)),
            st.one_of(st.integers(-(10**16), 10**17), st.just(0)),
            st.one_of(
                st.integers(0, 10**20),
                st.integers(0, 10**34),
                st.sampled_from([0, 1, 10**32, 2**64 - 1, 2**64]),
                # With count 1 and total 0, 40,000 × these are m² - 1, m², m² - 40,000 and m² + 40,000 for m near
                # 10^15 (m = 40,000 j + 1, or 40,000 j), where the float square root rounds to the wrong side.
                st.sampled_from(NEAR_SQUARES),
            ),
            # then the new transactions' amounts in ten-thousandths: zeros, equal ones, up to 10^12 (four places).
            st.lists(
                st.one_of(
                    st.integers(0, 10**8),
                    st.sampled_from([0, 0, 1, 9_999, 10**16, 10**16 - 1, 2 * 10**15 + 1]),
                    st.integers(-(10**8), 0),
                ),
                max_size=12,
            ),
        ),
        min_size=1,
        max_size=6,
    ),
    seed=st.integers(0, 2**16),
)
@example(accounts=[(1, 0, q, [7]) for q in NEAR_SQUARES], seed=0)
def test_the_vectorised_standard_deviation_is_features_std_exactly(
    accounts: list[tuple[int, int, int, list[int]]], seed: int
) -> None:
    # Given accounts with stored totals and new transactions (rows in any order), each row's count, total and
    # sum of squares being its account's stored ones plus its earlier new transactions',
    from txguard.feature_columns import _std_millionths
    from txguard.features import _std

    # (a stored sum of squares is at most count × (10^16)²: every amount is below 10^12 with four places, so a
    # standard deviation, at most 100 × the largest amount in millionths, stays within int64)
    accounts = [(c, s, min(q, max(c, 1) * 10**32), units) for c, s, q, units in accounts]
    sorted_units = [u for *_, units in accounts for u in units]
    starts = np.cumsum([0] + [len(units) for *_, units in accounts])
    rows = [(a, k) for a, (*_, units) in enumerate(accounts) for k in range(len(units))]
    random.Random(seed).shuffle(rows)
    codes = np.array([a for a, _ in rows], dtype=np.int64)
    before = np.array([k for _, k in rows], dtype=np.int64)
    count = np.array([accounts[a][0] + k for a, k in rows], dtype=np.int64)
    total = np.array([accounts[a][1] + sum(accounts[a][3][:k]) for a, k in rows], dtype=np.int64)
    std = _std_millionths(
        count,
        total,
        [squares for _, _, squares, _ in accounts],
        codes,
        np.array(sorted_units, dtype=np.int64),
        starts[codes],
        before,
    )
    # then each is features._std of those, in millionths (0 without a previous transaction).
    expected = [
        int(_std(int(s), accounts[a][2] + sum(u * u for u in accounts[a][3][:k]), int(c)).scaleb(6)) if c else 0
        for (a, k), c, s in zip(rows, count, total, strict=True)
    ]
    assert std.tolist() == expected


@settings(max_examples=40, deadline=None)
@given(
    history=histories(),
    huge=st.sampled_from(["500000000000", "499999999999.9999", "500000000000.0000", "0"]),
    at=st.integers(0, 10**6),
    cut=st.integers(COLUMN_ROWS, 60),
)
def test_columns_continue_a_history_with_a_huge_amount_as_the_row_engine(
    history: tuple[list[Transaction], dict[str, list[tuple[int, int, int]]]], huge: str, at: int, cut: int
) -> None:
    # Given a stored history with one amount of 5·10^11 (four places: its square and the spread beyond 10^31,
    # left to Python integers; the columns refuse a batch whose sums could leave int64, as with 10^12 in the
    # tail, the day's total and the stored total) among small, zero and equal ones,
    transactions, steps = history
    transactions = list(transactions)
    if len(transactions) - cut < COLUMN_ROWS:
        cut = len(transactions) - COLUMN_ROWS
    stored_part = transactions[:cut]
    if stored_part:
        i = at % len(stored_part)
        stored_part[i] = stored_part[i]._replace(amount=Decimal(huge))
    detector = every_feature_rules()
    stored = as_stored(stored_part, detector, steps)
    # then the new transactions are decided as columns with the row engine's features, JSON and decisions.
    assert_same(transactions[cut:], detector, steps, stored=stored)


@settings(max_examples=200, deadline=None)
@given(
    amounts=st.lists(
        st.one_of(
            st.decimals(min_value=-(10**15), max_value=10**15, places=4),
            st.decimals(allow_nan=False, allow_infinity=False),
            st.sampled_from(["0", "-0", "0.0000", "0E-8", "1E+3", "5E+15", "1.00000", "912.00", "0.0001", "-41.2"]),
            st.sampled_from(["1000000000000.0000", "999999999999.9999", "99999999999999.9999", "100000000000000"]),
            st.sampled_from(["461168601842738", "461168601842737.9999", "1E+14", "123456789012345678"]),
        ).map(Decimal),
        min_size=1,
        max_size=12,
    )
)
def test_the_amounts_read_at_once_are_to_units_of_each(amounts: list[Decimal]) -> None:
    # Given amounts in any notation str(Decimal) writes (exponents, trailing zeros, -0, more than four places,
    # beyond int64's range),
    from txguard.feature_columns import _amount_units
    from txguard.features import to_units

    transactions = [Transaction(i, 1, D0 + i, amount, "EUR", None) for i, amount in enumerate(amounts)]
    try:
        expected: list[int] | None = [to_units(amount) for amount in amounts]
    except ValueError as refused:
        # then those to_units refuses are refused with its error,
        with pytest.raises(ValueError, match=re.escape(str(refused))):
            _amount_units(transactions)
        return
    units = _amount_units(transactions)
    # and the others are its units, or None when one reaches 2^62 (the columns then refuse the batch).
    assert expected is not None
    assert (None if max(abs(u) for u in expected) >= 2**62 else expected) == (None if units is None else units.tolist())
