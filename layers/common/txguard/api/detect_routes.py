"""GET /is_fraud/{account}, served by the detect function (api/app.py adds GET /openapi.json)."""

from __future__ import annotations

from typing import Annotated

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Path, Query
from pydantic import BeforeValidator

from txguard import literals, service
from txguard.api.errors import COMMON_ERRORS, documented_errors
from txguard.api.response_size import PAGE_DESCRIPTION, PAGE_HEADERS, page_response
from txguard.api.schemas import IsFraudResponse, integer_text
from txguard.domain import Outcome
from txguard.intake import INT64_MAX
from txguard.observability import logger
from txguard.presenters import fraud_event_json
from txguard.queries import cursor_after

router = Router()


@router.get(
    "/is_fraud/<account>",
    summary="An account's flagged (or reviewed, or allowed) transactions, newest first, with scores and reasons",
    responses={
        200: {
            "description": PAGE_DESCRIPTION,
            "headers": PAGE_HEADERS,
            "content": {"application/json": {"model": IsFraudResponse}},
        },
        **documented_errors(
            {
                **COMMON_ERRORS,
                404: "no transactions for this account",
                422: "account is not a positive 64-bit integer, or a bad query parameter",
            }
        ),
    },
)
def is_fraud(
    account: Annotated[int, integer_text(1, INT64_MAX), Path(gt=0, le=INT64_MAX, description="account id")],
    limit: Annotated[int, integer_text(1, 1000), Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    recompute: Annotated[
        bool,
        BeforeValidator(literals.boolean_from_text),
        Query(
            description="re-decide with the current rules, point-in-time: at most 5,000 of the account's transactions "
            "per request, from the cursor backwards; follow next_cursor for the rest. Exactly `true` or `false`"
        ),
    ] = False,
    outcome: Annotated[
        Outcome,
        Query(
            description="which decisions are listed: `block` (the flagged ones, the default), `review` (those sent "
            "to review) or `allow`"
        ),
    ] = "block",
    features: Annotated[
        bool,
        BeforeValidator(literals.boolean_from_text),
        Query(
            description="show each event's `features`: the values its decision was taken on (as stored at ingest; "
            "with recompute=true, as re-computed). Exactly `true` or `false`"
        ),
    ] = False,
) -> Response[str]:
    logger.append_keys(account_id=account)
    view = service.account_view(account, limit, cursor, recompute, features, outcome)
    return page_response(
        "events",
        view.page.items,
        lambda j: fraud_event_json(j, features),
        view.page.next_cursor,
        cursor_after,
        extra={"account_id": account, "fraud": view.fraud},
        after={"recomputed": recompute},
    )
