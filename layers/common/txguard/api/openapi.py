"""The OpenAPI 3 document of the whole API, generated from the routes and pydantic models."""

from __future__ import annotations

from functools import cache

from txguard import __version__


@cache
def openapi_json() -> str:
    from aws_lambda_powertools.event_handler.openapi.models import APIKey, APIKeyIn

    from txguard.api import detect_routes, ingest_routes
    from txguard.api.resolver import build_resolver

    whole = build_resolver(ingest_routes.router, detect_routes.router)
    return whole.get_openapi_json_schema(
        title="txguard",
        version=__version__,
        description=(
            "Transaction fraud detection: store transactions (each decided when stored, with a score and the "
            "reasons), and ask which of an account's transactions are fraud. Every error has the shape "
            '{"error": {"code", "message", "details": [{"index", "field", "value", "reason"}]}}.'
        ),
        security_schemes={"apiKey": APIKey(name="x-api-key", in_=APIKeyIn.header, description="API key")},
        security=[{"apiKey": []}],
    )
