"""Intake: reading and validating transactions from outside, independent of the transport that brought them.

The rules for each field (ids, timestamps, amounts, currencies, merchants) are here, once, in `TransactionIn`.
The HTTP API validates its body with it (and refuses a batch whole: all or nothing); `check_items` validates
any sequence of decoded JSON items one by one, giving each a valid `Transaction` or its problems
({field, value, reason}), which is what a stream consumer reports per record (see service.store_each).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from itertools import repeat
from operator import itemgetter
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, WithJsonSchema, field_validator

from txguard import attributes, literals
from txguard.currencies import MINOR_UNITS
from txguard.domain import ATTRIBUTES, Transaction
from txguard.errors import echo, shorten
from txguard.settings import service_settings

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
EARLIEST_TIMESTAMP_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_AMOUNT = Decimal("1000000000000")  # 10^12 in any currency's major unit
MERCHANT_ID = attributes.IDENTIFIER


def instant_ms(value: Any) -> int:
    """Epoch milliseconds from any of a timestamp's forms (a JSON integer, its digits as text, an RFC 3339
    date-time with a zone), unbounded but for 64 bits: the one reading of an instant, which parse_timestamp_ms and
    a list item's expiry bound each their own way. Raises ValueError."""
    if isinstance(value, str) and ":" in value:  # a date-time has a time; epoch milliseconds never hold a colon
        return literals.rfc3339_ms(value)
    try:
        return (
            literals.integer_from_text(value, INT64_MIN, INT64_MAX)
            if isinstance(value, str)
            else literals.integer_from_json(value, INT64_MIN, INT64_MAX)
        )
    except ValueError:
        raise ValueError(
            "timestamp must be epoch milliseconds (an integer, in digits) or an RFC 3339 date-time with a zone"
        ) from None


def parse_timestamp_ms(value: Any) -> int:
    """Epoch milliseconds from a JSON integer, from its digits as text, or from an RFC 3339 date-time with a zone
    (see `txguard.literals`), within 2000-01-01T00:00:00Z .. now + TXGUARD_MAX_FUTURE_SKEW_SECONDS.
    The body, the query's `from`/`to` and the CLI's `--from`/`--to` all read timestamps here. Raises ValueError."""
    ms = instant_ms(value)
    latest = int(time.time() * 1000) + service_settings().max_future_skew_s * 1000
    if not EARLIEST_TIMESTAMP_MS <= ms <= latest:
        raise ValueError(
            f"timestamp {ms} is outside the accepted range: from 2000-01-01T00:00:00Z "
            f"to {service_settings().max_future_skew_s} seconds from now"
        )
    return ms


_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")


def window_bound_ms(value: Any) -> int:
    """A time window's bound (the query's `from`/`to`, every CLI command's `--from`/`--to`/`--until`, a training
    cutoff) in epoch ms: a UTC date YYYY-MM-DD (its 00:00 UTC), or a timestamp as parse_timestamp_ms reads it
    (epoch ms, an RFC 3339 date-time with a zone) and within its range. The one reading of a bound, so that every
    command and route takes the same forms. Raises ValueError naming the accepted forms."""
    if isinstance(value, str) and _DATE.match(value):
        day = date.fromisoformat(value)  # its ValueError says what is wrong: "month must be in 1..12"
        return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1000
    try:
        return parse_timestamp_ms(value)
    except ValueError as exc:
        if "outside the accepted range" in str(exc):
            raise
        raise ValueError(
            "must be a UTC date (YYYY-MM-DD, its midnight), epoch milliseconds or an RFC 3339 date-time with a zone"
        ) from None


