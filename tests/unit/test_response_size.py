"""The byte counting the routes stay under Lambda's response limit by, against what the runtime would send."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from txguard.api import response_size
from txguard.api.response_size import (
    BODY_BUDGET,
    LAMBDA_RESPONSE_LIMIT,
    PAGE_CUT_HEADER,
    fitting_text,
    page_response,
    result_size,
    wire_size,
)

TEXTS = [
    "plain",
    'a "quoted" \\ path',
    "line\nbreak\ttab\x01\x7f\x1f",
    "café ünïcode",
    "カード" * 50,
    "\U0001f4b3 card",
    "lone \ud800 and paired \ud83d\ude00",
    "",
]


def runtime_size(text: str) -> int:
    return len(json.dumps({"body": text})) - len(json.dumps({"body": ""}))


@pytest.mark.parametrize("text", TEXTS)
def test_wire_size_is_what_the_runtime_encoder_writes(text: str) -> None:
    assert wire_size(text) == runtime_size(text)


@given(st.text(st.characters(codec=None)) | st.text(st.characters(max_codepoint=0x7F)))
def test_wire_size_of_any_text_is_what_the_runtime_encoder_writes(text: str) -> None:
    assert wire_size(text) == runtime_size(text)


@pytest.mark.parametrize("text", [t for t in TEXTS if "\ud800" not in t])
def test_a_body_fits_up_to_its_last_byte_and_its_size_is_measured_once(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = orjson.dumps({"results": [text] * 50})
    exact = runtime_size(data.decode())
    for budget, fit in ((exact, True), (exact - 1, False), (6 * len(data), True), (BODY_BUDGET, True)):
        monkeypatch.setattr(response_size, "BODY_BUDGET", budget)
        body, fits = fitting_text(data)
        assert (body, fits) == (data.decode(), fit)
    # What was measured is read back by identity only: an equal text built apart is measured on its own, and a
    # different one of the same length gets its own size.
    monkeypatch.setattr(response_size, "BODY_BUDGET", exact - 1)
    body, _ = fitting_text(data)
    assert wire_size(body) == exact and wire_size("x" * len(body)) == len(body)
    near = {"statusCode": 201, "headers": {"a": "b"}, "body": body}
    monkeypatch.setattr(response_size, "LAMBDA_RESPONSE_LIMIT", 0)  # so that result_size measures the body
    assert result_size(near) == len(json.dumps(near))
    assert response_size._last_measured[0] is None  # not held past the answer


def test_result_size_is_exact_near_the_limit_and_an_upper_bound_below_it() -> None:
    near = {"statusCode": 200, "headers": {"a": "b"}, "body": "\U0001f4b3" * 600_000}
    assert result_size(near) == len(json.dumps(near)) > LAMBDA_RESPONSE_LIMIT
    small = {"statusCode": 200, "body": "é" * 100}
    assert len(json.dumps(small)) <= result_size(small) <= LAMBDA_RESPONSE_LIMIT


def test_a_page_is_cut_where_the_next_item_would_pass_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    items = [{"id": i, "note": "é" * 100} for i in range(10)]  # each about 615 bytes on the wire
    monkeypatch.setattr(response_size, "BODY_BUDGET", 2_500)
    cut = page_response("items", items, dict, "the-end", lambda item: f"after-{item['id']}")
    body = json.loads(cut.body)
    assert [i["id"] for i in body["items"]] == [0, 1, 2]
    assert body["next_cursor"] == "after-2" and cut.headers[PAGE_CUT_HEADER] == "size"
    assert wire_size(cut.body) <= 2_500

    monkeypatch.setattr(response_size, "BODY_BUDGET", 100)  # not even one fits: one is sent, so reading goes on
    one = json.loads(page_response("items", items, dict, None, lambda item: f"after-{item['id']}").body)
    assert ([i["id"] for i in one["items"]], one["next_cursor"]) == ([0], "after-0")

    monkeypatch.setattr(response_size, "BODY_BUDGET", 10**6)
    whole = page_response("items", items, dict, "the-end", lambda item: f"after-{item['id']}")
    assert json.loads(whole.body)["next_cursor"] == "the-end" and PAGE_CUT_HEADER not in whole.headers


def test_the_generators_sink_counts_flagged_transactions_in_either_form_of_the_answer() -> None:
    from txguard_generator.sinks import _outcome

    full = {
        "results": [
            {"transaction_id": 1, "status": "stored", "decision": {"fraud": True, "outcome": "block"}},
            {"transaction_id": 2, "status": "stored", "decision": {"fraud": False, "outcome": "review"}},
            {"transaction_id": 3, "status": "duplicate", "decision": {"fraud": True, "outcome": "block"}},
        ]
    }
    compact = {
        "results": [
            {"transaction_id": 1, "status": "stored", "outcome": "block", "score": "0.9000"},
            {"transaction_id": 2, "status": "stored", "outcome": "review", "score": "0.6000"},
            {"transaction_id": 3, "status": "duplicate", "outcome": "block", "score": "0.9000"},
        ],
        "downgraded": {"code": "response_too_large"},
    }
    for answer in (full, compact):
        counted = _outcome(answer, 3)
        assert (counted.stored, counted.duplicates, counted.flagged) == (2, 1, 1)
