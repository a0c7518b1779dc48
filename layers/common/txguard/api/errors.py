"""The one error shape of the API, and the mapping from every failure to it.

Every 4xx/5xx body is {"error": {"code", "message", "details": [{"index", "field", "value", "reason"}]}}.
No stack trace, SQL or internal name ever reaches a client; the full story goes to the log.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.event_handler import Response, content_types

from txguard.attributes import mask_card_numbers
from txguard.errors import echo
from txguard.intake import problem

# Details listed in one error body: a batch of bad items or megabytes of unknown keys would otherwise make a body
# beyond Lambda's 6 MB response limit (a 5xx); the rest are counted in `details_total` and the message.
MAX_DETAILS = 100
# The keys of a request's batch ({"transactions": [...]}, ...): an error located in one names its item's index.
BATCH_KEYS = ("transactions", "labels", "items", "values")


class ApiError(Exception):
    """A request we refuse, with its status, code and details."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers or {}

    def response(self) -> Response[str]:
        return error_response(self.status, self.code, self.message, self.details, self.headers)

    def as_proxy_response(self) -> dict[str, Any]:
        return {
            "statusCode": self.status,
            "headers": {"Content-Type": content_types.APPLICATION_JSON, **self.headers},
            "body": error_body(self.code, self.message, self.details),
            "isBase64Encoded": False,
        }


def error_body(code: str, message: str, details: list[dict[str, Any]]) -> str:
    """The one error body. Past MAX_DETAILS details only the first are listed, with `details_total` (the count of
    all problems) and the count in the message; each detail's `value` is echoed short (see `echo`), and a card
    number anywhere is masked."""
    listed = [
        {**detail, "value": echo(detail.get("value")), "reason": mask_card_numbers(str(detail.get("reason")))}
        for detail in details[:MAX_DETAILS]
    ]
    # A message or a reason may quote a value: a card number in one is masked as the values are.
    error: dict[str, Any] = {"code": code, "message": mask_card_numbers(message), "details": listed}
    if len(details) > MAX_DETAILS:
        error["message"] = f"{message} ({len(details)} problems; the first {MAX_DETAILS} are listed)"
        error["details_total"] = len(details)
    return json.dumps({"error": error}, default=str)


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[str]:
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=error_body(code, message, details or []),
        headers=headers or {},
    )


def validation_details(errors: list[Any]) -> list[dict[str, Any]]:
    """pydantic/Powertools errors to {"index", "field", "value", "reason"}, one per problem (worded by intake)."""
    details = []
    for error in errors:
        loc = [
            part
            for part in error.get("loc", ())
            if part not in ("transaction", "batch", "label", "labels_batch", "item", "items_batch")
        ]
        source = loc[0] if loc and loc[0] in ("body", "query", "path", "header") else None
        if source:
            loc = loc[1:]
        index = None
        if len(loc) >= 2 and loc[0] in BATCH_KEYS and isinstance(loc[1], int):
            index = loc[1]
            loc = loc[2:]
        found = problem(error, loc)
        field = found.field
        if source in ("query", "path") and field is None:
            field = source
        details.append({"index": index, "field": field, "value": found.value, "reason": found.reason})
    return details


# Statuses every route may answer, for the OpenAPI document (each route adds its own).
COMMON_ERRORS = {
    400: "malformed request (bad JSON, empty body, bad cursor)",
    401: "no API key",
    403: "wrong API key",
    503: "database unavailable (retry after Retry-After seconds) or stored rule set unusable; nothing stored",
}


def documented_errors(descriptions: dict[int, str]) -> dict[int, Any]:
    """OpenAPI `responses` entries for these statuses, all with the one error shape."""
    from txguard.api.schemas import ErrorResponse

    return {
        status: {"description": text, "content": {"application/json": {"model": ErrorResponse}}}
        for status, text in descriptions.items()
    }