def parse_amount(value: Any, currency: str | None = None) -> Decimal:
    """An amount exactly as sent (a JSON number or a string of decimal text, see `txguard.literals`): >= 0 (zero is a
    card verification), at most 10^12, and, when `currency` is known, no more decimal places than it has. Returned
    at the currency's places (exact, since it has no more); a signed zero ("-0", "-0.00") is the amount 0, as JSON
    itself reads the number -0. Raises ValueError for a negative amount and the rest."""
    try:
        amount = literals.decimal(value)
    except ValueError as exc:
        raise ValueError(f"amount {exc}") from None
    if amount < 0:
        raise ValueError("amount must not be negative")
    if amount.is_zero():
        # Decimal keeps the sign of "-0"; stored, shown and compared, the amount is plain 0.
        amount = amount.copy_abs()
    if amount > MAX_AMOUNT:
        raise ValueError(f"amount must be at most {MAX_AMOUNT}")
    if currency in MINOR_UNITS:
        places = MINOR_UNITS[currency]
        if literals.decimal_places(amount) > places:
            raise ValueError(f"amount has more decimal places than {currency} allows ({places})")
        return amount.quantize(Decimal(1).scaleb(-places))
    return amount


# The JSON schema of a timestamp as the API reads it (parse_timestamp_ms): epoch ms, its digits, or RFC 3339.
TIMESTAMP_SCHEMA = WithJsonSchema(
    {
        "anyOf": [
            {"type": "integer", "minimum": EARLIEST_TIMESTAMP_MS, "maximum": INT64_MAX},
            {"type": "string", "pattern": f"^{literals.INTEGER_PATTERN}$"},
            {"type": "string", "format": "date-time"},
        ]
    }
)


