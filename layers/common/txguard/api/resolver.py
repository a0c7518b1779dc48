"""The Powertools resolver both API functions use: validation on, decimals kept exact, one error shape."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.middlewares import NextMiddleware
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)
from aws_lambda_powertools.metrics import MetricUnit

from txguard import literals
from txguard.api.errors import BATCH_KEYS, ApiError, error_response, validation_details
from txguard.api.response_size import LAMBDA_RESPONSE_LIMIT, result_size
from txguard.errors import BadInput, Conflict, Malformed, NotFound, TxguardError, Unavailable, echo, shorten
from txguard.memory import collection_paused
from txguard.observability import logger, metrics
from txguard.rule_language import RuleSetError

MAX_BODY_BYTES = 6 * 1024 * 1024  # Lambda's synchronous payload limit
# POST /store_data?atomic=false is served by this route of the ingest function (see _route_per_item_mode); API
# Gateway exposes only /store_data.
PER_ITEM_PATH = "/store_data/per-item"


# The routes whose body is one item or a batch {"KEY": [...]}: resource -> (what an item is, KEY), for messages.
BATCH_BODIES = {
    "/store_data": ("a transaction", "transactions"),
    PER_ITEM_PATH: ("a transaction", "transactions"),
    "/labels": ("a label", "labels"),
    "/lists/{name}/items": ("an item", "items"),
}
# What a refused batch leaves undone, by its key (every other batch stores).
_UNDONE = {"values": "nothing was removed"}


class BodyRejected(json.JSONDecodeError):
    """Raised by the deserializer; Powertools wraps it, the handler unwraps it. `found` (a body that is JSON
    but not an object: "an array", "not an object") lets the handler word the refusal for the route."""

    def __init__(
        self,
        code: str,
        message: str,
        status: int = 400,
        details: list[dict[str, Any]] | None = None,
        found: str | None = None,
    ) -> None:
        super().__init__(message, "", 0)
        self.code = code
        self.status = status
        self.details = details or []
        self.found = found


def not_an_object(found: str, resource: str | None) -> tuple[str, str]:
    """(message, reason) refusing a body that is `found` ("an array", "not an object") on `resource`: what the
    route takes, one item or a batch, in its own words."""
    if resource in BATCH_BODIES:
        item, key = BATCH_BODIES[resource]
        one = item.split(" ", 1)[1]
        return (
            f'the body is {found}; send one {one} as an object, or a batch as {{"{key}": [...]}}',
            f'must be a JSON object: {item}, or {{"{key}": [...]}} for a batch',
        )
    return f"the body is {found}; send a JSON object", "must be a JSON object"


def parse_json(text: str) -> Any:
    """The request body as a JSON object, read by the one JSON rule (`txguard.literals.loads`: exact numbers, no
    NaN/Infinity, no key twice, nesting bounded). Anything else at the top, a top-level array included, is refused
    whole with 422: a batch is `{"transactions": [...]}`, and Powertools would otherwise take an array's first item
    and drop the rest."""
    if not text or not text.strip():
        raise BodyRejected("empty_body", "the request body is empty; send a JSON object")
    try:
        document = literals.loads(text)
    except literals.JsonRefused as exc:
        raise BodyRejected("malformed_json", str(exc)) from None
    if not isinstance(document, dict):
        # Worded for the route by the handler (invalid_request), which knows it.
        found = "an array" if isinstance(document, list) else "not an object"
        message, reason = not_an_object(found, None)
        details = [{"index": None, "field": None, "value": echo(document), "reason": reason}]
        raise BodyRejected("validation_error", message, 422, details, found)
    return document


class TxguardResolver(APIGatewayRestResolver):
    """Checks what Powertools validation cannot see before routing: size, content type, encoding."""

    def resolve(self, event: Mapping[str, Any], context: Any) -> dict[str, Any]:
        event = dict(event)
        try:
            _check_query(event)
            _check_body(event)
        except ApiError as refused:
            metrics.add_metric(name="ValidationErrors", unit=MetricUnit.Count, value=1)
            logger.info("request refused", extra={"code": refused.code})
            return refused.as_proxy_response()
        _route_per_item_mode(event)
        # A request's objects (a batch's items, transactions, decisions, answer) are many and acyclic.
        with collection_paused():
            result = super().resolve(event, context)
        size = result_size(result)
        if size > LAMBDA_RESPONSE_LIMIT:
            # The routes keep their answers under the limit (txguard.api.response_size); one that did not would
            # otherwise be Lambda's error. Ours at least says what happened; the log says where.
            logger.error("response over Lambda's limit", extra={"bytes": size, "path": event.get("path")})
            return ApiError(
                500,
                "response_too_large",
                f"the answer would be {size} bytes, over the {LAMBDA_RESPONSE_LIMIT}-byte response limit; ask for "
                "less (a smaller limit, a narrower filter); it has been logged",
            ).as_proxy_response()
        return result


def _route_per_item_mode(event: dict[str, Any]) -> None:
    """POST /store_data?atomic=false goes to the per-item route, whose items are validated one by one (the atomic
    route validates the whole body before its code runs). Any other `atomic` value stays with the atomic route,
    which refuses a value other than true or false by name."""
    query = event.get("queryStringParameters") or {}
    if event.get("httpMethod") != "POST" or event.get("resource") != "/store_data" or query.get("atomic") != "false":
        return
    event["path"] = event["resource"] = PER_ITEM_PATH
    rest = {k: v for k, v in query.items() if k != "atomic"}
    event["queryStringParameters"] = rest or None
    multi = {k: v for k, v in (event.get("multiValueQueryStringParameters") or {}).items() if k != "atomic"}
    event["multiValueQueryStringParameters"] = multi or None


def _check_query(event: dict[str, Any]) -> None:
    """A query parameter given more than once is refused by name: Powertools would keep one of its values. So is
    one given empty (`?cursor=`, `?outcome=`), for every parameter of every route: no parameter gives an empty
    value a meaning, and reading it as absent would answer a question the client did not ask."""
    single = event.get("queryStringParameters") or {}
    empty = sorted(name for name, value in single.items() if isinstance(value, str) and not value.strip())
    if empty:
        raise ApiError(
            422,
            "validation_error",
            f"{len(empty)} query parameter(s) given empty; nothing was done",
            [
                {
                    "index": None,
                    "field": shorten(name),
                    "value": single[name],
                    "reason": "is empty; give a value or leave the parameter out",
                }
                for name in empty[:20]
            ],
        )
    given = event.get("multiValueQueryStringParameters") or {}
    repeated = sorted(name for name, values in given.items() if isinstance(values, list) and len(values) > 1)
    if repeated:
        raise ApiError(
            422,
            "validation_error",
            f"{len(repeated)} query parameter(s) given more than once; nothing was done",
            [
                {
                    "index": None,
                    "field": shorten(name),
                    "value": given[name],
                    "reason": "given more than once; give it once",
                }
                for name in repeated
            ],
        )


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
    if headers.get("content-type") is None:  # API Gateway passes on what the client sent; curl -d sends a form type
        raise ApiError(415, "unsupported_content_type", "the request has no Content-Type; send application/json")
    _check_media_type(headers["content-type"])
    _set_content_type(event, "application/json")  # Powertools compares it case-sensitively
    if event.get("isBase64Encoded"):
        try:
            event["body"] = base64.b64decode(body).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "malformed_json", "the request body is not UTF-8 text") from None
        event["isBase64Encoded"] = False


_JSON_MEDIA_TYPE = re.compile(r"application/(?:json|[a-z0-9!#$&^_.+-]+\+json)\Z")


def _check_media_type(value: str) -> None:
    """JSON is `application/json` or `application/*+json`, compared case-insensitively (RFC 9110), with parameters
    (`name=value`) allowed; a charset, if given, must be UTF-8. Raises ApiError 415 for anything else."""
    media_type, *parameters = value.split(";")
    refusal = None
    if not _JSON_MEDIA_TYPE.match(media_type.strip().lower()):
        refusal = f"content type {shorten(value)!r} is not supported; send application/json"
    for parameter in parameters:
        name, equals, raw = parameter.partition("=")
        if not parameter.strip():
            continue
        if not equals or not name.strip():
            refusal = refusal or f"content type {shorten(value)!r} has a malformed parameter {shorten(parameter)!r}"
        elif name.strip().lower() == "charset" and raw.strip().strip('"').lower() != "utf-8":
            refusal = refusal or f"charset {shorten(raw.strip())!r} is not supported; send UTF-8"
    if refusal:
        raise ApiError(415, "unsupported_content_type", refusal)


def _set_content_type(event: dict[str, Any], value: str) -> None:
    for key in list(event.get("headers") or {}):
        if key.lower() == "content-type":
            event["headers"] = {**event["headers"], key: value}
    for key in list(event.get("multiValueHeaders") or {}):
        if key.lower() == "content-type":
            event["multiValueHeaders"] = {**event["multiValueHeaders"], key: [value]}


def _refuse_unknown_query_parameters(app: APIGatewayRestResolver, next_middleware: NextMiddleware) -> Response[str]:
    """A query parameter the route does not know is refused by name, as unknown body fields are: ignoring it would
    answer a question the client did not ask (`?acount_id=42` listing every account)."""
    route = app.context.get("_route")
    known = {param.alias for param in route.dependant.query_params} if route is not None else set()
    event = app.current_event
    given = {**(event.query_string_parameters or {}), **(event.multi_value_query_string_parameters or {})}
    unknown = sorted(set(given) - known)
    if unknown:
        takes = ", ".join(sorted(known)) or "none"
        raise ApiError(
            422,
            "validation_error",
            f"{len(unknown)} unknown query parameter(s); nothing was done",
            [
                {
                    "index": None,
                    "field": shorten(name),
                    "value": echo(given[name]),
                    "reason": f"unknown query parameter; this route takes: {takes}",
                }
                for name in unknown[:20]
            ],
        )
    return next_middleware(app)


def _batch_key(errors: list[Any]) -> str:
    """The key of the batch ("transactions", "labels", "items", "values") whose items `errors` locate."""
    for error in errors:
        loc = list(error.get("loc", ()))
        for at, part in enumerate(loc[:-1]):
            if part in BATCH_KEYS and isinstance(loc[at + 1], int):
                return str(part)
    return "items"


# Each error category's status, the one place they are mapped for REST; the most specific category wins.
STATUS_BY_CATEGORY: dict[type[TxguardError], int] = {
    Malformed: 400,
    BadInput: 422,
    NotFound: 404,
    Conflict: 409,
    Unavailable: 503,
}


def status_of(error: TxguardError) -> int:
    """The HTTP status of a domain error: its nearest category's (500 for none, which would be a bug)."""
    for cls in type(error).__mro__:
        if cls in STATUS_BY_CATEGORY:
            return STATUS_BY_CATEGORY[cls]
    return 500


