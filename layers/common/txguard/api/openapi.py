"""The OpenAPI 3 document of the whole API, generated from the routes and pydantic models."""

from __future__ import annotations

from functools import cache

from txguard import __version__


@cache
def openapi_json() -> str:
    from txguard.api import detect_routes, ingest_routes
    from txguard.api.resolver import build_resolver

    whole = build_resolver(ingest_routes.router, detect_routes.router)
    return whole.get_openapi_json_schema(
        title="txguard",
        version=__version__,
        description="Transaction fraud detection: store transactions, ask which are fraud.",
    )