class TransactionIn(BaseModel):
    """One transaction as a client sends it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    account_id: Annotated[int, Field(strict=True, gt=0, le=INT64_MAX, description="positive 64-bit integer")]
    transaction_id: Annotated[
        int,
        Field(strict=True, ge=INT64_MIN, le=INT64_MAX, description="64-bit integer, unique per transaction"),
    ]
    timestamp: Annotated[
        int | str,
        TIMESTAMP_SCHEMA,
        Field(
            description="epoch milliseconds (an integer, or its digits as a string), or an RFC 3339 date-time "
            "with a zone (e.g. 2024-05-01T12:00:00.123Z), at most millisecond precision",
            union_mode="left_to_right",
        ),
    ]
    currency: Annotated[
        str | None,
        Field(description="ISO 4217 code; defaults to TXGUARD_DEFAULT_CURRENCY", validate_default=True),
    ] = None
    amount: Annotated[
        Decimal | str,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "number", "minimum": 0, "maximum": int(MAX_AMOUNT)},
                    {"type": "string", "pattern": f"^{literals.DECIMAL_PATTERN}$"},
                ]
            }
        ),
        Field(
            description="a decimal as a JSON number or a string of the same text (ASCII digits, optional '-', "
            "fraction and exponent), >= 0 (0 for a card verification), at most 10^12, with no more decimal places "
            "than the currency has, checked exactly as sent"
        ),
    ]
    merchant_id: Annotated[
        str | None,
        Field(
            description="optional merchant identifier: 1-64 letters, digits, _ . : - (a string, or a JSON integer "
            "stored as its digits); unlike card_id, a number that passes the Luhn check is a merchant id like any other"
        ),
    ] = None

    channel: Annotated[
        str | None,
        WithJsonSchema({"type": "string", "enum": list(attributes.CHANNELS)}),
        Field(
            description="how the payment was made: card_present (chip, swipe), contactless, ecommerce (card not "
            "present, online), in_app, moto (mail or telephone order), recurring, atm, transfer"
        ),
    ] = None
    country: Annotated[
        str | None,
        WithJsonSchema({"type": "string", "pattern": "^[A-Za-z]{2}$"}),
        Field(description="ISO 3166-1 alpha-2 country of the transaction (e.g. FR), stored upper-case"),
    ] = None
    merchant_category: Annotated[
        str | None,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "pattern": "^[0-9]{1,4}$"},
                    {"type": "integer", "minimum": 0, "maximum": 9999},
                ]
            }
        ),
        Field(description="ISO 18245 merchant category code (MCC), 0000-9999, stored as four digits (742 -> 0742)"),
    ] = None
    card_id: Annotated[
        str | None,
        WithJsonSchema({"type": "string", "pattern": attributes.IDENTIFIER.pattern}),
        Field(
            description="a token that identifies the card (1-64 letters, digits, _ . : -), never its number: a "
            "13-19 digit value that passes the Luhn check is refused"
        ),
    ] = None
    ip_address: Annotated[
        str | None,
        WithJsonSchema({"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}),
        Field(
            description="the client's IPv4 or IPv6 address, stored in its canonical text (2001:DB8::1 -> 2001:db8::1)"
        ),
    ] = None
    device_id: Annotated[
        str | None,
        WithJsonSchema({"type": "string", "pattern": attributes.IDENTIFIER.pattern}),
        Field(description="a token that identifies the client's device (1-64 letters, digits, _ . : -)"),
    ] = None
    metadata: Annotated[
        dict[str, str] | None,
        WithJsonSchema(
            {
                "type": "object",
                "maxProperties": attributes.MAX_METADATA_KEYS,
                "propertyNames": {"pattern": attributes.METADATA_KEY.pattern},
                "additionalProperties": {"type": "string", "maxLength": attributes.MAX_METADATA_VALUE_LENGTH},
            }
        ),
        Field(
            description=f"free string values by key (at most {attributes.MAX_METADATA_KEYS} keys of lower-case "
            f"letters, digits and _, each value at most {attributes.MAX_METADATA_VALUE_LENGTH} characters, "
            f"{attributes.MAX_METADATA_BYTES} bytes in all); rules read them as metadata.KEY"
        ),
    ] = None

    @field_validator("account_id", mode="before")
    @classmethod
    def _account_id(cls, value: Any) -> int:
        return literals.integer_from_json(value, 1, INT64_MAX)

    @field_validator("transaction_id", mode="before")
    @classmethod
    def _transaction_id(cls, value: Any) -> int:
        return literals.integer_from_json(value, INT64_MIN, INT64_MAX)

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp(cls, value: Any) -> int:
        return parse_timestamp_ms(value)

    @field_validator("amount", mode="before")
    @classmethod
    def _amount(cls, value: Any, info: ValidationInfo) -> Decimal:
        return parse_amount(value, info.data.get("currency"))

    @field_validator("currency", mode="before")
    @classmethod
    def _currency(cls, value: Any) -> str:
        if value is None:
            return service_settings().default_currency
        if not isinstance(value, str) or value.upper() not in MINOR_UNITS:
            raise ValueError(f"{value!r} is not an ISO 4217 currency code")
        return value.upper()

    @field_validator("merchant_id", mode="before")
    @classmethod
    def _merchant(cls, value: Any) -> str | None:
        return None if value is None else attributes.merchant_id(value)

    @field_validator(
        "channel", "country", "merchant_category", "card_id", "ip_address", "device_id", "metadata", mode="before"
    )
    @classmethod
    def _attribute(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return None
        return ATTRIBUTE_CHECKS[info.field_name or ""](value)

    def transaction(self) -> Transaction:
        """The validated transaction in the domain's terms (validators have turned every field into its type)."""
        assert isinstance(self.timestamp, int) and isinstance(self.amount, Decimal) and self.currency is not None
        return Transaction(
            self.transaction_id,
            self.account_id,
            self.timestamp,
            self.amount,
            self.currency,
            self.merchant_id,
            self.channel,
            self.country,
            self.merchant_category,
            self.card_id,
            self.ip_address,
            self.device_id,
            self.metadata,
        )


def _metadata(value: Any) -> dict[str, str] | None:
    """attributes.metadata, with an empty object read as no metadata: `{}` and an absent field are the same
    transaction (a retry of one as the other is a duplicate), stored the same way (NULL)."""
    return attributes.metadata(value) or None


