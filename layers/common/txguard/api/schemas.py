"""The API's wire schemas: the batch envelope, the responses and the one error shape (pydantic, for validation
and the OpenAPI document). A transaction's own fields and their rules are intake.TransactionIn."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from txguard import literals
from txguard.intake import TransactionIn


def integer_text(minimum: int, maximum: int) -> BeforeValidator:
    """Validation of an integer given as text (a path or query parameter), by the one integer rule of
    `txguard.literals`: `Annotated[int, integer_text(1, 1000), Query(ge=1, le=1000)]`."""
    return BeforeValidator(lambda value: literals.integer_from_text(value, minimum, maximum))


class TransactionBatch(BaseModel):
    """Several transactions stored together: all of them, or none."""

    model_config = ConfigDict(extra="forbid")

    transactions: Annotated[list[TransactionIn], Field(min_length=1)]

    def __repr__(self) -> str:
        # Request routers log their arguments; a batch of thousands would be rendered whole each time.
        return f"TransactionBatch(<{len(self.transactions)} transactions>)"


class ReasonOut(BaseModel):
    rule_id: str = Field(description="the rule's id, or `model:<version>` for the champion model's reason")
    mode: Literal["active", "shadow", "model", "snoozed", "list"] = Field(
        description="active rules count in the score (or decide the outcome, by their action), shadow rules are "
        "only recorded; `model`: the champion's score, with the features that raised or lowered it most and their "
        "values; `snoozed`: a rule that would have fired but is snoozed for one of the transaction's entities; "
        "`list`: an allow or block list holding one of the transaction's values (rule_id `list:<name>`)"
    )
    weight: str
    explanation: str


class ModelFieldsOut(BaseModel):
    detector_version: int | None = Field(
        default=None, description="the detector version (rule set + champion + shadow models) that decided"
    )
    model_version: int | None = Field(default=None, description="the champion model that scored the decision")
    model_score: float | None = Field(
        default=None,
        description="the champion's probability 0 to 1, full precision; null when no champion scored. The score "
        "is round4(1 - (1 - model_score)(1 - rules' score))",
    )
    model_threshold: float | None = Field(
        default=None, description="the champion's decision threshold 0 to 1: model_score at or above it flags"
    )
    model_fallback: str | None = Field(
        default=None, description="why the champion was not used (the rules decided alone), e.g. a missing artifact"
    )
    shadow_scores: dict[str, float] | None = Field(
        default=None, description="each shadow model's probability 0 to 1, by model version; shadows never decide"
    )


OUTCOME_DESCRIPTION = (
    "allow, review or block, by the documented precedence: an allow list, a block list, an allow rule, a block "
    "rule or a threshold (block), a review rule or a review threshold (review); `fraud` is true exactly for block"
)


class DecisionOut(ModelFieldsOut):
    fraud: bool = Field(description="the outcome is block")
    outcome: Literal["allow", "review", "block"] = Field(description=OUTCOME_DESCRIPTION)
    score: str = Field(description="0 to 1, four decimal places")
    reasons: list[ReasonOut]
    rule_set_version: int


class AttributesOut(BaseModel):
    """A transaction's optional attributes as stored (canonical forms; null when absent)."""

    channel: str | None = Field(default=None, description="how the payment was made (see the request's channel)")
    country: str | None = Field(default=None, description="ISO 3166-1 alpha-2, upper-case")
    merchant_category: str | None = Field(default=None, description="ISO 18245 MCC, four digits")
    card_id: str | None = Field(default=None, description="the card's token")
    ip_address: str | None = Field(default=None, description="canonical text of the IPv4 or IPv6 address")
    device_id: str | None = Field(default=None, description="the device's token")
    metadata: dict[str, str] | None = Field(default=None, description="free string values by key, as sent")


class StoredTransactionOut(AttributesOut):
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


class DecisionOfResultOut(BaseModel):
    """A transaction's result in the compact form (`response=decisions`)."""

    transaction_id: int
    status: Literal["stored", "duplicate"]
    outcome: Literal["allow", "review", "block"] = Field(description=OUTCOME_DESCRIPTION)
    score: str = Field(description="0 to 1, four decimal places")


class Downgraded(BaseModel):
    """Why a write's results are in a more compact form than asked: the form asked would pass Lambda's response
    limit. Everything the answer says was done is done; a retry is answered the same way."""

    code: Literal["response_too_large"]
    asked: str = Field(description="the form asked for (the `response` query parameter)")
    served: str = Field(description="the form of the results; the Txguard-Response-Form header says it too")
    full_bytes: int = Field(description="bytes the answer in the form asked would have taken")
    limit_bytes: int = Field(description="Lambda's response limit, 6,291,556 bytes, envelope included")
    message: str


