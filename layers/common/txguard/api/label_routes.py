"""POST /labels (one label or a batch) and GET /labels (a transaction's or an account's labels), served by the
ingest function."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Body, Query
from pydantic import BaseModel, Discriminator, Field, Tag

from txguard import service
from txguard.api.errors import COMMON_ERRORS, ApiError, documented_errors
from txguard.api.response_size import (
    PAGE_DESCRIPTION,
    PAGE_HEADERS,
    committed_answer,
    form_headers,
    page_response,
)
from txguard.api.schemas import Downgraded, integer_text
from txguard.intake import INT64_MAX, INT64_MIN
from txguard.label_intake import MAX_LABEL_BATCH, LabelBatch, LabelIn
from txguard.presenters import label_ids_json, label_json, label_results_json
from txguard.storage.labels import encode_cursor

router = Router()


def _kind(value: Any) -> str:
    return "labels_batch" if isinstance(value, dict) and "labels" in value else "label"


LabelBody = Annotated[
    Annotated[LabelIn, Tag("label")] | Annotated[LabelBatch, Tag("labels_batch")],
    Discriminator(_kind),
]


class LabelOut(BaseModel):
    label_id: int = Field(description="order of receipt")
    transaction_id: int
    fraud: bool
    source: str
    labelled_at: int = Field(description="epoch milliseconds: when the truth became known")
    reason: str | None = None
    received_at: int = Field(description="epoch milliseconds: when txguard stored it")
    in_force: bool = Field(description="the transaction's latest label by (labelled_at, label_id)")


class LabelResultOut(BaseModel):
    transaction_id: int
    status: str = Field(description="stored, or duplicate (the label already stored is returned)")
    label: LabelOut


class LabelIdsResultOut(BaseModel):
    """A label's result in the compact form (`response=ids`)."""

    transaction_id: int
    status: str = Field(description="stored, or duplicate (the label already stored is meant)")
    label_id: int
    in_force: bool


class LabelStoreResponse(BaseModel):
    results: list[LabelResultOut]


class LabelIdsResponse(BaseModel):
    results: list[LabelIdsResultOut] = Field(description="one per label sent, in request order")
    downgraded: Downgraded | None = Field(
        default=None, description="present when `full` was asked but did not fit: why the results are in this form"
    )


# What POST /labels answers for each label (the `response` query parameter).
LabelForm = Literal["full", "ids"]


class LabelListResponse(BaseModel):
    labels: list[LabelOut]
    next_cursor: str | None


@router.post(
    "/labels",
    summary="Store one label or a batch: what became known about transactions (chargebacks, reviews, ...)",
    description=(
        'The body is one label (an object) or a batch `{"labels": [...]}` of at most 10,000. All or nothing: if '
        "any item is invalid, nothing is stored. Labels are append-only: a later label (by labelled_at, then "
        "receipt) supersedes an earlier one, and the history is kept. The same label sent again is answered as "
        "`duplicate`; so is a label without labelled_at that repeats the transaction's latest label. A label for a "
        "transaction not stored yet is kept and applies when the transaction arrives."
    ),
    responses={
        201: {
            "description": "stored: one result per label, in request order (the compact form with `response=ids`, "
            "or when the full form would pass the response limit: see `downgraded`; the Txguard-Response-Form "
            "header names the form)",
            "content": {"application/json": {"model": LabelStoreResponse | LabelIdsResponse}},
            "headers": form_headers("full", "ids"),
        },
        **documented_errors(
            {
                **COMMON_ERRORS,
                413: "body too large",
                415: "not application/json (nor application/*+json), or a charset other than UTF-8",
                422: "invalid fields (every invalid item by index, field and reason), or more than 10,000 labels; "
                "nothing stored",
            }
        ),
    },
)
def store_labels(
    body: Annotated[LabelBody, Body()],
    response: Annotated[
        LabelForm,
        Query(
            description="`full` (the default): each result with the label as stored. `ids`: each result only "
            "`transaction_id`, `status`, `label_id` and `in_force`"
        ),
    ] = "full",
) -> Response[str]:
    items = body.labels if isinstance(body, LabelBatch) else [body]
    if len(items) > MAX_LABEL_BATCH:
        raise ApiError(
            422,
            "batch_too_large",
            f"a batch holds at most {MAX_LABEL_BATCH} labels; this one has {len(items)}",
            [{"index": None, "field": "labels", "value": len(items), "reason": f"at most {MAX_LABEL_BATCH} items"}],
        )
    results = service.store_labels([item.label() for item in items])
    return committed_answer(
        201,
        response,
        "ids",
        lambda: {"results": label_results_json(results)},
        lambda: {"results": label_ids_json(results)},
    )


@router.get(
    "/labels",
    summary="A transaction's or an account's labels, in order of receipt, each saying whether it is in force",
    responses={
        200: {
            "description": PAGE_DESCRIPTION,
            "headers": PAGE_HEADERS,
            "content": {"application/json": {"model": LabelListResponse}},
        },
        **documented_errors(
            {**COMMON_ERRORS, 422: "a query parameter is invalid, or neither or both of transaction_id and account_id"}
        ),
    },
)
def list_labels(
    transaction_id: Annotated[
        int | None,
        integer_text(INT64_MIN, INT64_MAX),
        Query(ge=INT64_MIN, le=INT64_MAX, description="this transaction's labels (stored or not)"),
    ] = None,
    account_id: Annotated[
        int | None,
        integer_text(1, INT64_MAX),
        Query(gt=0, le=INT64_MAX, description="the labels of this account's stored transactions"),
    ] = None,
    limit: Annotated[int, integer_text(1, 1000), Query(ge=1, le=1000, description="page size")] = 100,
    cursor: Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page")] = None,
) -> Response[str]:
    if (transaction_id is None) == (account_id is None):
        reason = "give exactly one of transaction_id and account_id"
        raise ApiError(
            422,
            "validation_error",
            reason,
            [
                {"index": None, "field": name, "value": value, "reason": reason}
                for name, value in (("transaction_id", transaction_id), ("account_id", account_id))
            ],
        )
    page = service.label_listing(transaction_id, account_id, limit, cursor)
    return page_response("labels", page.items, label_json, page.next_cursor, lambda s: encode_cursor(s.label_id))
