"""Hostile JSON for POST /store_data, generated (Hypothesis) against `txguard local` on a real PostgreSQL: huge and
tiny exponents, long decimals, other scripts' digits, underscores, odd media types, top-level arrays, nesting and
keys given twice, mixed into otherwise valid transactions.

The oracle: a request built only from valid parts is stored whole (201, every item in the table); any other gets
a 4xx in the one error shape and leaves the table as it was (none of its ids stored, the row count unchanged).
`make test` runs a fixed set of examples; TXGUARD_LOAD_SCALE=full runs many more, new ones each time.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import admin_query
from tests.e2e.conftest import LocalService
from tests.reliability.conftest import FULL_SCALE, NOW_MS, send_bytes
from txguard.intake import EARLIEST_TIMESTAMP_MS

pytestmark = [pytest.mark.reliability, pytest.mark.e2e]

EXAMPLES = 2000 if FULL_SCALE else 75
_ids = itertools.count(7_000_000_000)


@dataclass(frozen=True)
class Part:
    """A piece of JSON text, and whether the API must accept it where it is put."""

    text: str
    valid: bool


def _valid(text: str) -> Part:
    return Part(text, True)


def _invalid(text: str) -> Part:
    return Part(text, False)


# Numbers that are out of range, or not numbers by the rule, wherever they stand (ids, timestamp, amount).
_exponent = st.integers(min_value=300, max_value=1_000_000)
_long = st.integers(min_value=25, max_value=20_000)
HOSTILE_NUMBERS = st.one_of(
    _exponent.map(lambda n: _invalid(f"1e{n}")),
    _exponent.map(lambda n: _invalid(f"-1e{n}")),
    _exponent.map(lambda n: _invalid(f"1e-{n}")),
    _exponent.map(lambda n: _invalid(f"1E+{n}0000000000000000000")),
    _long.map(lambda n: _invalid("9" * n)),
    _long.map(lambda n: _invalid("1." + "0" * n + "1")),
    _long.map(lambda n: _invalid(json.dumps("1." + "0" * n + "1"))),
    st.sampled_from(["٤٢", "４２", "४२", "1_0", "1__0.5_", " 42", "+42", "0x2A", "4.2e1x", "NaN", "Infinity"]).map(
        lambda s: _invalid(json.dumps(s))
    ),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "true", "null", "[]", "{}"]).map(_invalid),
)


def _rfc3339(ms: int, offset_minutes: int) -> str:
    zone = timezone(timedelta(minutes=offset_minutes))
    moment = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)).astimezone(zone)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


_past_ms = st.integers(min_value=EARLIEST_TIMESTAMP_MS, max_value=NOW_MS)
VALID_TIMESTAMPS = st.one_of(
    _past_ms.map(lambda ms: _valid(str(ms))),
    _past_ms.map(lambda ms: _valid(json.dumps(str(ms)))),
    st.tuples(_past_ms, st.sampled_from([0, 120, -330, 840])).map(lambda a: _valid(json.dumps(_rfc3339(*a)))),
)
_cents = st.integers(min_value=0, max_value=10**14)
VALID_AMOUNTS = st.one_of(
    _cents.map(lambda c: _valid(f"{c // 100}.{c % 100:02d}")),
    _cents.map(lambda c: _valid(json.dumps(f"{c // 100}.{c % 100:02d}"))),
    st.integers(min_value=0, max_value=10**12).map(lambda n: _valid(str(n))),
    # card verifications: zero in every spelling, a signed zero included
    st.sampled_from(["0", "0.0", "0e0", "-0", '"0"', '"0.00"', '"0e0"', '"-0.00"']).map(_valid),
    st.integers(min_value=1, max_value=10).map(lambda e: _valid(json.dumps(f"1E+{e}"))),
    st.integers(min_value=1, max_value=40).map(lambda z: _valid(json.dumps("12.5" + "0" * z))),
)


@st.composite
def transactions(draw: st.DrawFn) -> tuple[str, bool, int]:
    """One transaction's JSON text, whether it is valid, and its transaction_id."""
    tid = next(_ids)
    fields = {
        "account_id": _valid(str(draw(st.integers(min_value=1, max_value=50)))),
        "transaction_id": _valid(str(tid)),
        "timestamp": draw(VALID_TIMESTAMPS),
        "amount": draw(VALID_AMOUNTS),
    }
    for name in draw(st.sets(st.sampled_from(sorted(fields)), max_size=2)):
        fields[name] = draw(HOSTILE_NUMBERS)
    extra = draw(st.sampled_from(["", "nested", "twice"]))
    text = ", ".join(f'"{name}": {part.text}' for name, part in fields.items())
    if extra == "nested":
        text += ', "meta": {"a": [1, {"b": 2}]}'
    elif extra == "twice":
        text += f', "amount": {fields["amount"].text}'
    return "{" + text + "}", all(p.valid for p in fields.values()) and not extra, tid


