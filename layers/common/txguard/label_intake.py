"""Intake of labels: reading and validating labels from outside (the API, `txguard labels import`), independent
of the transport, in the style of intake.py (which validates transactions).

A label's fields:
- `transaction_id`: a 64-bit integer, the rule of a transaction's id. The transaction need not be stored yet.
- `fraud`: a JSON boolean, strictly (`true`/`false`; not 0/1, not "true").
- `source`: who said so, `kind` or `kind:who`: the kind is a lower-case word (`chargeback`, `analyst`,
  `customer_report`, `generator`, ...: `[a-z][a-z0-9_]{0,49}`), the optional qualifier names the person or
  system (`analyst:alice`, `chargeback:visa`: `[A-Za-z0-9][A-Za-z0-9_.@-]{0,48}`). At most 100 characters.
- `labelled_at`: when the truth became known, in the forms of a transaction's timestamp (epoch ms, or RFC 3339
  with a zone), from 2000-01-01 to now + TXGUARD_MAX_FUTURE_SKEW_SECONDS; omitted: now.
- `reason`: optional text, 1-200 characters after trimming, no control characters (e.g. a fraud scenario).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from txguard import literals
from txguard.domain import FraudLabel
from txguard.intake import INT64_MAX, INT64_MIN, TIMESTAMP_SCHEMA, Problem, parse_timestamp_ms, problem

MAX_LABEL_BATCH = 10_000  # labels one request (or one import chunk) may carry
SOURCE_PATTERN = r"^[a-z][a-z0-9_]{0,49}(?::[A-Za-z0-9][A-Za-z0-9_.@\-]{0,48})?$"
_SOURCE = re.compile(SOURCE_PATTERN)
MAX_REASON_LENGTH = 200


class LabelIn(BaseModel):
    """One label as a client sends it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    transaction_id: Annotated[
        int, Field(strict=True, ge=INT64_MIN, le=INT64_MAX, description="the labelled transaction's id")
    ]
    fraud: Annotated[bool, Field(strict=True, description="true: fraud; false: genuine (a JSON boolean)")]
    source: Annotated[
        str,
        Field(
            pattern=SOURCE_PATTERN,
            max_length=100,
            description="who said so: a kind (chargeback, analyst, customer_report, generator, ...) optionally "
            "qualified as kind:who (analyst:alice)",
        ),
    ]
    labelled_at: Annotated[
        int | str | None,
        TIMESTAMP_SCHEMA,
        Field(
            description="when the truth became known: epoch milliseconds or an RFC 3339 date-time with a zone, "
            "not later than now (small clock skew allowed); default now",
            union_mode="left_to_right",
        ),
    ] = None
    reason: Annotated[
        str | None, Field(max_length=MAX_REASON_LENGTH, description="optional, e.g. the fraud scenario (1-200)")
    ] = None

    @field_validator("transaction_id", mode="before")
    @classmethod
    def _transaction_id(cls, value: Any) -> int:
        return literals.integer_from_json(value, INT64_MIN, INT64_MAX)

    @field_validator("fraud", mode="before")
    @classmethod
    def _fraud(cls, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError("must be a JSON boolean: true or false")
        return value

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, value: Any) -> str:
        if not isinstance(value, str) or not _SOURCE.match(value):
            raise ValueError(
                "must be a lower-case kind such as chargeback, analyst, customer_report or generator "
                "([a-z][a-z0-9_]{0,49}), optionally qualified as kind:who (analyst:alice)"
            )
        return value

    @field_validator("labelled_at", mode="before")
    @classmethod
    def _labelled_at(cls, value: Any) -> int | None:
        if value is None:
            return None
        try:
            return parse_timestamp_ms(value)
        except ValueError as exc:
            raise ValueError(str(exc).replace("timestamp", "labelled_at")) from None

    @field_validator("reason", mode="before")
    @classmethod
    def _reason(cls, value: Any) -> str | None:
        return None if value is None else literals.short_text(value, MAX_REASON_LENGTH)

    def label(self) -> FraudLabel:
        """The validated label in the domain's terms."""
        assert self.labelled_at is None or isinstance(self.labelled_at, int)
        return FraudLabel(self.transaction_id, self.fraud, self.source, self.labelled_at, self.reason)


class LabelBatch(BaseModel):
    """Several labels stored together: all of them, or none."""

    model_config = ConfigDict(extra="forbid")

    labels: Annotated[list[LabelIn], Field(min_length=1)]

    def __repr__(self) -> str:
        return f"LabelBatch(<{len(self.labels)} labels>)"


@dataclass(frozen=True)
class CheckedLabel:
    """One item validated on its own: a `label`, or the `problems` that refused it."""

    index: int
    label: FraudLabel | None
    problems: tuple[Problem, ...] = ()


def check_labels(items: Sequence[Any]) -> list[CheckedLabel]:
    """Each decoded JSON item (a dict) validated on its own, in order."""
    checked = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            checked.append(CheckedLabel(index, None, (Problem(None, None, "must be a JSON object: a label"),)))
            continue
        try:
            checked.append(CheckedLabel(index, LabelIn.model_validate(item).label()))
        except ValidationError as exc:
            checked.append(CheckedLabel(index, None, tuple(problem(e, e["loc"]) for e in exc.errors())))
    return checked
