"""The domain's vocabulary, shared by every path (API, stream, CLI, backtest, generator): nothing here does I/O.

A `Transaction` is what a client sends, validated (intake.py); a `Decision` is what a detector concluded about
it, with the `Reason` of each rule that fired; a `DecidedTransaction` is the pair as stored and read back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from json.encoder import encode_basestring as _quote
from typing import Any, Generic, Literal, NamedTuple, TypeVar, overload

# A transaction's optional attributes (txguard/attributes.py says what each may be), in Transaction's order.
ATTRIBUTES = ("channel", "country", "merchant_category", "card_id", "ip_address", "device_id", "metadata")


class Transaction(NamedTuple):
    """A validated transaction, timestamps in epoch milliseconds (a named tuple: cheap to build by the thousand).

    The optional attributes (ATTRIBUTES, None when absent) are in their canonical forms (txguard/attributes.py):
    `channel` one of attributes.CHANNELS, `country` ISO 3166-1 alpha-2, `merchant_category` four ISO 18245 digits,
    `card_id` and `device_id` tokens, `ip_address` canonical text, `metadata` an object of string values."""

    transaction_id: int
    account_id: int
    ts: int
    amount: Decimal
    currency: str
    merchant_id: str | None = None
    channel: str | None = None
    country: str | None = None
    merchant_category: str | None = None
    card_id: str | None = None
    ip_address: str | None = None
    device_id: str | None = None
    metadata: Mapping[str, str] | None = None

    def same_content(self, other: Transaction) -> list[str]:
        """Names of the fields that differ (empty when the two are the same transaction)."""
        return [
            name if name != "ts" else "timestamp" for name in _CONTENT if getattr(self, name) != getattr(other, name)
        ]

    def attributes(self) -> tuple[str | Mapping[str, str] | None, ...]:
        """The optional attributes, in ATTRIBUTES order."""
        return self[6:]

    def text_value(self, field: str) -> str | None:
        """The value rules compare as text (attributes.is_text_field): an attribute, the merchant id, the account id
        in digits, or one metadata value ("metadata.KEY"); None when the transaction has none."""
        if field.startswith("metadata."):
            return None if self.metadata is None else self.metadata.get(field[9:])
        if field == "account_id":
            return str(self.account_id)
        value = getattr(self, field)
        assert value is None or isinstance(value, str)
        return value


_CONTENT = ("account_id", "ts", "amount", "currency", "merchant_id", *ATTRIBUTES)


_V = TypeVar("_V")


class _computed_once(Generic[_V]):  # a decorator, named as functools.cached_property is
    """functools.cached_property without its lock: Python 3.11's takes one, shared by every instance, on each first
    read, which makes that read half as long again as writing a decision's reasons as JSON (batch ingest reads
    them once per new decision). For values of an immutable instance: two threads computing one compute the same."""

    def __init__(self, compute: Callable[[Any], _V]) -> None:
        self._compute = compute
        self._name = compute.__name__
        self.__doc__ = compute.__doc__

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> _computed_once[_V]: ...

    @overload
    def __get__(self, instance: object, owner: type | None = None) -> _V: ...

    def __get__(self, instance: object | None, owner: type | None = None) -> _V | _computed_once[_V]:
        if instance is None:
            return self
        # Kept in the instance's __dict__, which attribute lookup reads before a descriptor without __set__.
        value = instance.__dict__[self._name] = self._compute(instance)
        return value


Outcome = Literal["allow", "review", "block"]
OUTCOMES: tuple[str, ...] = ("allow", "review", "block")


class Reason(NamedTuple):
    """Why a decision scored or took its outcome: one rule that fired (`mode` "active" counts, "shadow" is only
    recorded, "snoozed": it would have fired but a snooze suppressed it for this entity), the champion ("model"),
    or a list the transaction matched ("list": `rule_id` is `list:<name>`)."""

    rule_id: str
    mode: str
    weight: Decimal
    explanation: str

    def as_json(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "mode": self.mode,
            "weight": str(self.weight),
            "explanation": self.explanation,
        }

    def json_text(self) -> str:
        """as_json() serialised, without building the dict (ingest writes one per flagged transaction)."""
        return (
            f'{{"rule_id":{_quote(self.rule_id)},"mode":{_quote(self.mode)},'
            f'"weight":{_quote(str(self.weight))},"explanation":{_quote(self.explanation)}}}'
        )


@dataclass(frozen=True)
class Decision:
    """A detector's verdict on one transaction: `score` 0-1 (four places), `outcome` allow, review or block
    (rule_engine: the precedence), `fraud` exactly when the outcome is block (when it reaches a threshold, a block
    rule fired or a block list matched). `outcome` left None is derived from `fraud` (block or allow): a decision
    built without outcomes is what it was before them.

    `rule_set_version` is the version of the rule set that decided. A detector version (detector_versions) pins
    that rule set with a champion model and shadow models; a decision taken by one records it as
    `detector_version`, and the champion's `model_version`, probability `model_score` (0-1, full precision;
    None when no champion scored) and `model_threshold` (0-1, from its artifact: p >= it flags), or
    `model_fallback` (why the champion was not used: the rules decided alone),
    and each shadow model's probability in `shadow_scores` (model version -> 0-1), which never decides.
    Decisions stored before models carry None in each; those of rules alone carry None but the detector version.
    """

    fraud: bool
    score: Decimal
    reasons: tuple[Reason, ...]
    rule_set_version: int
    detector_version: int | None = None
    model_version: int | None = None
    model_score: float | None = None
    model_threshold: float | None = None
    model_fallback: str | None = None
    shadow_scores: Mapping[int, float] | None = field(default=None, compare=False)
    outcome: Outcome = None  # type: ignore[assignment]  # None: derived from `fraud`

    def __post_init__(self) -> None:
        if self.outcome is None:
            object.__setattr__(self, "outcome", "block" if self.fraud else "allow")
        elif self.fraud != (self.outcome == "block"):
            raise ValueError(f"fraud {self.fraud} contradicts outcome {self.outcome!r}: fraud means block")

    @_computed_once
    def reasons_text(self) -> str:
        """reasons_json as JSON text."""
        return "[" + ",".join([reason.json_text() for reason in self.reasons]) + "]"

    @_computed_once
    def reasons_json(self) -> list[dict[str, Any]]:
        """The reasons as stored and returned (computed once per decision)."""
        return [reason.as_json() for reason in self.reasons]


# A transaction's features by name (features.FEATURES): what a detector decides on.
FeatureValues = Mapping[str, Decimal | int | bool | str | None]


@dataclass(frozen=True)
class DecidedTransaction:
    """A transaction with its decision (as stored, or as re-decided by a replay, which also gives the
    `features` the decision was taken on)."""

    transaction: Transaction
    decision: Decision
    features: FeatureValues | None = field(default=None, compare=False)


@dataclass(frozen=True)
class StoreResult:
    """One item of a stored batch: newly `stored`, or a `duplicate` answered with its original decision."""

    transaction: Transaction
    status: Literal["stored", "duplicate"]
    decision: Decision


class FraudLabel(NamedTuple):
    """What became known about a transaction after it was decided (a chargeback, an analyst's review, ...).

    `labelled_at_ms` (epoch ms) is when the truth became known, in event time; None means "now, as received"
    (storage.labels decides it, and treats a retry of the transaction's latest label as a duplicate).
    """

    transaction_id: int
    fraud: bool
    source: str
    labelled_at_ms: int | None = None
    reason: str | None = None


class StoredLabel(NamedTuple):
    """A label as stored: `label_id` is its order of receipt, times in epoch ms; `in_force` when it is the
    transaction's latest label by (labelled_at, label_id) (what evaluation uses)."""

    label_id: int
    transaction_id: int
    fraud: bool
    source: str
    labelled_at_ms: int
    reason: str | None
    received_at_ms: int
    in_force: bool = True


class LabelResult(NamedTuple):
    """One item of a label batch: newly `stored`, or a `duplicate` answered with the label already stored."""

    label: StoredLabel
    status: Literal["stored", "duplicate"]