MEDIA_TYPES = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "APPLICATION/JSON",
            "Application/Json; Charset=UTF-8",
            'application/json; charset="utf-8"',
            "application/vnd.txguard+json",
        ]
    ).map(_valid),
    st.sampled_from(
        [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/json; charset=latin-1",
            "application/json; charset=utf-16",
            "application/jsonp",
            "*/*",
            "application/json; charset",
            "application/json, text/plain",
        ]
    ).map(_invalid),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, str, bool, list[int]]:
    """A body, its media type, whether the whole request is valid, and every transaction_id in it."""
    items = draw(st.lists(transactions(), min_size=1, max_size=4))
    texts, ids = [t for t, _, _ in items], [tid for _, _, tid in items]
    valid = all(ok for _, ok, _ in items)
    shape = draw(st.sampled_from(["single", "batch", "array", "nested-batch", "wrapped", "batch-and-more"]))
    if shape == "single":
        body, ids = texts[0], ids[:1]
        valid = items[0][1]
    elif shape == "batch":
        body = '{"transactions": [' + ", ".join(texts) + "]}"
    elif shape == "array":
        body, valid = "[" + ", ".join(texts) + "]", False
    elif shape == "nested-batch":
        body, valid = '{"transactions": [[' + ", ".join(texts) + "]]}", False
    elif shape == "wrapped":
        depth = draw(st.integers(min_value=1, max_value=5000))
        body, valid = "[" * depth + texts[0] + "]" * depth, False
    else:
        body, valid = '{"transactions": [' + ", ".join(texts) + '], "account_id": 1}', False
    media = draw(MEDIA_TYPES)
    return body.encode(), media.text, valid and media.valid, ids


def assert_one_error_shape(body: bytes) -> None:
    answer = json.loads(body)
    assert set(answer) == {"error"}, answer
    error = answer["error"]
    assert set(error) == {"code", "message", "details"} and isinstance(error["code"], str) and error["message"]
    assert all(set(d) <= {"index", "field", "value", "reason"} and d["reason"] for d in error["details"]), error


def stored(database_url: str, ids: list[int]) -> int:
    return int(
        admin_query(database_url, "SELECT count(*) FROM transactions WHERE transaction_id = ANY(%s)", (ids,))[0][0]
    )


def row_count(database_url: str) -> int:
    return int(admin_query(database_url, "SELECT count(*) FROM transactions")[0][0])


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not FULL_SCALE,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
@given(request=requests())
def test_hostile_json_is_stored_whole_or_refused_with_nothing_stored(
    service: LocalService, hostile_database_url: str, request: tuple[bytes, str, bool, list[int]]
) -> None:
    body, media_type, valid, ids = request
    event("valid: stored whole" if valid else "invalid: refused")
    before = row_count(hostile_database_url)
    answer = send_bytes(service, "POST", "/store_data", body, content_type=media_type)
    if valid:
        assert answer.status == 201, (media_type, body[:300], answer.body[:500])
        results = json.loads(answer.body)["results"]
        assert [r["transaction_id"] for r in results] == ids
        assert stored(hostile_database_url, ids) == len(ids) == row_count(hostile_database_url) - before
    else:
        assert 400 <= answer.status < 500, (media_type, body[:300], answer.status, answer.body[:500])
        assert_one_error_shape(answer.body)
        assert stored(hostile_database_url, ids) == 0
        assert row_count(hostile_database_url) == before
