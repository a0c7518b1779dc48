"""The API's data model: what a client may send and what it gets back. Validation happens here, once."""

from __future__ import annotations

import re
import time
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, WithJsonSchema, field_validator

from txguard import literals
from txguard.currencies import MINOR_UNITS
from txguard.settings import service_settings

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
EARLIEST_TIMESTAMP_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_AMOUNT = Decimal("1000000000000")  # 10^12 in any currency's major unit
MERCHANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")


def parse_timestamp_ms(value: Any) -> int:
    """Epoch milliseconds from a JSON integer, from its digits as text, or from an RFC 3339 date-time with a zone
    (see `txguard.literals`), within 2000-01-01T00:00:00Z .. now + TXGUARD_MAX_FUTURE_SKEW_SECONDS.
    The body, the query's `from`/`to` and the CLI's `--from`/`--to` all read timestamps here. Raises ValueError."""
    if isinstance(value, str) and ":" in value:  # a date-time has a time; epoch milliseconds never hold a colon
        ms = literals.rfc3339_ms(value)
    else:
        try:
            ms = (
                literals.integer_from_text(value, INT64_MIN, INT64_MAX)
                if isinstance(value, str)
                else literals.integer_from_json(value, INT64_MIN, INT64_MAX)
            )
        except ValueError:
            raise ValueError(
                "timestamp must be epoch milliseconds (an integer, in digits) or an RFC 3339 date-time with a zone"
            ) from None
    latest = int(time.time() * 1000) + service_settings().max_future_skew_s * 1000
    if not EARLIEST_TIMESTAMP_MS <= ms <= latest:
        raise ValueError(
            f"timestamp {ms} is outside the accepted range: from 2000-01-01T00:00:00Z "
            f"to {service_settings().max_future_skew_s} seconds from now"
        )
    return ms


def parse_amount(value: Any, currency: str | None = None) -> Decimal:
    """An amount exactly as sent (a JSON number or a string of decimal text, see `txguard.literals`): > 0, at most
    10^12, and, when `currency` is known, no more decimal places than it has. Returned at the currency's places
    (exact, since it has no more). Raises ValueError."""
    try:
        amount = literals.decimal(value)
    except ValueError as exc:
        raise ValueError(f"amount {exc}") from None
    if amount <= 0:
        raise ValueError("amount must be greater than zero")
    if amount > MAX_AMOUNT:
        raise ValueError(f"amount must be at most {MAX_AMOUNT}")
    if currency in MINOR_UNITS:
        places = MINOR_UNITS[currency]
        if literals.decimal_places(amount) > places:
            raise ValueError(f"amount has more decimal places than {currency} allows ({places})")
        return amount.quantize(Decimal(1).scaleb(-places))
    return amount


def integer_text(minimum: int, maximum: int) -> BeforeValidator:
    """Validation of an integer given as text (a path or query parameter), by the one integer rule of
    `txguard.literals`: `Annotated[int, integer_text(1, 1000), Query(ge=1, le=1000)]`."""
    return BeforeValidator(lambda value: literals.integer_from_text(value, minimum, maximum))


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
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "integer", "minimum": EARLIEST_TIMESTAMP_MS, "maximum": INT64_MAX},
                    {"type": "string", "pattern": f"^{literals.INTEGER_PATTERN}$"},
                    {"type": "string", "format": "date-time"},
                ]
            }
        ),
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
                    {"type": "number", "exclusiveMinimum": 0, "maximum": int(MAX_AMOUNT)},
                    {"type": "string", "pattern": f"^{literals.DECIMAL_PATTERN}$"},
                ]
            }
        ),
        Field(
            description="a decimal as a JSON number or a string of the same text (ASCII digits, optional '-', "
            "fraction and exponent), > 0, at most 10^12, with no more decimal places than the currency has, "
            "checked exactly as sent"
        ),
    ]
    merchant_id: Annotated[
        str | None, Field(description="optional merchant identifier: letters, digits, _ . : - (at most 64)")
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
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError("merchant_id must be a string")
        text = str(value)
        if not MERCHANT_ID.match(text):
            raise ValueError("merchant_id must be 1-64 letters, digits, '_', '.', ':' or '-'")
        return text


class TransactionBatch(BaseModel):
    """Several transactions stored together: all of them, or none."""

    model_config = ConfigDict(extra="forbid")

    transactions: Annotated[list[TransactionIn], Field(min_length=1)]

    def __repr__(self) -> str:
        # Request routers log their arguments; a batch of thousands would be rendered whole each time.
        return f"TransactionBatch(<{len(self.transactions)} transactions>)"


class ReasonOut(BaseModel):
    rule_id: str
    mode: Literal["active", "shadow"]
    weight: str
    explanation: str


class DecisionOut(BaseModel):
    fraud: bool
    score: str = Field(description="0 to 1, four decimal places")
    reasons: list[ReasonOut]
    rule_set_version: int


class StoredTransactionOut(BaseModel):
    account_id: int
    transaction_id: int
    timestamp: int = Field(description="epoch milliseconds")
    amount: str
    currency: str
    merchant_id: str | None = None


class StoreResultOut(BaseModel):
    transaction_id: int
    status: Literal["stored", "duplicate"]
    transaction: StoredTransactionOut
    decision: DecisionOut


class StoreResponse(BaseModel):
    results: list[StoreResultOut]


class ListedTransactionOut(StoredTransactionOut):
    decision: DecisionOut


class ListResponse(BaseModel):
    transactions: list[ListedTransactionOut]
    next_cursor: str | None


class FraudEventOut(BaseModel):
    transaction_id: int
    timestamp: int
    amount: str
    currency: str
    merchant_id: str | None = None
    score: str
    reasons: list[ReasonOut]
    rule_set_version: int


class IsFraudResponse(BaseModel):
    account_id: int
    fraud: bool = Field(
        description="whether any transaction of the account is flagged (with recompute=true: any on this page)"
    )
    events: list[FraudEventOut] = Field(description="flagged transactions, newest first")
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null on the last. With recompute=true a page may hold fewer "
        "events than `limit`, even none, while this is set"
    )
    recomputed: bool = False


class ErrorDetail(BaseModel):
    index: int | None = None
    field: str | None = None
    value: Any = None
    reason: str


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail] = Field(default=[], description="at most the first 100 problems")
    details_total: int | None = Field(
        default=None, description="present when more than 100 problems were found: how many there were in all"
    )


class ErrorResponse(BaseModel):
    error: ErrorBody