def build_resolver(*routers: Router) -> TxguardResolver:
    app = TxguardResolver(enable_validation=True, json_body_deserializer=parse_json)
    for router in routers:
        app.include_router(router)
    app.use(middlewares=[_refuse_unknown_query_parameters])
    _register_error_handlers(app)
    return app


def _register_error_handlers(app: TxguardResolver) -> None:
    @app.exception_handler(RequestValidationError)
    def invalid_request(error: RequestValidationError) -> Response[str]:
        cause = error.__cause__
        metrics.add_metric(name="ValidationErrors", unit=MetricUnit.Count, value=1)
        if isinstance(cause, BodyRejected):
            if cause.found is None:
                return error_response(cause.status, cause.code, cause.msg, cause.details)
            message, reason = not_an_object(cause.found, app.current_event.resource)
            return error_response(cause.status, cause.code, message, [{**cause.details[0], "reason": reason}])
        errors = list(error.errors())
        details = validation_details(errors)
        items = sorted({d["index"] for d in details if d["index"] is not None})
        key = _batch_key(errors)
        message = (
            f"{len(items)} of the {key} are invalid; {_UNDONE.get(key, 'nothing was stored')}"
            if items
            else "the request is invalid"
        )
        logger.info("invalid request", extra={"details": details[:20]})
        return error_response(422, "validation_error", message, details)

    @app.exception_handler(ApiError)
    def refused(error: ApiError) -> Response[str]:
        return error.response()

    @app.exception_handler(TxguardError)
    def domain_error(error: TxguardError) -> Response[str]:
        status = status_of(error)
        if status == 422:
            metrics.add_metric(name="ValidationErrors", unit=MetricUnit.Count, value=1)
        if status == 503:
            logger.warning("dependency unavailable", extra={"code": error.code, "reason": str(error)})
        return error_response(status, error.code, error.message, error.details, error.headers)

    @app.exception_handler(RequestUnsupportedContentType)
    def unsupported(error: RequestUnsupportedContentType) -> Response[str]:
        # _check_media_type refuses these first; this keeps any that slip past it a 415, never a 500.
        return error_response(415, "unsupported_content_type", "send application/json")

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
