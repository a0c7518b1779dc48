"""Lambda's response limit, and how the routes stay under it.

A synchronous Lambda invocation's result may be at most 6,291,556 bytes, counted as the runtime sends it: the
proxy result (`statusCode`, headers, `body`, ...) serialised as JSON. The python3.11 runtime's encoder escapes
every character outside ASCII (`\\uXXXX`, six bytes; twelve for a character beyond the BMP) and every `"` and `\\`
of the body, so a body's size on the wire is not its UTF-8 size. A result over the limit becomes Lambda's error
and API Gateway's 5xx, after the route's work is done (a write is committed by then).

So: a write whose full answer would not fit answers in its compact form (marked, see `downgraded`); a page is
cut by bytes as well as by count (its next_cursor continues after the last item sent); and the resolver's last
check turns anything still over into our own 500 rather than Lambda's error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import orjson
from aws_lambda_powertools.event_handler import Response, content_types

from txguard.observability import logger

LAMBDA_RESPONSE_LIMIT = 6_291_556  # bytes of the invocation result, envelope included
# Left for the envelope around the body: status, the headers (ours and Powertools'), isBase64Encoded. A proxy
# result's envelope is a few hundred bytes; the rest is margin.
ENVELOPE_ALLOWANCE = 16_384
BODY_BUDGET = LAMBDA_RESPONSE_LIMIT - ENVELOPE_ALLOWANCE

# Every POST /store_data and POST /labels answer names the form its results are in (`full`, or the compact
# form); a client that asked for `full` and reads another knows the full form did not fit.
FORM_HEADER = "Txguard-Response-Form"
# On a page cut by bytes before `limit` items: `size`.
PAGE_CUT_HEADER = "Txguard-Page-Cut"

# The OpenAPI description of a page's 200 answer.
PAGE_DESCRIPTION = (
    "a page: at most `limit` items, and at most what fits in Lambda's response limit (then fewer, with the header "
    "Txguard-Page-Cut: size); next_cursor continues right after the last item sent, null on the last page"
)

PAGE_HEADERS: dict[str, Any] = {
    PAGE_CUT_HEADER: {
        "description": "`size` when the page holds fewer than `limit` items because more would not fit",
        "schema": {"type": "string", "enum": ["size"]},
    }
}


def form_headers(*forms: str) -> dict[str, Any]:
    """The OpenAPI `headers` of a write's answer: FORM_HEADER, one of `forms`."""
    return {
        FORM_HEADER: {
            "description": "the form of the results: the one asked for, or a more compact one (see `downgraded`)",
            "required": True,
            "schema": {"type": "string", "enum": list(forms)},
        }
    }


T = TypeVar("T")


def wire_size(text: str) -> int:
    """Bytes `text` takes inside the invocation result as the python3.11 runtime encodes it (ensure_ascii JSON),
    its two quotes excluded."""
    last_text, last_size = _last_measured
    if text is last_text:
        return last_size
    return utf8_wire_size(text.encode("utf-8", "surrogatepass"))


def utf8_wire_size(data: bytes) -> int:
    """wire_size of the text whose UTF-8 is `data` (lone surrogates as "surrogatepass" writes them).

    The encoder's cost is per character: 1 for printable ASCII but `"` and `\\`, 2 for those two, and json.dumps
    says what the rest costs (a control character 2 or 6, a character outside ASCII 6, or 12 beyond the BMP). Most
    of a body is the first kind, counted without building the body's escaped copy."""
    rest = data.translate(None, _PLAIN_ASCII)
    if not rest:
        return len(data)
    others = rest.translate(None, b'"\\')
    escaped = len(json.dumps(others.decode("utf-8", "surrogatepass"))) - 2 if others else 0
    return len(data) - len(rest) + 2 * (len(rest) - len(others)) + escaped


_PLAIN_ASCII = bytes(c for c in range(0x20, 0x7F) if c not in b'"\\')

# The body measured last, and its wire size: the resolver's last check (result_size) reads it back rather than
# measuring a body of megabytes again. Held by identity, so a text is never taken for another.
_last_measured: tuple[str | None, int] = (None, 0)


def fitting_text(data: bytes) -> tuple[str, bool]:
    """orjson's `data` as a body's text, and whether it fits in BODY_BUDGET on the wire. A body near the budget is
    measured once: its size is remembered for result_size."""
    global _last_measured
    text = data.decode()
    # No UTF-8 byte takes more than 6 bytes on the wire (a control character; other characters 3 at most).
    if 6 * len(data) <= BODY_BUDGET:
        return text, True
    size = utf8_wire_size(data)
    _last_measured = (text, size)
    return text, size <= BODY_BUDGET


