"""docs/openapi.json is what the code generates (regenerate with `make openapi`)."""

import json

from tests.conftest import ROOT
from txguard.api.openapi import openapi_json


def test_the_committed_openapi_document_matches_the_code() -> None:
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert committed == json.loads(openapi_json()), "docs/openapi.json is stale: run `make openapi`"


def test_the_document_covers_every_route_and_requires_the_api_key() -> None:
    document = json.loads(openapi_json())
    assert set(document["paths"]) == {"/store_data", "/is_fraud/{account}"}
    assert set(document["paths"]["/store_data"]) == {"get", "post"}
    assert document["security"] == [{"apiKey": []}]
    assert document["components"]["securitySchemes"]["apiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "API key",
    }
    post = document["paths"]["/store_data"]["post"]
    assert {"201", "409", "422", "503"} <= set(post["responses"])