DOWNGRADED_DESCRIPTION = "present when the form asked for did not fit: why the results are in this form"


class DecisionsResponse(BaseModel):
    results: list[DecisionOfResultOut] = Field(description="one per transaction, in request order")
    downgraded: Downgraded | None = Field(default=None, description=DOWNGRADED_DESCRIPTION)


class ListedTransactionOut(StoredTransactionOut):
    decision: DecisionOut


class ListResponse(BaseModel):
    transactions: list[ListedTransactionOut]
    next_cursor: str | None


class FraudEventOut(ModelFieldsOut, AttributesOut):
    transaction_id: int
    timestamp: int
    amount: str
    currency: str
    merchant_id: str | None = None
    outcome: Literal["allow", "review", "block"] = Field(description=OUTCOME_DESCRIPTION)
    score: str
    reasons: list[ReasonOut]
    rule_set_version: int
    features: dict[str, float | int | None] | None = Field(
        default=None,
        description="with features=true only: the feature values (exact JSON numbers, by name) the decision was "
        "taken on; null for a decision stored before features were kept",
    )


class IsFraudResponse(BaseModel):
    account_id: int
    fraud: bool = Field(
        description="whether any transaction of the account is flagged, i.e. blocked (with recompute=true: any on "
        "this page)"
    )
    events: list[FraudEventOut] = Field(
        description="transactions of the outcome asked for (flagged ones by default), newest first"
    )
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null on the last. A page may hold fewer events than `limit` "
        "while this is set: cut by bytes (Txguard-Page-Cut: size), or with recompute=true, even none"
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


class ItemRefusedOut(BaseModel):
    index: int = Field(description="the item's position in the request")
    status: Literal["refused"]
    error: ErrorBody


class PartialStoreResultOut(StoreResultOut):
    index: int = Field(description="the item's position in the request")


class PartialDecisionOut(DecisionOfResultOut):
    """A stored item's result in the compact form (`response=decisions`)."""

    index: int = Field(description="the item's position in the request")


class PartialStoreResponse(BaseModel):
    results: list[PartialStoreResultOut | PartialDecisionOut | ItemRefusedOut] = Field(
        description="one per item, in request order: stored or duplicate with its decision (the compact form with "
        "`response=decisions`, or when the full form did not fit), or refused with its error"
    )
    downgraded: Downgraded | None = Field(default=None, description=DOWNGRADED_DESCRIPTION)


class ModelWindowsOut(BaseModel):
    version: int
    name: str
    status: Literal["candidate", "shadow", "champion", "retired"]
    artifact_sha256: str = Field(description="the artifact's content address: models/<sha256>.json")
    features: list[str] = Field(description="the feature names the model reads, in its column order")
    features_hash: str = Field(description='sha256 hex of the names joined by "\\n"')
    train_from: int = Field(description="epoch milliseconds: the training window is [train_from, train_to)")
    train_to: int
    gap_days: int
    valid_from: int = Field(description="epoch milliseconds: the validation window is [valid_from, valid_to)")
    valid_to: int
    label_cutoff: int = Field(description="epoch milliseconds: only labels known before it were read")
    seed: int
    previous_champion: int | None = Field(description="the champion this version replaced: what a rollback restores")
    created_at: int = Field(description="epoch milliseconds")
    created_by: str


class ModelHeadlineOut(BaseModel):
    roc_auc: float | None = None
    average_precision: float | None = None
    card_precision_at_k: float | None = None
    f1: float | None = None
    precision: float | None = None
    recall: float | None = None
    threshold: float | None = Field(default=None, description="the decision threshold, a probability 0–1")


class ModelSummaryOut(ModelWindowsOut):
    validation: ModelHeadlineOut = Field(description="figures on the validation window (0–1; null: undefined)")


class ModelListResponse(BaseModel):
    models: list[ModelSummaryOut] = Field(description="newest first")
    next_before: int | None = Field(description="pass as `before` for the next page; null on the last")


class ThresholdLevelOut(BaseModel):
    score: float = Field(description="flagged: model score >= this")
    flagged: int
    precision: float
    recall: float
    fpr: float = Field(description="false-positive rate: flagged genuine transactions / genuine transactions")


class ModelOut(ModelWindowsOut):
    params: dict[str, Any] = Field(description="the LightGBM parameters it was trained with")
    metrics: dict[str, Any] = Field(
        description="validation (ranking metrics, confusion matrix, precision-recall curve), training counts, feature "
        "importance, and the baseline, champion and stored decisions compared on the same window"
    )
    thresholds: list[ThresholdLevelOut] = Field(description="precision, recall and false-positive rate by score")