# How each optional attribute is read (txguard/attributes.py: the one definition every path uses).
ATTRIBUTE_CHECKS: dict[str, Callable[[Any], Any]] = {
    "channel": attributes.channel,
    "country": attributes.country,
    "merchant_category": attributes.merchant_category,
    "card_id": attributes.card_id,
    "ip_address": attributes.ip_address,
    "device_id": attributes.identifier,
    "metadata": _metadata,
}


@dataclass(frozen=True)
class Problem:
    """Why an item was refused: the field (None for the item as a whole), the value as it may be shown back
    (JSON-safe, shortened), and the reason in words."""

    field: str | None
    value: Any
    reason: str


@dataclass(frozen=True)
class Checked:
    """One item of a sequence, validated on its own: a `transaction`, or the `problems` that refused it."""

    index: int
    transaction: Transaction | None
    problems: tuple[Problem, ...] = ()


def problem(error: Any, loc: Sequence[Any]) -> Problem:
    """A pydantic (or Powertools) error as a Problem, its field named by `loc` (the error's location within the
    item). Every transport words problems this way."""
    field = ".".join(str(part) for part in loc if not str(part).startswith("function-")) or None
    reason = reason_of(error)
    value = error.get("input")
    if error.get("type") == "missing":
        value = None
    elif error.get("type") == "extra_forbidden":
        reason = f"unknown field {shorten(field or '')!r}"
    return Problem(None if field is None else shorten(field), echo(value), shorten(reason))


def _items(count: Any) -> str:
    return f"{count} item" if count == 1 else f"{count} items"


# pydantic's own wording of the checks its types make, in txguard's ("must be ..."); the checks txguard writes
# raise ValueError with their reason, which is kept as it is.
_PYDANTIC_REASONS: dict[str, Callable[[dict[str, Any]], str]] = {
    "missing": lambda ctx: "is required",
    "model_type": lambda ctx: "must be a JSON object",
    "model_attributes_type": lambda ctx: "must be a JSON object",
    "dict_type": lambda ctx: "must be a JSON object",
    "list_type": lambda ctx: "must be an array",
    "string_type": lambda ctx: "must be a string",
    "bool_type": lambda ctx: "must be a JSON boolean: true or false",
    "int_type": lambda ctx: "must be an integer",
    "too_short": lambda ctx: f"must hold at least {_items(ctx.get('min_length'))}; it holds {ctx.get('actual_length')}",
    "too_long": lambda ctx: f"must hold at most {_items(ctx.get('max_length'))}; it holds {ctx.get('actual_length')}",
    "string_too_short": lambda ctx: f"must be at least {ctx.get('min_length')} character(s)",
    "string_too_long": lambda ctx: f"must be at most {ctx.get('max_length')} characters",
    "string_pattern_mismatch": lambda ctx: f"must match {ctx.get('pattern')}",
    "greater_than_equal": lambda ctx: f"must be at least {ctx.get('ge')}",
    "less_than_equal": lambda ctx: f"must be at most {ctx.get('le')}",
    "greater_than": lambda ctx: f"must be more than {ctx.get('gt')}",
    "less_than": lambda ctx: f"must be less than {ctx.get('lt')}",
    "literal_error": lambda ctx: f"must be {ctx.get('expected')}",
}
_PYDANTIC_SUBJECT = re.compile(r"^(?:Input|List|String|Value|Dictionary|Object|Tuple|Set) should ")


def reason_of(error: Any) -> str:
    """An error's reason in txguard's words: a ValueError's message as raised, pydantic's known checks reworded
    (_PYDANTIC_REASONS), any other "Input should be ..." as "must be ..."."""
    worded = _PYDANTIC_REASONS.get(str(error.get("type")))
    if worded is not None:
        return worded(error.get("ctx") or {})
    reason = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return _PYDANTIC_SUBJECT.sub("must ", reason)


