"""POST/GET /rules/{rule_id}/snoozes and DELETE /rules/{rule_id}/snoozes/{kind}/{value}: snoozing a rule for one
entity (txguard.snoozes), served by the ingest function."""

from __future__ import annotations

from typing import Annotated, Literal

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Body, Path, Query
from pydantic import BaseModel, BeforeValidator, Field

from txguard import literals, snoozes
from txguard.api.errors import COMMON_ERRORS, ApiError, documented_errors
from txguard.api.presenters import json_response
from txguard.api.response_size import PAGE_DESCRIPTION, PAGE_HEADERS, page_response
from txguard.api.schemas import integer_text
from txguard.attributes import ListKind
from txguard.rule_language import RULE_ID
from txguard.snoozes import ACTOR, SnoozeIn
from txguard.storage.rule_snoozes import snooze_cursor

router = Router()

Kind = ListKind


class SnoozeOut(BaseModel):
    rule_id: str
    kind: Kind
    value: str = Field(description="the entity, in its kind's canonical form")
    until: int = Field(description="epoch milliseconds: the rule fires again for this entity from then on")
    note: str | None = None
    by: str
    created_at: int = Field(description="epoch milliseconds")


class SnoozeStoredResponse(BaseModel):
    status: Literal["stored", "changed", "unchanged"] = Field(
        description="stored (new), changed (replaced another until or note), unchanged (the same snooze again)"
    )
    snooze: SnoozeOut


class SnoozeChangeOut(BaseModel):
    change_id: int
    change: Literal["snoozed", "changed", "lifted"]
    rule_id: str
    kind: Kind
    value: str
    until: int = Field(description="epoch milliseconds")
    note: str | None = None
    by: str
    at: int = Field(description="epoch milliseconds")


class SnoozeListResponse(BaseModel):
    snoozes: list[SnoozeOut] = Field(
        description="in force (with expired=true, ended ones too), soonest end first, then by kind and value"
    )
    next_cursor: str | None
    changes: list[SnoozeChangeOut] = Field(description="the rule's last 100 snooze changes, oldest first")


RuleIdPath = Annotated[str, Path(pattern=RULE_ID, description="a rule of the newest rule set")]


@router.post(
    "/rules/<rule_id>/snoozes",
    summary="Snooze a rule for one entity (an account, a card, a country, ...) until a time",
    description=(
        "While the snooze is in force the rule does not fire for transactions of that entity; each decision it "
        "would have fired on records a `snoozed` reason naming the snooze. Snoozing the same rule and entity "
        "again replaces the snooze (`changed`); the same snooze sent again changes nothing (`unchanged`). Every "
        "change is recorded (GET lists them)."
    ),
    responses={
        201: {"description": "stored or changed", "content": {"application/json": {"model": SnoozeStoredResponse}}},
        **documented_errors(
            {
                **COMMON_ERRORS,
                404: "no such rule in the newest rule set",
                415: "not application/json",
                422: "invalid fields: a kind that is not a list kind, a value that is not of its kind, an `until` "
                "not in the future or more than 366 days ahead, a note over 500 characters",
            }
        ),
    },
)
def snooze_rule(rule_id: RuleIdPath, body: Annotated[SnoozeIn, Body()]) -> Response[str]:
    snooze, status = snoozes.snooze_rule(rule_id, body)
    return json_response(
        201 if status != "unchanged" else 200, {"status": status, "snooze": snoozes.snooze_json(snooze)}
    )


@router.get(
    "/rules/<rule_id>/snoozes",
    summary="A rule's snoozes in force, a page at a time, and its snooze changes",
    description="`changes` (the last 100) is the same on every page.",
    responses={
        200: {
            "description": PAGE_DESCRIPTION,
            "headers": PAGE_HEADERS,
            "content": {"application/json": {"model": SnoozeListResponse}},
        },
        **documented_errors({**COMMON_ERRORS, 404: "no such rule", 422: "a bad parameter"}),
    },
)
def list_snoozes(
    rule_id: RuleIdPath,
    expired: Annotated[
        bool,
        BeforeValidator(literals.boolean_from_text),
        Query(description="also the snoozes that ended (exactly `true` or `false`)"),
    ] = False,
    limit: Annotated[int, integer_text(1, 1000), Query(ge=1, le=1000, description="page size")] = 100,
    cursor: Annotated[str | None, Query(max_length=300, description="next_cursor of the previous page")] = None,
) -> Response[str]:
    page = snoozes.rule_snoozes(rule_id, expired, limit, cursor)
    return page_response(
        "snoozes",
        page.snoozes,
        snoozes.snooze_json,
        page.next_cursor,
        snooze_cursor,
        after={"changes": [snoozes.change_json(c) for c in page.changes]},
    )


@router.delete(
    "/rules/<rule_id>/snoozes/<kind>/<value>",
    summary="Lift a rule's snooze for one entity (recorded, with who lifted it)",
    responses={
        200: {"description": "lifted: the snooze as it was", "content": {"application/json": {"model": SnoozeOut}}},
        **documented_errors(
            {**COMMON_ERRORS, 404: "the rule is not snoozed for this entity", 422: "a bad kind, value or `by`"}
        ),
    },
)
def unsnooze(
    rule_id: RuleIdPath,
    kind: Annotated[Kind, Path(description="the entity's kind")],
    value: Annotated[str, Path(min_length=1, max_length=64, description="the entity")],
    by: Annotated[str, Query(pattern=ACTOR, description="who lifts the snooze")],
) -> Response[str]:
    try:
        lifted = snoozes.unsnooze(rule_id, kind, value, by)
    except ValueError as exc:
        raise ApiError(
            422,
            "validation_error",
            f"value: not a {kind} value: {exc}",
            [{"index": None, "field": "value", "value": value, "reason": f"not a {kind} value: {exc}"}],
        ) from None
    return json_response(200, snoozes.snooze_json(lifted))
