"""POST /store_data (one transaction or a batch) and GET /store_data (listing), served by the ingest function."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Body, Query
from pydantic import (
    BeforeValidator,
    Discriminator,
    GetCoreSchemaHandler,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
)
from pydantic_core import core_schema

from txguard import literals, service
from txguard.api.errors import (
    COMMON_ERRORS,
    MAX_DETAILS,
    ApiError,
    documented_errors,
    error_response,
    validation_details,
)
from txguard.api.resolver import PER_ITEM_PATH, BodyRejected, parse_json
from txguard.api.response_size import (
    PAGE_DESCRIPTION,
    PAGE_HEADERS,
    committed_answer,
    downgraded,
    fitting_text,
    form_headers,
    page_response,
    write_response,
)
from txguard.api.schemas import (
    DecisionsResponse,
    ListResponse,
    PartialStoreResponse,
    StoreResponse,
    TransactionBatch,
    integer_text,
)
from txguard.domain import StoreResult, Transaction
from txguard.errors import shorten
from txguard.intake import INT64_MAX, TransactionIn, batch_transactions, window_bound_ms
from txguard.observability import logger
from txguard.presenters import decision_members, listed_json, result_members, store_decisions_json, store_results_text
from txguard.queries import cursor_after
from txguard.settings import service_settings

router = Router()


def _kind(value: Any) -> str:
    return "batch" if isinstance(value, dict) and "transactions" in value else "transaction"


_StoreBodyIn = Annotated[
    Annotated[TransactionIn, Tag("transaction")] | Annotated[TransactionBatch, Tag("batch")],
    Discriminator(_kind),
]


@dataclass(frozen=True)
class StoreBody:
    """A POST /store_data body, validated: its transactions in request order (one for a single transaction).

    The body is read as columns first (intake.batch_transactions); one that is not plain there is validated item
    by item by TransactionIn, which words every problem, so the errors and the transactions are those of
    TransactionIn either way. The OpenAPI document shows the body as TransactionIn and TransactionBatch describe
    it."""

    transactions: list[Transaction]

    def __repr__(self) -> str:
        # Powertools formats the route's arguments into a debug message whatever the log level: a batch of
        # thousands would be rendered whole on every request.
        return f"StoreBody(<{len(self.transactions)} transactions>)"

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_wrap_validator_function(cls._validate, handler.generate_schema(_StoreBodyIn))

    @classmethod
    def _validate(cls, value: Any, item_by_item: ValidatorFunctionWrapHandler) -> StoreBody:
        columns = batch_transactions(value)
        if columns is not None:
            return cls(columns)
        body = item_by_item(value)
        items = body.transactions if isinstance(body, TransactionBatch) else [body]
        return cls([item.transaction() for item in items])


# What POST /store_data answers for each transaction (the `response` query parameter).
ResponseForm = Literal["full", "decisions"]

_STORE_ERRORS = documented_errors(
    {
        **COMMON_ERRORS,
        409: "transaction_id already stored with different content; nothing stored",
        413: "body too large",
        415: "not application/json (nor application/*+json), or a charset other than UTF-8",
        422: "invalid fields (every invalid item by index, field and reason), unknown query parameters, or a body "
        "that is not a JSON object (a top-level array included); nothing stored",
    }
)
_LIST_ERRORS = documented_errors({**COMMON_ERRORS, 422: "a query parameter is invalid"})


@router.post(
    "/store_data",
    summary="Store one transaction or a batch, each with its fraud decision",
    description=(
        'The body is one transaction (an object) or a batch `{"transactions": [...]}`; a top-level array is '
        "refused with 422, never partly taken. All or nothing: if any item is invalid, nothing is stored. Retrying "
        "is safe: a transaction_id already stored with the same content is answered as `duplicate` with its "
        "original decision; with different content the request is refused with 409. The media type is "
        "`application/json` (any case, `application/*+json` too; a charset, if given, must be UTF-8); anything "
        "else is refused with 415. With `?response=decisions` each result is only the transaction's id, status, "
        "outcome and score (no transaction echoed back, no reasons): the compact form for high-volume clients. "
        "With `?atomic=false` items are taken one by one: the valid ones are stored, each "
        "invalid or conflicting one is refused with its own error (the one error shape), and the answer is 207 "
        "when any item was refused (201 when none was). An answer never passes Lambda's 6,291,556-byte response "
        "limit: when the full form would, the results are in the decisions form, with `downgraded` saying why "
        "(the transactions are stored all the same; GET /store_data lists them in full). Every answer names its "
        "results' form in the Txguard-Response-Form header (`full` or `decisions`)."
    ),
    responses={
        201: {
            "description": "stored: one result per transaction, in request order (the compact form with "
            "`response=decisions`, or with `downgraded` when the full form would not fit)",
            "content": {"application/json": {"model": StoreResponse | DecisionsResponse}},
            "headers": form_headers("full", "decisions"),
        },
        207: {
            "description": "atomic=false and at least one item refused: one result per item, stored (in the form "
            "asked, or the decisions form with `downgraded` when that would not fit) or refused",
            "content": {"application/json": {"model": PartialStoreResponse}},
            "headers": form_headers("full", "decisions"),
        },
        **_STORE_ERRORS,
    },
)
def store_data(
    body: Annotated[StoreBody, Body()],
    atomic: Annotated[
        bool,
        BeforeValidator(literals.boolean_from_text),
        Query(
            description="`true` (the default): all items stored, or none. `false`: each item on its own, valid ones "
            "stored, invalid ones refused each with its error (207). Exactly `true` or `false`"
        ),
    ] = True,
    response: Annotated[
        ResponseForm,
        Query(
            description="`full` (the default): each result with the transaction as stored and its whole decision, "
            "reasons included. `decisions`: each result only `transaction_id`, `status`, `outcome` and `score`"
        ),
    ] = "full",
) -> Response[str]:
    transactions = body.transactions
    _check_batch_size(len(transactions))
    accounts = sorted({t.account_id for t in transactions})
    logger.append_keys(account_id=accounts[0] if len(accounts) == 1 else accounts[:20])
    # Publishing alerts after the commit stops short of the invocation's end (None outside Lambda).
    remaining_ms = getattr(router.lambda_context, "get_remaining_time_in_millis", None)
    results = service.store(transactions, remaining_ms)
    return stored_answer(results, response)


def stored_answer(results: list[StoreResult], form: ResponseForm) -> Response[str]:
    """The 201 answer to a stored batch, in the `form` asked for (`full` falls back to `decisions` when its body
    would not fit Lambda's limits: response_size.committed_answer). What `make bench` times as the response."""
    return committed_answer(
        201,
        form,
        "decisions",
        lambda: {"results": store_results_text(results)},
        lambda: {"results": store_decisions_json(results)},
    )


def _check_batch_size(size: int) -> None:
    limit = service_settings().max_batch_size
    if size > limit:
        raise ApiError(
            422,
            "batch_too_large",
            f"a batch holds at most {limit} transactions; this one has {size}",
            [{"index": None, "field": "transactions", "value": size, "reason": f"at most {limit} items"}],
        )


@router.post(PER_ITEM_PATH, include_in_schema=False, enable_validation=False)
def store_data_per_item(response: Annotated[ResponseForm, Query()] = "full") -> Response[str]:
    """POST /store_data?atomic=false: each item validated and stored on its own (service.store_each). `response`
    is declared so that it is a known parameter; this route validates nothing before its code runs, so its value
    is read from the request here."""
    try:
        document = parse_json(router.current_event.body or "")
    except BodyRejected as rejected:
        return error_response(rejected.status, rejected.code, rejected.msg, rejected.details)
    response = _response_form(router.current_event.get_query_string_value("response"))
    items = _per_item_items(document)
    _check_batch_size(len(items))
    remaining_ms = getattr(router.lambda_context, "get_remaining_time_in_millis", None)
    outcomes = service.store_each(items, remaining_ms)
    refused = sum(1 for o in outcomes if o.result is None)
    logger.info("per-item batch", extra={"items": len(outcomes), "refused": refused})
    status = 207 if refused else 201
    # The answer in the form asked, else ever more compact until it fits: stored items in the decisions form,
    # then each refused item's details cut to its first (details_total counts them all), then to none.
    tries: list[tuple[ResponseForm, int]] = [("full", MAX_DETAILS)] if response == "full" else []
    tries += [("decisions", MAX_DETAILS), ("decisions", 1), ("decisions", 0)]
    first = ""
    for form, max_details in tries:
        text, fit = fitting_text(orjson.dumps({"results": _per_item_results(outcomes, form, max_details)}))
        if fit:
            break
        first = first or text
    if not first:
        return write_response(status, text, form)
    notice = downgraded(response, form, first)
    if max_details < MAX_DETAILS:
        notice["message"] += (
            f"; each refused item lists at most {max_details} of its problems (details_total counts them)"
        )
    logger.warning("the answer is too large; answered more compactly", extra={"bytes": notice["full_bytes"]})
    body = {"results": _per_item_results(outcomes, form, max_details), "downgraded": notice}
    return write_response(status, orjson.dumps(body).decode(), form)


def _per_item_results(outcomes: list[service.ItemOutcome], form: ResponseForm, max_details: int) -> list[Any]:
    """A per-item answer's results, in request order: each stored item in `form` with its index first, each
    refused one with its error listing at most `max_details` of its problems (`details_total` when more)."""
    stored = [o.result for o in outcomes if o.result is not None]
    members = iter(result_members(stored) if form == "full" else decision_members(stored))
    results: list[Any] = []
    for outcome in outcomes:
        if outcome.result is not None:
            results.append(orjson.Fragment(f'{{"index":{outcome.index},{next(members)}}}'))
            continue
        details = [
            {"index": outcome.index, "field": p.field, "value": p.value, "reason": p.reason}
            for p in outcome.problems[:max_details]
        ]
        message = "the item is invalid; it was not stored"
        if outcome.code == "transaction_id_conflict":
            message = "the item's transaction_id is already stored with different content; it was not stored"
        error: dict[str, Any] = {"code": outcome.code, "message": message, "details": details}
        if len(outcome.problems) > len(details):
            error["details_total"] = len(outcome.problems)
        results.append({"index": outcome.index, "status": "refused", "error": error})
    return results


_RESPONSE_FORM: TypeAdapter[ResponseForm] = TypeAdapter(ResponseForm)


def _response_form(value: str | None) -> ResponseForm:
    """The `response` query parameter read as the atomic route's validation reads it (the same 422 when unknown)."""
    if value is None:
        return "full"
    try:
        return _RESPONSE_FORM.validate_python(value)
    except ValidationError as exc:
        errors = [{**error, "loc": ("query", "response", *error["loc"])} for error in exc.errors()]
        raise ApiError(422, "validation_error", "the request is invalid", validation_details(errors)) from None


def _per_item_items(document: dict[str, Any]) -> list[Any]:
    """The items of a per-item request: a batch's `transactions`, or the one transaction the body is. The envelope
    itself is checked whole (422): a batch is an object with a non-empty `transactions` array and nothing else."""
    if "transactions" not in document:
        return [document]
    batch = document["transactions"]
    extra = sorted(set(document) - {"transactions"})
    problems = []
    if not isinstance(batch, list) or not batch:
        problems.append({"index": None, "field": "transactions", "value": batch, "reason": "must be a non-empty array"})
    problems += [
        {"index": None, "field": name, "value": document[name], "reason": f"unknown field {name!r}"} for name in extra
    ]
    if problems:
        raise ApiError(422, "validation_error", "the batch envelope is invalid; nothing was stored", problems)
    return list(batch)


# How a window's bound may be written (intake.window_bound_ms), as the CLI's --from/--to take it.
_BOUND_FORMS = "a UTC date YYYY-MM-DD (its 00:00 UTC), epoch ms or an RFC 3339 date-time with a zone"


@router.get(
    "/store_data",
    summary="List stored transactions with their decisions, oldest first",
    responses={
        200: {
            "description": PAGE_DESCRIPTION,
            "headers": PAGE_HEADERS,
            "content": {"application/json": {"model": ListResponse}},
        },
        **_LIST_ERRORS,
    },
)
def list_data(
    account_id: Annotated[
        int | None, integer_text(1, INT64_MAX), Query(gt=0, le=INT64_MAX, description="only this account")
    ] = None,
    from_: Annotated[str | None, Query(alias="from", max_length=40, description=f"{_BOUND_FORMS}, inclusive")] = None,
    to: Annotated[str | None, Query(max_length=40, description=f"{_BOUND_FORMS}, exclusive")] = None,
    limit: Annotated[int, integer_text(1, 1000), Query(ge=1, le=1000, description="page size")] = 100,
    cursor: Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page")] = None,
) -> Response[str]:
    bounds = {name: _time_param(name, value) for name, value in (("from", from_), ("to", to))}
    if bounds["from"] is not None and bounds["to"] is not None and bounds["from"] > bounds["to"]:
        reason = "from is after to: the range would be empty"
        raise ApiError(
            422,
            "validation_error",
            "query parameters 'from' and 'to' are reversed",
            [
                {"index": None, "field": name, "value": value, "reason": reason}
                for name, value in (("from", from_), ("to", to))
            ],
        )
    page = service.listing(account_id, bounds["from"], bounds["to"], limit, cursor)
    return page_response("transactions", page.items, listed_json, page.next_cursor, cursor_after)


def _time_param(name: str, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return window_bound_ms(value)
    except ValueError as exc:
        raise ApiError(
            422,
            "validation_error",
            f"query parameter {name!r} is invalid",
            [{"index": None, "field": name, "value": value, "reason": shorten(str(exc))}],
        ) from None