def check_items(items: Sequence[Any]) -> list[Checked]:
    """Each decoded JSON item validated on its own, in order; an invalid item does not affect the others."""
    checked = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            refusal = Problem(None, echo(item), "must be a JSON object: a transaction")
            checked.append(Checked(index, None, (refusal,)))
            continue
        try:
            checked.append(Checked(index, TransactionIn.model_validate(item).transaction()))
        except ValidationError as exc:
            problems = tuple(problem(error, error["loc"]) for error in exc.errors())
            checked.append(Checked(index, None, problems))
    return checked


# Columns: a batch's fields checked a column at a time (batch_transactions).
_FIELDS = frozenset(TransactionIn.model_fields)
_REQUIRED = frozenset(name for name, info in TransactionIn.model_fields.items() if info.is_required())
_QUANTUM = {currency: Decimal(1).scaleb(-places) for currency, places in MINOR_UNITS.items()}
# A column of strings joined by newlines, each a decimal (literals.DECIMAL_PATTERN) or an identifier (MERCHANT_ID):
# one regular expression run over a whole column instead of one per value.
_DECIMAL_LINES = re.compile(f"(?:{literals.DECIMAL_PATTERN}\n)*\\Z")
_IDENTIFIER_LINES = re.compile(f"(?:{MERCHANT_ID.pattern.removeprefix('^').removesuffix('$')}\n)*\\Z")
_DECIMAL_TYPES = frozenset({str, int, Decimal})


class _NotPlain(Exception):
    """A column holds a value that is not in its plain form: TransactionIn decides, and words any problem."""


def batch_transactions(document: Any) -> list[Transaction] | None:
    """The transactions of a POST /store_data body (one transaction, or `{"transactions": [...]}`) validated as
    columns, in request order; None when any value is not in the plain form the columns check (wrong type, out of
    range, text to trim, an unknown field...), and then the caller validates with TransactionIn, which words each
    problem. Every field follows the rule TransactionIn applies (the same functions where a value needs more than a
    type and a range), so a batch taken here gives exactly the transactions TransactionIn gives, and a batch it
    would refuse is never taken: tests/unit/test_intake_columns.py compares the two on generated batches."""
    try:
        return _columns(document)
    except _NotPlain:
        return None


def _columns(document: Any) -> list[Transaction]:
    if type(document) is not dict:
        raise _NotPlain
    if "transactions" in document:
        items = document["transactions"]
        if len(document) != 1 or type(items) is not list or not items:
            raise _NotPlain
    else:
        items = [document]
    if set(map(type, items)) != {dict}:
        raise _NotPlain
    given: set[str] = set()
    for keys in set(map(tuple, items)):  # the distinct lists of keys: a batch's items are mostly alike
        if not _REQUIRED <= set(keys) <= _FIELDS:
            raise _NotPlain
        given.update(keys)
    accounts = _integers(list(map(itemgetter("account_id"), items)), 1, INT64_MAX)
    ids = _integers(list(map(itemgetter("transaction_id"), items)), INT64_MIN, INT64_MAX)
    timestamps = _timestamps(list(map(itemgetter("timestamp"), items)))
    currencies = (
        _currencies(_column(items, "currency"))
        if "currency" in given
        else [service_settings().default_currency] * len(items)
    )
    amounts = _amounts(list(map(itemgetter("amount"), items)), currencies)
    # An optional field no item has is None throughout, without a look at any item.
    merchants = _merchants(_column(items, "merchant_id")) if "merchant_id" in given else repeat(None)
    attributes = [_attribute(name, _column(items, name)) if name in given else repeat(None) for name in ATTRIBUTES]
    # Repeated None stands for an attribute no item has: zip ends with the batch's own columns.
    columns = zip(ids, accounts, timestamps, amounts, currencies, merchants, *attributes, strict=False)
    # tuple.__new__ builds each named tuple without a Python call per transaction.
    return list(map(tuple.__new__, repeat(Transaction), columns))


def _column(items: list[dict[str, Any]], name: str) -> list[Any]:
    """An optional field's values, None where absent."""
    return list(map(dict.get, items, repeat(name)))