def result_size(result: dict[str, Any]) -> int:
    """Bytes of a whole proxy result as the runtime sends it (what Lambda compares with LAMBDA_RESPONSE_LIMIT); for
    a result that cannot be near the limit, an upper bound of them (no character takes more than 12 bytes)."""
    global _last_measured
    body = result.get("body")
    text = body if isinstance(body, str) else ""
    envelope = len(json.dumps({**result, "body": ""}, default=str))
    if envelope + 12 * len(text) <= LAMBDA_RESPONSE_LIMIT:
        return envelope + 12 * len(text)
    size = envelope + wire_size(text) if isinstance(body, str) else len(json.dumps(result, default=str))
    _last_measured = (None, 0)  # the last reader of the body measured: not held past its answer
    return size


def downgraded(asked: str, served: str, full_text: str) -> dict[str, Any]:
    """The body member saying a write answered in its compact form because the full one would not fit:
    `{"code": "response_too_large", "asked", "served", "full_bytes", "limit_bytes", "message"}`."""
    full_bytes = wire_size(full_text)
    return {
        "code": "response_too_large",
        "asked": asked,
        "served": served,
        "full_bytes": full_bytes,
        "limit_bytes": LAMBDA_RESPONSE_LIMIT,
        "message": f"everything was stored; the {asked} form of the answer would be {full_bytes} bytes, over the "
        f"{LAMBDA_RESPONSE_LIMIT}-byte response limit, so each result is in the {served} form",
    }


def write_response(status: int, text: str, form: str, headers: dict[str, str] | None = None) -> Response[str]:
    """A write's answer (JSON text already serialised), naming its results' form in FORM_HEADER."""
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=text,
        headers={FORM_HEADER: form, **(headers or {})},
    )


def committed_answer(
    status: int,
    asked: str,
    compact_form: str,
    full_body: Callable[[], dict[str, Any]],
    compact_body: Callable[[], dict[str, Any]],
) -> Response[str]:
    """The answer to a write already committed, in the form `asked`; when that is the full form and it would not
    fit, in `compact_form` with `downgraded` (the write is done: failing its answer would only make the client
    retry into the same wall). The bodies are built only when needed."""
    if asked == compact_form:
        return write_response(status, orjson.dumps(compact_body()).decode(), compact_form)
    full, fit = fitting_text(orjson.dumps(full_body()))
    if fit:
        return write_response(status, full, asked)
    notice = downgraded(asked, compact_form, full)
    logger.warning("the answer is too large in the form asked", extra={"bytes": notice["full_bytes"]})
    return write_response(status, orjson.dumps({**compact_body(), "downgraded": notice}).decode(), compact_form)


def page_response(
    key: str,
    items: Sequence[T],
    render: Callable[[T], Any],
    next_cursor: str | None,
    cursor_after: Callable[[T], str],
    cursor_key: str = "next_cursor",
    extra: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> Response[str]:
    """A page's 200 answer `{**extra, key: [render(item)...], cursor_key: cursor, **after}`, cut by bytes: when the
    items would not fit in BODY_BUDGET, only the first ones that fit are sent (at least one) and the cursor is
    `cursor_after(last item sent)`, so that following it reads the rest; the answer then carries
    PAGE_CUT_HEADER: size. Otherwise the cursor is `next_cursor` as given."""
    parts = [orjson.dumps(render(item)).decode() for item in items]
    head = orjson.dumps({**(extra or {}), key: [], cursor_key: "x" * 300, **(after or {})}).decode()
    used = wire_size(head)
    kept = len(parts)
    for index, part in enumerate(parts):
        used += wire_size(part) + 1
        if used > BODY_BUDGET and index > 0:
            kept = index
            break
    headers = {}
    if kept < len(parts):
        next_cursor = cursor_after(items[kept - 1])
        headers[PAGE_CUT_HEADER] = "size"
    body = {
        **(extra or {}),
        key: orjson.Fragment("[" + ",".join(parts[:kept]) + "]"),
        cursor_key: next_cursor,
        **(after or {}),
    }
    return Response(
        status_code=200,
        content_type=content_types.APPLICATION_JSON,
        body=orjson.dumps(body).decode(),
        headers=headers,
    )
