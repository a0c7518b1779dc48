"""The API's data model: what a client may send and what it gets back. Validation happens here, once."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from txguard.currencies import MINOR_UNITS
from txguard.settings import service_settings

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
EARLIEST_TIMESTAMP_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_AMOUNT = Decimal("1000000000000")  # 10^12 in any currency's major unit
MERCHANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")


def parse_timestamp_ms(value: Any) -> int:
    """Epoch milliseconds (integer) or an ISO-8601 string with a zone, to epoch milliseconds."""
    if isinstance(value, bool):
        raise ValueError("timestamp must be epoch milliseconds (integer) or an ISO-8601 string with a zone")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, Decimal) and value == value.to_integral_value() and value.is_finite():
        ms = int(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO-8601 date-time") from None
        if parsed.tzinfo is None:
            raise ValueError(f"{value!r} has no time zone; add Z or an offset such as +02:00")
        if parsed.microsecond % 1000:
            raise ValueError(f"{value!r} is more precise than a millisecond")
        ms = (parsed - datetime(1970, 1, 1, tzinfo=UTC)) // _ONE_MS
    else:
        raise ValueError("timestamp must be epoch milliseconds (integer) or an ISO-8601 string with a zone")
    latest = int(time.time() * 1000) + service_settings().max_future_skew_s * 1000
    if not EARLIEST_TIMESTAMP_MS <= ms <= latest:
        raise ValueError(
            f"timestamp {ms} is outside the accepted range: from 2000-01-01T00:00:00Z "
            f"to {service_settings().max_future_skew_s} seconds from now"
        )
    return ms


_ONE_MS = datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)


def parse_amount(value: Any) -> Decimal:
    if isinstance(value, bool | float):
        raise ValueError("amount must be a decimal number (JSON number or string)")
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, Decimal):
        amount = value
    elif isinstance(value, str):
        try:
            amount = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a decimal number") from None
    else:
        raise ValueError("amount must be a decimal number (JSON number or string)")
    if not amount.is_finite():
        raise ValueError("amount must be a finite number")
    if amount <= 0:
        raise ValueError(f"amount must be greater than zero, got {amount}")
    if amount > MAX_AMOUNT:
        raise ValueError(f"amount must be at most {MAX_AMOUNT}, got {amount}")
    return amount


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
        Field(
            description="epoch milliseconds, or ISO-8601 with a zone (e.g. 2024-05-01T12:00:00.123Z)",
            union_mode="left_to_right",
        ),
    ]
    currency: Annotated[
        str | None,
        Field(description="ISO 4217 code; defaults to TXGUARD_DEFAULT_CURRENCY", validate_default=True),
    ] = None
    amount: Annotated[
        Decimal | str,
        Field(description="decimal as a JSON number or string, > 0, at most the currency's decimal places"),
    ]
    merchant_id: Annotated[
        str | None, Field(description="optional merchant identifier: letters, digits, _ . : - (at most 64)")
    ] = None

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp(cls, value: Any) -> int:
        return parse_timestamp_ms(value)

    @field_validator("amount", mode="before")
    @classmethod
    def _amount(cls, value: Any, info: ValidationInfo) -> Decimal:
        amount = parse_amount(value)
        currency = info.data.get("currency")
        if currency in MINOR_UNITS:
            places = MINOR_UNITS[currency]
            exponent = amount.normalize().as_tuple().exponent
            if isinstance(exponent, int) and -exponent > places:
                raise ValueError(f"amount {value} has more decimal places than {currency} allows ({places})")
        return amount

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
    details: list[ErrorDetail] = []


class ErrorResponse(BaseModel):
    error: ErrorBody
