"""The API as a whole: every router, which function serves which, and the OpenAPI document of them all.

Each function builds only its own resolver and imports only its own routes, when its first request comes (the
cold start pays for nothing else); the document is built from every router, so it cannot miss a route a function
serves.
"""

from __future__ import annotations

import gc
from functools import cache
from typing import Any

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router

from txguard.api.resolver import TxguardResolver, build_resolver
from txguard.outbox import drain_alerts, is_scheduled_event

docs_router = Router()


@docs_router.get("/openapi.json", summary="This API's OpenAPI 3 document", include_in_schema=False)
def openapi_route() -> Response[str]:
    return Response(status_code=200, content_type=content_types.APPLICATION_JSON, body=openapi_json())


@cache
def ingest_api() -> TxguardResolver:
    """POST /store_data, GET /store_data, POST /labels, GET /labels and /rules/{rule_id}/snoozes: IngestFunction's
    routes."""
    from txguard.api import ingest_routes, label_routes, snooze_routes

    return build_resolver(ingest_routes.router, label_routes.router, snooze_routes.router)


@cache
def detect_api() -> TxguardResolver:
    """GET /is_fraud/{account}, GET /models, GET /models/{version} and GET /openapi.json: DetectFunction's
    routes."""
    from txguard.api import detect_routes, model_routes

    return build_resolver(detect_routes.router, model_routes.router, docs_router)


@cache
def lists_api() -> TxguardResolver:
    """/lists and /lists/{name}/...: ListsFunction's routes."""
    from txguard.api import list_routes

    return build_resolver(list_routes.router)


@cache
def openapi_json() -> str:
    """The OpenAPI 3 document (JSON text) of every route of every function."""
    from txguard.api import detect_routes, ingest_routes, label_routes, list_routes, model_routes, snooze_routes
    from txguard.api.openapi import openapi_document

    return openapi_document(
        build_resolver(
            ingest_routes.router,
            label_routes.router,
            snooze_routes.router,
            detect_routes.router,
            model_routes.router,
            list_routes.router,
            docs_router,
        )
    )


_warm = False


def _freeze_what_the_first_request_built() -> None:
    """Move every object alive after the execution environment's first request (modules, the resolver and its
    schemas, the connection, the detector) to the collector's permanent generation, once: a full collection then
    walks only what later requests left, not the ~170,000 objects of a warm function (one took 0.4 s here under
    load, landing on one single POST in about a thousand). The price, paid once: a frozen object that later
    becomes part of unreachable cycles (the first detector, once the cache replaces it) is freed by reference
    counting only, never by the collector."""
    global _warm
    if not _warm:
        _warm = True
        gc.freeze()


def serve_ingest(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """IngestFunction: an API Gateway request, or on the DrainAlerts schedule a drain of the alert outbox
    (returns its counts; raises DatabaseUnavailable so that the schedule retries)."""
    try:
        if is_scheduled_event(event):
            return drain_alerts(context)
        return ingest_api().resolve(event, context)
    finally:
        _freeze_what_the_first_request_built()


def serve_detect(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """DetectFunction: an API Gateway request."""
    try:
        return detect_api().resolve(event, context)
    finally:
        _freeze_what_the_first_request_built()


def serve_lists(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """ListsFunction: an API Gateway request."""
    try:
        return lists_api().resolve(event, context)
    finally:
        _freeze_what_the_first_request_built()
