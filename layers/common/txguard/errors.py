"""Error categories, defined once: every domain exception subclasses one, and each transport maps categories.

The REST resolver (api/resolver.py) maps a category to an HTTP status; a stream consumer would map it to a
per-item failure, the CLI to an exit code. An exception carries what any transport may show: a stable `code`,
a `message` for clients (never SQL or internals), `details` ({"index", "field", "value", "reason"}) and
`headers` (e.g. Retry-After).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from txguard.attributes import mask_card_numbers

MAX_ECHOED_VALUE = 200  # characters of a rejected value echoed back in `details`


class TxguardError(Exception):
    """The base of every category; `code`, `message`, `details` and `headers` are what a client may be told."""

    code = "error"

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: list[dict[str, Any]] = details or []
        self.headers: dict[str, str] = {}


class BadInput(TxguardError):
    """The input breaks a rule (a field, a parameter, two items of one request): refused, nothing changed."""

    code = "validation_error"


class Malformed(BadInput):
    """The input cannot be read at all (not JSON, an unknown cursor)."""


class NotFound(TxguardError):
    """What was asked for does not exist."""

    code = "not_found"


class Conflict(TxguardError):
    """The input contradicts what is stored; nothing changed."""

    code = "conflict"


class Unavailable(TxguardError):
    """A dependency failed or is busy; nothing changed and the same request may be retried."""

    code = "unavailable"


def shorten(text: str) -> str:
    return text if len(text) <= MAX_ECHOED_VALUE else text[:MAX_ECHOED_VALUE] + "…"


def echo(value: Any) -> Any:
    """A rejected value as it may be shown back: JSON-safe and short."""
    if isinstance(value, Decimal):
        value = str(value)
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        # JSON has no integer limit but the response encoder (orjson) has: a refused id of 30 digits is shown back
        # as its digits.
        value = str(value)
    if isinstance(value, (dict, list)):
        value = json.dumps(value, default=str)
    if isinstance(value, str):
        # A refused value is answered and logged: a card number in it is masked either way.
        value = mask_card_numbers(value)
        if len(value) > MAX_ECHOED_VALUE:
            return value[:MAX_ECHOED_VALUE] + "…"
    return value
