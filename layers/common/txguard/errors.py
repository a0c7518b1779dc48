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
# The start of the reason for a line Python's strict CSV reader refuses (a quoted cell a file cut short ends in,
# text after a closing quote), in every file of lists and labels.
NOT_CSV = "not CSV as written"


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
    """A text that may hold a refused value (a field name, a reason) as it may be shown or logged: any card number
    in it masked (attributes.mask_card_numbers), at most MAX_ECHOED_VALUE characters."""
    text = mask_card_numbers(text)
    return text if len(text) <= MAX_ECHOED_VALUE else text[:MAX_ECHOED_VALUE] + "…"


def echo(value: Any) -> Any:
    """A rejected value as it may be shown back (an HTTP error's details, a log line, a CLI message): JSON-safe,
    short, and with any card number masked whatever its JSON type (an integer of 14-19 digits or a string of 13-19
    that passes the Luhn check is shown as the masked text "411111******1111", an object holding one likewise)."""
    if isinstance(value, Decimal):
        value = str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if not -(2**63) <= value < 2**64:
            # JSON has no integer limit but the response encoder (orjson) has: a refused id of 30 digits is shown
            # back as its digits.
            value = str(value)
        elif not -(10**13) < value < 10**13:
            # 14 digits at least: a card number of 13 digits (a long-retired Visa length) as a JSON integer is
            # left as it is, since every epoch-millisecond timestamp of 2001-2286 has 13 digits, and one in ten
            # passes the Luhn check: a refused timestamp or expiry must be shown back as the client sent it.
            digits = str(value)
            masked = mask_card_numbers(digits)
            if masked != digits:
                return masked
    if isinstance(value, (dict, list)):
        value = json.dumps(value, default=str)
    if isinstance(value, str):
        # A refused value is answered and logged: a card number in it is masked either way.
        value = mask_card_numbers(value)
        if len(value) > MAX_ECHOED_VALUE:
            return value[:MAX_ECHOED_VALUE] + "…"
    return value


def quoted(value: Any) -> str:
    """A refused value as a message quotes it (the CLI's problems): echo's masked, short value, strings in quotes
    ('FR'), numbers as written (42)."""
    shown = echo(value)
    return repr(shown) if isinstance(shown, str) else json.dumps(shown, default=str)


def said(field: str, value: Any, reason: str) -> str:
    """A problem as one line of a message: `field = 'value': reason`, or `field: reason` when no value was given
    (None: the field was missing or null), the value quoted and the reason shortened (both masked)."""
    return f"{field}: {shorten(reason)}" if value is None else f"{field} = {quoted(value)}: {shorten(reason)}"