def _integers(column: list[Any], minimum: int, maximum: int) -> list[int]:
    if set(map(type, column)) != {int} or min(column) < minimum or max(column) > maximum:
        raise _NotPlain
    return column


def _timestamps(column: list[Any]) -> list[int]:
    types = set(map(type, column))
    if str in types:
        if not types <= {int, str}:
            raise _NotPlain
        try:
            column = [parse_timestamp_ms(value) if type(value) is str else value for value in column]
        except ValueError:
            raise _NotPlain from None
    latest = int(time.time() * 1000) + service_settings().max_future_skew_s * 1000
    return _integers(column, EARLIEST_TIMESTAMP_MS, latest)


def _currencies(column: list[Any]) -> list[str]:
    codes: dict[Any, str] = {}
    try:
        distinct = set(column)
    except TypeError:  # an object or array where a code belongs
        raise _NotPlain from None
    for value in distinct:
        if value is None:
            codes[value] = service_settings().default_currency
        elif type(value) is str and value.upper() in MINOR_UNITS:
            codes[value] = value.upper()
        else:
            raise _NotPlain
    return list(map(codes.__getitem__, column))


def _amounts(column: list[Any], currencies: list[str]) -> list[Decimal]:
    """parse_amount as columns: exact decimals >= 0 (a signed zero made plain), at most MAX_AMOUNT, with no more
    places than the currency has (quantizing to them changes nothing), returned at the currency's places."""
    types = set(map(type, column))
    if not types <= _DECIMAL_TYPES:
        raise _NotPlain
    if str in types:
        texts = column if types == {str} else [value for value in column if type(value) is str]
        joined = "\n".join(texts) + "\n"
        if joined.count("\n") != len(texts) or not _DECIMAL_LINES.match(joined):
            raise _NotPlain
    try:
        amounts = list(map(Decimal, column))
        if min(amounts) < 0 or max(amounts) > MAX_AMOUNT or not all(map(Decimal.is_finite, amounts)):
            raise _NotPlain
        amounts = list(map(Decimal.copy_abs, amounts))
        quantized = list(map(Decimal.quantize, amounts, map(_QUANTUM.__getitem__, currencies)))
    except ArithmeticError:
        raise _NotPlain from None
    if quantized != amounts:
        raise _NotPlain
    return quantized


def _merchants(column: list[Any]) -> Iterable[str | None]:
    types = set(map(type, column))
    if types == {type(None)}:
        return repeat(None)
    if not types <= {str, int, type(None)}:
        raise _NotPlain
    texts = [value if type(value) is str else str(value) for value in column if value is not None]
    joined = "\n".join(texts) + "\n"
    if joined.count("\n") != len(texts) or not _IDENTIFIER_LINES.match(joined):
        raise _NotPlain
    return column if types <= {str, type(None)} else [None if v is None else str(v) for v in column]


def _attribute(name: str, column: list[Any]) -> Iterable[Any]:
    """An optional attribute's column read by its ATTRIBUTE_CHECKS function, each distinct text read once; a value
    TransactionIn would then trim (str_strip_whitespace) is left to it."""
    if set(map(type, column)) == {type(None)}:
        return repeat(None)
    check = ATTRIBUTE_CHECKS[name]
    read: dict[str, Any] = {}
    values: list[Any] = []
    try:
        for value in column:
            if value is None:
                values.append(None)
            elif type(value) is str:
                known = read.get(value)
                if known is None:
                    known = read[value] = _untrimmed(check(value))
                values.append(known)
            else:
                values.append(_untrimmed(check(value)))
    except ValueError:
        raise _NotPlain from None
    return values


def _untrimmed(value: Any) -> Any:
    if value is None:  # empty metadata, read as none (_metadata)
        return None
    texts = [*value, *value.values()] if isinstance(value, dict) else [value]
    if any(text != text.strip() for text in texts):
        raise _NotPlain
    return value
