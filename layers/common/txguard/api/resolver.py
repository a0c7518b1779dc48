"""The Powertools resolver both API functions use: validation on, decimals kept exact, one error shape."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.metrics import MetricUnit

from txguard.api.errors import ApiError, error_response, validation_details
from txguard.db import DatabaseUnavailable
from txguard.ingest import DuplicateIdConflict
from txguard.observability import logger, metrics
from txguard.queries import InvalidCursor
from txguard.rule_language import RuleSetError

MAX_BODY_BYTES = 6 * 1024 * 1024  # Lambda's synchronous payload limit


class _BodyRejected(json.JSONDecodeError):
    """Raised by the deserializer; Powertools wraps it, the handler unwraps it."""

    def __init__(self, code: str, message: str, doc: str = "", pos: int = 0) -> None:
        super().__init__(message, doc, pos)
        self.code = code


def _reject_constant(name: str) -> Any:
    raise _BodyRejected("malformed_json", f"{name} is not a valid JSON number")


def parse_json(text: str) -> Any:
    """JSON with numbers as exact decimals; NaN/Infinity refused; nesting beyond the parser's recursion limit
    is refused as malformed (the parser raises RecursionError long before memory is at risk)."""
    if not text or not text.strip():
        raise _BodyRejected("empty_body", "the request body is empty; send a JSON object")
    try:
        return json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)
    except _BodyRejected:
        raise
    except RecursionError:
        raise _BodyRejected("malformed_json", "JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise _BodyRejected("malformed_json", f"malformed JSON: {str(exc)[:200]}") from None
    except json.JSONDecodeError as exc:
        raise _BodyRejected(
            "malformed_json",
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            exc.doc,
            exc.pos,
        ) from None


class TxguardResolver(APIGatewayRestResolver):
    """Checks what Powertools validation cannot see before routing: size, content type, encoding."""

    def resolve(self, event: Mapping[str, Any], context: Any) -> dict[str, Any]:
        event = dict(event)
        try:
            _check_body(event)
        except ApiError as refused:
            metrics.add_metric(name="ValidationErrors", unit=MetricUnit.Count, value=1)
            logger.info("request refused", extra={"code": refused.code})
            return refused.as_proxy_response()
        return super().resolve(event, context)


def _check_body(event: dict[str, Any]) -> None:
    if event.get("httpMethod", "GET") not in ("POST", "PUT", "PATCH"):
        return
    body = event.get("body")
    if body is None or not body.strip():
        raise ApiError(400, "empty_body", "the request body is empty; send a JSON object")
    size = len(body) * 3 // 4 if event.get("isBase64Encoded") else len(body.encode("utf-8", "surrogatepass"))
    if size > MAX_BODY_BYTES:
        raise ApiError(413, "body_too_large", f"the request body is {size} bytes; the limit is {MAX_BODY_BYTES}")
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    content_type = (headers.get("content-type") or "").split(";")[0].strip().lower()
    if content_type and content_type != "application/json" and not content_type.endswith("+json"):
        raise ApiError(
            415,
            "unsupported_content_type",
            f"content type {content_type!r} is not supported; send application/json",
        )
    if event.get("isBase64Encoded"):
        try:
            event["body"] = base64.b64decode(body).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "malformed_json", "the request body is not UTF-8 text") from None
        event["isBase64Encoded"] = False


def build_resolver(*routers: Router) -> TxguardResolver:
    app = TxguardResolver(enable_validation=True, json_body_deserializer=parse_json)
    for router in routers:
        app.include_router(router)
    _register_error_handlers(app)
    return app


def _register_error_handlers(app: TxguardResolver) -> None:
    @app.exception_handler(RequestValidationError)
    def invalid_request(error: RequestValidationError) -> Response[str]:
        cause = error.__cause__
        metrics.add_metric(name="ValidationErrors", unit=MetricUnit.Count, value=1)
        if isinstance(cause, _BodyRejected):
            return error_response(400, cause.code, cause.msg)
        details = validation_details(list(error.errors()))
        items = sorted({d["index"] for d in details if d["index"] is not None})
        message = (
            f"{len(items)} of the transactions are invalid; nothing was stored" if items else "the request is invalid"
        )
        logger.info("invalid request", extra={"details": details[:20]})
        return error_response(422, "validation_error", message, details)

    @app.exception_handler(ApiError)
    def refused(error: ApiError) -> Response[str]:
        return error.response()

    @app.exception_handler(DuplicateIdConflict)
    def conflict(error: DuplicateIdConflict) -> Response[str]:
        details = [
            {
                "index": index,
                "field": "transaction_id",
                "value": tid,
                "reason": f"differs in {', '.join(fields)}",
            }
            for index, tid, fields in error.conflicts
        ]
        if error.in_request:
            metrics.add_metric(name="ValidationErrors", unit=MetricUnit.Count, value=1)
            return error_response(
                422,
                "validation_error",
                "the same transaction_id appears twice with different content",
                details,
            )
        ids = ", ".join(str(tid) for _, tid, _ in error.conflicts[:10])
        return error_response(
            409,
            "transaction_id_conflict",
            f"transaction_id {ids} is already stored with different content; nothing was stored",
            details,
        )

    @app.exception_handler(InvalidCursor)
    def bad_cursor(error: InvalidCursor) -> Response[str]:
        return error_response(400, "invalid_cursor", str(error), [{"field": "cursor", "reason": str(error)}])

    @app.exception_handler(DatabaseUnavailable)
    def unavailable(error: DatabaseUnavailable) -> Response[str]:
        logger.warning("database unavailable", extra={"reason": str(error)})
        return error_response(
            503,
            "database_unavailable",
            "the database is unavailable; nothing was stored, retry later",
            headers={"Retry-After": str(error.retry_after_s)},
        )

    @app.exception_handler(RuleSetError)
    def rules_unusable(error: RuleSetError) -> Response[str]:
        # The newest stored version fails validation (stored before today's limits, or written by hand):
        # nothing can be decided until an operator applies a valid rule set.
        logger.error("the stored rule set cannot be used", extra={"problems": error.problems[:20]})
        return error_response(
            503,
            "rules_unavailable",
            "the stored rule set cannot be used; nothing was stored, retry after a valid rule set is applied",
        )

    @app.not_found
    def not_found(error: NotFoundError) -> Response[str]:
        event = app.current_event
        return error_response(404, "not_found", f"no route for {event.http_method} {event.path}")

    @app.exception_handler(Exception)
    def internal(error: Exception) -> Response[str]:
        logger.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; it has been logged")
