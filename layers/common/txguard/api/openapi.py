"""The OpenAPI 3 document generated from a resolver's routes and pydantic models (api/app.py gives the whole API's)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from txguard import __version__
from txguard.intake import INT64_MAX, INT64_MIN

if TYPE_CHECKING:
    from txguard.api.resolver import TxguardResolver

_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
# Powertools' Schema model holds bounds as floats, and float(2**63 - 1) is 2**63: a bound the API refuses. These are
# the integer bounds the routes and models use past 2**53, where a float no longer names one integer.
_EXACT = {float(bound): bound for bound in (INT64_MIN, INT64_MAX)}


def openapi_document(resolver: TxguardResolver) -> str:
    """The OpenAPI 3 document (JSON text) of `resolver`'s routes, integer bounds exact. Raises ValueError for a
    bound that would be rounded."""
    from aws_lambda_powertools.event_handler.openapi.models import APIKey, APIKeyIn  # not on a cold start's path

    generated = resolver.get_openapi_json_schema(
        title="txguard",
        version=__version__,
        description=(
            "Transaction fraud detection: store transactions (each decided when stored, with a score and the "
            "reasons), and ask which of an account's transactions are fraud. Every error has the shape "
            '{"error": {"code", "message", "details": [{"index", "field", "value", "reason"}]}}. A query '
            "parameter given empty (`?cursor=`) is refused with a 422 naming it, on every route: leave it out instead."
        ),
        security_schemes={"apiKey": APIKey(name="x-api-key", in_=APIKeyIn.header, description="API key")},
        security=[{"apiKey": []}],
    )
    document = json.loads(generated)
    for path in document["paths"].values():
        for operation in path.values():
            for parameter in operation.get("parameters", []):
                _json_schema_bounds(parameter["schema"])
    _exact_integer_bounds(document)
    return json.dumps(document, indent=2, ensure_ascii=False)


# A parameter annotated with a validator besides Query()/Path() gets pydantic's constraint names in its schema.
_CONSTRAINTS = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum", "le": "maximum"}


def _json_schema_bounds(schema: dict[str, Any]) -> None:
    """A parameter schema's `gt`/`ge`/`lt`/`le` renamed to the JSON Schema keywords (in place)."""
    for constraint, keyword in _CONSTRAINTS.items():
        if constraint in schema:
            schema[keyword] = schema.pop(constraint)


def _exact_integer_bounds(node: Any) -> None:
    """Every bound of an integer schema written as an exact JSON integer, and a number schema's whole bounds too
    (in place). Raises ValueError for an integer schema's float bound that names no single integer, so a new one
    cannot slip into the document rounded."""
    if isinstance(node, list):
        for item in node:
            _exact_integer_bounds(item)
    elif isinstance(node, dict):
        if node.get("type") in ("integer", "number"):
            for key in _BOUNDS:
                bound = node.get(key)
                if isinstance(bound, float) and (node["type"] == "integer" or bound.is_integer()):
                    node[key] = _exact_integer(bound)
        for value in node.values():
            _exact_integer_bounds(value)


def _exact_integer(bound: float) -> int:
    if bound in _EXACT:
        return _EXACT[bound]
    if bound.is_integer() and abs(bound) <= 2**53:
        return int(bound)
    raise ValueError(f"integer bound {bound!r} is not exact; add it to _EXACT")
