"""The COPY text of decided rows (txguard.storage.transactions): written a chunk at a time by copy_lines, byte for
byte the text copy_line defines row by row, whatever the rows hold."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from decimal import Decimal
from itertools import cycle

import pytest

from txguard.detection import Decided
from txguard.domain import Decision, Reason, Transaction
from txguard.storage.transactions import (
    _LINES_PER_BUILD,
    _VECTOR_TS_FROM,
    _VECTOR_TS_TO,
    _DecidedRows,
    _timestamp_text,
    _timestamp_texts,
    copy_line,
    copy_lines,
)

DAY_MS = 86_400_000
Y2000 = 946_684_800_000

# Text that COPY's format must escape, or JSON must: tabs, newlines, carriage returns, backslashes, quotes, and
# characters beyond ASCII.
ODD = ["tab\there", "new\nline", "cr\rlf\r\n", "back\\slash \\n \\t \\\\", 'say "hi"', "é ü 漢 \u2028", "", "\\N"]


def decisions(rng: random.Random) -> list[Decision]:
    """Decisions of every kind: without reasons, with reasons whose text needs escaping, with a champion, a
    fallback and shadows, without a detector version, in each outcome."""
    made = [Decision(False, Decimal(0).quantize(Decimal("0.0001")), (), 7, 3)]  # nothing_found, shared below
    for _ in range(40):
        reasons = tuple(
            Reason(
                rng.choice(["large_amount", "below_mean", "list:blocked", "model"]),
                rng.choice(["active", "shadow", "snoozed"]),
                Decimal(rng.choice(["1.0", "0.5", "0.25", "1", "0.30"])),
                f"amount {rng.randint(0, 10**6)}.{rng.randint(0, 99):02d} {rng.choice(ODD)}",
            )
            for _ in range(rng.choice([0, 1, 1, 2, 5]))
        )
        outcome = rng.choice(["allow", "review", "block"])
        model = rng.random() < 0.5
        made.append(
            Decision(
                outcome == "block",
                Decimal(rng.choice([0, 5000, 10_000, rng.randint(0, 10_000)])).scaleb(-4),
                reasons,
                rng.randint(1, 30),
                rng.choice([None, 1, 12]),
                rng.randint(1, 5) if model else None,
                rng.random() if model else None,
                rng.choice([None, 0.5, 1 / 3]) if model else None,
                rng.choice([None, None, "no champion", rng.choice(ODD)]),
                rng.choice([None, {}, {2: 0.1, 11: rng.random(), 3: 1e-20}]),
                outcome=outcome,  # type: ignore[arg-type]
            )
        )
    # Equal decisions (shadow scores are not compared) written differently: each object is written as itself.
    made += [replace(made[-1], shadow_scores={1: 0.25}), replace(made[-1], shadow_scores={1: 0.5})]
    return made


def transactions(rng: random.Random, count: int, start: int) -> list[Transaction]:
    """Transactions with and without a merchant and attributes, zero and large amounts, several currencies, and
    metadata holding what COPY's format must escape; timestamps across days, on midnight and its last ms."""
    made = []
    ts = start
    for i in range(count):
        ts += rng.choice([0, 1, 999, 1000, 59_999, 3_600_000, DAY_MS - 1, DAY_MS, 37 * DAY_MS])
        t = Transaction(
            rng.randint(-(2**63), 2**63 - 1) if i % 7 == 0 else i + 1,
            rng.randint(1, 10**12),
            ts - ts % DAY_MS if i % 11 == 0 else ts,
            Decimal(rng.choice(["0", "0.00", "0.0000", "0.01", "999999999999.99", f"{rng.randint(0, 10**5)}.25"])),
            rng.choice(["EUR", "USD", "JPY", "BHD"]),
            rng.choice([None, "m-1", f"merchant {i}"]),
        )
        if rng.random() < 0.5:
            t = t._replace(
                channel=rng.choice([None, "web", "moto"]),
                country=rng.choice([None, "FR"]),
                merchant_category=rng.choice([None, "0742"]),
                card_id=rng.choice([None, f"card-{i}"]),
                ip_address=rng.choice([None, "::1", "192.0.2.1"]),
                device_id=rng.choice([None, f"d{i}"]),
                metadata=rng.choice(
                    [None, {}, {"note": rng.choice(ODD)}, {rng.choice(ODD): "v", "k": rng.choice(ODD)}]
                ),
            )
        made.append(t)
    return made


