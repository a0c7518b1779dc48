"""The one rule for numbers, date-times and JSON that come from outside, whatever carries them: the API's body, path
and query, the cursors it hands out, the CLI's arguments and rule set files.

- An **integer** is ASCII digits with an optional leading minus, as JSON writes one: `-?(0|[1-9][0-9]*)`. In JSON it
  is a JSON integer; in text (path, query, CLI) it is that text. No fraction or exponent (`42.0`, `4.2e1`), no
  underscores, no `+`, no spaces, no leading zeros, no other script's digits.
- A **decimal** is written as a JSON number is: `-?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][-+]?[0-9]+)?`, as a JSON number or
  as a string of that text. It is kept exact: never rounded to a decimal context's 28 digits.
- A **date-time** is RFC 3339 with a zone (`2024-05-01T12:00:00.123Z`, `...+02:00`), seconds required, at most
  millisecond precision (further fraction digits must be zeros).
- A **boolean** in text (a query parameter) is `true` or `false`, in lower case, nothing else.
- **Magnitudes** are judged on the text's length or the decimal's exponent before anything is converted, so
  `1e1000000` or a million digits is refused in microseconds, not after a superlinear conversion.

Every function raises `ValueError` with a sentence fit for a client (pydantic and the CLI show it as it is).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

INTEGER_PATTERN = r"-?(?:0|[1-9][0-9]*)"
DECIMAL_PATTERN = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?"
_INTEGER = re.compile(INTEGER_PATTERN + r"\Z")
_DECIMAL = re.compile(DECIMAL_PATTERN + r"\Z")
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))\Z"
)
# An int64 has at most 19 digits; a JSON integer token longer than this is kept as a Decimal (cheap to build and to
# compare) instead of an int (whose conversion from text is superlinear), so that range checks refuse it unconverted.
_LONGEST_INT_TOKEN = 20
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _range_text(minimum: int, maximum: int) -> str:
    return f"an integer from {minimum} to {maximum}, in digits"


def integer_from_json(value: Any, minimum: int, maximum: int) -> int:
    """A JSON integer (an `int` from `loads`) within [minimum, maximum]. Booleans, fractions, exponents (JSON numbers
    arrive as `Decimal`) and strings are refused. Raises ValueError naming the range."""
    if isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= maximum:
        return value
    raise ValueError(f"must be {_range_text(minimum, maximum)}")


def integer_from_text(text: Any, minimum: int, maximum: int) -> int:
    """The integer `text` spells (see the module rule) within [minimum, maximum]; judged on its length first, so a
    long string is refused without being converted. Raises ValueError naming the range."""
    limit = max(len(str(minimum)), len(str(maximum)))
    if isinstance(text, str) and len(text) <= limit and _INTEGER.match(text):
        number = int(text)
        if minimum <= number <= maximum:
            return number
    raise ValueError(f"must be {_range_text(minimum, maximum)}")


def decimal(value: Any) -> Decimal:
    """An exact, finite Decimal from a JSON number (`int` or `Decimal` as `loads` gives them) or from a string of
    decimal text (see the module rule). Floats are refused: they are not the number the client wrote.
    Raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise ValueError('must be a decimal number, as a JSON number or a string such as "12.50"')
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("must be a finite number")
        return value
    if not _DECIMAL.match(value):
        raise ValueError("is not a decimal number: ASCII digits, an optional '-', '.' and exponent, nothing else")
    try:
        return Decimal(value)
    except ArithmeticError:  # decimal.InvalidOperation: an exponent beyond what Decimal can hold
        raise ValueError("is out of range") from None


def decimal_places(value: Decimal) -> int:
    """Digits after the decimal point once trailing zeros are dropped (`1.500` → 1, `1E+2` → 0), computed from the
    digits themselves: exact whatever their number, where `normalize()` would first round to the context. Zero has
    none however it is written (`0.00000`, `0e-9`): its one digit is not a count of its places."""
    _, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int) or exponent >= 0 or not any(digits):
        return 0
    trailing = 0
    for digit in reversed(digits):
        if digit or trailing == -exponent:
            break
        trailing += 1
    return -exponent - trailing


def rfc3339_ms(text: str) -> int:
    """Epoch milliseconds of an RFC 3339 date-time with a zone; at most millisecond precision (more fraction digits
    must be zeros). Raises ValueError saying what is wrong."""
    match = _RFC3339.match(text)
    if match is None:
        raise ValueError(
            f"{text[:60]!r} is not an RFC 3339 date-time with a zone (such as 2024-05-01T12:00:00.123Z or "
            "2024-05-01T14:00:00+02:00) nor epoch milliseconds"
        )
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    fraction = fraction or ""
    if fraction[3:].strip("0"):
        raise ValueError(f"{text[:60]!r} is more precise than a millisecond")
    offset = timedelta(hours=int(off_h), minutes=int(off_m)) if sign else timedelta(0)
    try:
        if sign and (int(off_h) > 23 or int(off_m) > 59):
            raise ValueError("the zone offset must be between -23:59 and +23:59")
        zone = timezone(-offset if sign == "-" else offset)
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=zone)
    except ValueError as exc:
        raise ValueError(f"{text[:60]!r} is not a valid date-time: {exc}") from None
    return (moment - _EPOCH) // timedelta(milliseconds=1) + int(fraction[:3].ljust(3, "0"))


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def short_text(value: Any, max_length: int) -> str:
    """A short free text (a label's reason, a list item's note): a string, 1 to `max_length` characters once
    trimmed, without control characters. Raises ValueError saying why, without the value."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    text = value.strip()
    if not 1 <= len(text) <= max_length:
        raise ValueError(f"must be 1 to {max_length} characters (omit it for none)")
    if _CONTROL.search(text):
        raise ValueError("must not hold control characters")
    return text


def boolean_from_text(text: Any) -> bool:
    """`true` or `false` exactly, as JSON writes them (a query parameter): no `yes`, `1`, `TRUE` or empty text,
    which a looser reading would turn into a value the client may not have meant. Raises ValueError."""
    if text in ("true", "false"):
        return bool(text == "true")
    raise ValueError("must be true or false")


class JsonRefused(ValueError):
    """A JSON text `loads` refuses, with a message fit for a client."""


def _integer_token(text: str) -> int | Decimal:
    return int(text) if len(text) <= _LONGEST_INT_TOKEN else Decimal(text)


def _decimal_token(text: str) -> Decimal:
    try:
        return Decimal(text)
    except ArithmeticError:  # decimal.InvalidOperation: an exponent beyond what Decimal can hold
        raise JsonRefused(f"the number {text[:40]}… is out of any range") from None


def _refuse_constant(name: str) -> Any:
    raise JsonRefused(f"{name} is not a valid JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    mapping = dict(pairs)
    if len(mapping) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JsonRefused(f"the key {key[:100]!r} appears twice in one object; send it once")
            seen.add(key)
    return mapping


def loads(text: str | bytes) -> Any:
    """JSON with every number exact: integers as `int` (or `Decimal` past 20 digits, see above), other numbers as
    `Decimal`. NaN and Infinity are refused, and so is a key given twice in one object (else the last would silently
    win). Raises JsonRefused for any text that is not such JSON, nesting too deep included."""
    try:
        return json.loads(
            text,
            parse_float=_decimal_token,
            parse_int=_integer_token,
            parse_constant=_refuse_constant,
            object_pairs_hook=_unique_keys,
        )
    except JsonRefused:
        raise
    except RecursionError:
        raise JsonRefused("its JSON is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise JsonRefused(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, ArithmeticError) as exc:
        raise JsonRefused(f"malformed JSON: {str(exc)[:200]}") from None
