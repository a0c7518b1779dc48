"""docs/openapi.json is what the code generates (regenerate with `make openapi`)."""

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ROOT
from txguard.api.app import openapi_json
from txguard.api.openapi import _exact_integer_bounds
from txguard.intake import INT64_MAX, INT64_MIN, TransactionIn


def test_the_committed_openapi_document_matches_the_code() -> None:
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert committed == json.loads(openapi_json()), "docs/openapi.json is stale: run `make openapi`"


def test_the_document_covers_every_route_and_requires_the_api_key() -> None:
    document = json.loads(openapi_json())
    assert set(document["paths"]) == {
        "/store_data",
        "/is_fraud/{account}",
        "/labels",
        "/models",
        "/models/{version}",
        "/rules/{rule_id}/snoozes",
        "/rules/{rule_id}/snoozes/{kind}/{value}",
        "/lists",
        "/lists/{name}",
        "/lists/{name}/items",
        "/lists/{name}/items/{value}",
        "/lists/{name}/removals",
        "/lists/{name}/changes",
    }
    assert set(document["paths"]["/rules/{rule_id}/snoozes"]) == {"get", "post"}
    assert set(document["paths"]["/rules/{rule_id}/snoozes/{kind}/{value}"]) == {"delete"}
    assert set(document["paths"]["/store_data"]) == {"get", "post"}
    assert set(document["paths"]["/lists/{name}"]) == {"get", "patch"}
    assert set(document["paths"]["/labels"]) == {"get", "post"}
    assert document["security"] == [{"apiKey": []}]
    assert document["components"]["securitySchemes"]["apiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "API key",
    }
    post = document["paths"]["/store_data"]["post"]
    assert {"201", "409", "422", "503"} <= set(post["responses"])


def _schemas(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if "type" in node or "anyOf" in node:
            yield node
        for value in node.values():
            yield from _schemas(value)
    elif isinstance(node, list):
        for item in node:
            yield from _schemas(item)


BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def test_every_integer_bound_in_the_committed_document_is_an_exact_integer() -> None:
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
    integer_bounds = [
        (schema.get("title"), key, schema[key])
        for schema in _schemas(committed)
        if schema.get("type") == "integer" or {"type": "integer"} in schema.get("anyOf", [])
        for key in BOUNDS
        if key in schema
    ]
    assert len(integer_bounds) >= 8, integer_bounds
    assert [b for b in integer_bounds if not isinstance(b[2], int)] == []
    assert not any(key in schema for schema in _schemas(committed) for key in ("gt", "ge", "lt", "le"))


def test_the_documented_bounds_are_the_ones_the_api_enforces() -> None:
    document = json.loads(openapi_json())
    body = document["components"]["schemas"]["TransactionIn"]["properties"]
    enforced = TransactionIn.model_json_schema()["properties"]
    for field in ("account_id", "transaction_id"):
        assert {k: body[field].get(k) for k in BOUNDS} == {k: enforced[field].get(k) for k in BOUNDS}
    assert body["account_id"]["maximum"] == INT64_MAX == 2**63 - 1
    assert body["transaction_id"]["minimum"] == INT64_MIN
    parameters = {
        (path, p["name"]): p["schema"]
        for path, item in document["paths"].items()
        for operation in item.values()
        for p in operation.get("parameters", [])
    }
    for key in (("/is_fraud/{account}", "account"), ("/store_data", "account_id")):
        assert (parameters[key]["exclusiveMinimum"], parameters[key]["maximum"]) == (0, INT64_MAX)
    assert (parameters[("/store_data", "limit")]["minimum"], parameters[("/store_data", "limit")]["maximum"]) == (
        1,
        1000,
    )


def test_a_bound_no_float_can_name_is_refused_rather_than_rounded() -> None:
    schema = {"type": "integer", "maximum": float(2**60 + 1)}
    with pytest.raises(ValueError, match="not exact"):
        _exact_integer_bounds(schema)