def decided_rows(seed: int, count: int, start: int = Y2000) -> list[Decided]:
    rng = random.Random(seed)
    made = decisions(rng)
    features = [None, "{}", '{"amount":12.5000,"count":3,"is_night":1,"mean_amount":null}']
    return [
        # Most rows share the first decision (as the many a detector finds nothing about do).
        Decided(t, None, made[0] if rng.random() < 0.4 else rng.choice(made), rng.choice(features))
        for t in transactions(rng, count, start)
    ]


def per_row(rows: list[Decided]) -> str:
    return "".join(copy_line(t, d, "{}" if recorded is None else recorded) for t, _, d, recorded in rows)


@pytest.mark.parametrize("seed", range(6))
def test_a_chunk_s_text_is_each_row_s_copy_line_joined(seed: int) -> None:
    rows = decided_rows(seed, 300)
    assert copy_lines(rows) == per_row(rows)
    for size in (1, 7, _LINES_PER_BUILD):
        assert [copy_lines(rows[i : i + size]) for i in range(0, len(rows), size)] == [
            per_row(rows[i : i + size]) for i in range(0, len(rows), size)
        ]


@pytest.mark.parametrize("size", [-1, 0, 1, 500, 32_768, 10**7])
def test_what_copy_reads_is_the_rows_text_whatever_the_size_asked_and_each_decision_is_kept(size: int) -> None:
    rows = decided_rows(size, 3 * _LINES_PER_BUILD + 5)
    decisions: dict[int, Decision] = {}
    read = _DecidedRows(iter(rows), decisions)
    texts = []
    while text := read.read(size):
        texts.append(text)
    assert "".join(texts) == per_row(rows)
    assert all(len(text) >= size for text in texts[:-1])  # but the last, as much as asked
    assert list(decisions) == [t.transaction_id for t, *_ in rows]
    assert all(decisions[t.transaction_id] is d for t, _, d, _ in rows)


def test_a_decision_s_reasons_are_written_once_and_are_their_json() -> None:
    reasons = (Reason("r", "active", Decimal("0.50"), ODD[3] + ODD[0] + ODD[5]), Reason("s", "shadow", Decimal(1), ""))
    d = Decision(False, Decimal("0.5000"), reasons, 1)
    assert d.reasons_text is d.reasons_text
    assert json.loads(d.reasons_text) == d.reasons_json
    assert d.reasons_text == json.dumps(d.reasons_json, ensure_ascii=False, separators=(",", ":"))
    assert Decision(False, Decimal(0), (), 1).reasons_text == "[]"


def test_timestamps_converted_together_are_those_written_one_at_a_time() -> None:
    """In numpy's range of four-digit years, and past its ends (one at a time there)."""
    rng = random.Random(5)
    for low, high in [(Y2000, Y2000 + 40 * 365 * DAY_MS), (_VECTOR_TS_FROM, _VECTOR_TS_TO - 1)]:
        ms = [rng.randint(low, high) for _ in range(2000)] + [low, high, low + DAY_MS - 1]
        assert _timestamp_texts(ms) == [_timestamp_text(m) for m in ms]
    outside = [_VECTOR_TS_FROM - 1, Y2000, _VECTOR_TS_TO - 1]
    assert _timestamp_texts(outside) == [_timestamp_text(m) for m in outside]
    assert _timestamp_texts([]) == []


def test_rows_in_any_order_of_time_give_the_same_text() -> None:
    rows = decided_rows(9, 200)
    rng = random.Random(1)
    rng.shuffle(rows)
    swapped = cycle([Y2000 - 1, _VECTOR_TS_FROM - DAY_MS])  # one chunk converted one at a time
    rows[-3:] = [r._replace(transaction=r.transaction._replace(ts=next(swapped))) for r in rows[-3:]]
    assert copy_lines(rows) == per_row(rows)
