"""GET /models and GET /models/{version} through the detect function, fed the sample events: read-only views of
the registry, 404 for an unknown version, 422 for a malformed one, 401 without the API key."""

from __future__ import annotations

import json
from typing import Any

import psycopg2
import pytest

from tests.conftest import Database, load_event, project_template
from tests.integration.test_model_registry import new_model, tiny_artifact
from txguard.models.artifact_store import DirectoryStore
from txguard.storage import models
from txguard_dev.local.runner import FunctionRunner

pytestmark = pytest.mark.integration
KEY = "local-development-key"  # the sample events carry it


class _Out:
    def __init__(self) -> None:
        self.text = ""

    def write_str(self, text: str) -> None:
        self.text += text


def request(runner: FunctionRunner, event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Through the emulator's entry point, API key check included."""
    out = _Out()
    runner.invoke("DetectFunction", json.dumps(event), out)
    response = json.loads(out.text)
    return int(response["statusCode"]), json.loads(response["body"])


@pytest.fixture
def runner(database: Database) -> FunctionRunner:
    return FunctionRunner(project_template(), database_url=database.service_url, api_key=KEY)


def test_the_registry_is_listed_and_shown_and_unknown_versions_are_404(
    database: Database, runner: FunctionRunner, tmp_path: Any
) -> None:
    status, body = request(runner, load_event("models.json"))
    assert (status, body) == (200, {"models": [], "next_before": None})
    status, body = request(runner, load_event("model.json"))  # latest, with nothing registered
    assert status == 404 and body["error"]["code"] == "model_not_found"

    store = DirectoryStore(tmp_path)
    conn = psycopg2.connect(database.service_url)
    try:
        for seed in (1, 2, 3):
            sha = store.put(tiny_artifact(seed=seed))
            with conn, conn.cursor() as cur:
                models.register(cur, new_model(sha, name=f"m{seed}"))
        with conn, conn.cursor() as cur:
            models.promote(cur, 2, store)
    finally:
        conn.close()

    status, body = request(runner, load_event("models.json") | {"queryStringParameters": {"limit": "2"}})
    assert status == 200
    assert [(m["version"], m["status"]) for m in body["models"]] == [(3, "candidate"), (2, "champion")]
    assert body["next_before"] == 2 and body["models"][0]["validation"]["average_precision"] == 0.5
    assert "thresholds" not in body["models"][0]
    status, body = request(runner, load_event("models.json") | {"queryStringParameters": {"before": "2"}})
    assert [m["version"] for m in body["models"]] == [1] and body["next_before"] is None
    status, body = request(runner, load_event("models.json") | {"queryStringParameters": {"status": "champion"}})
    assert [m["version"] for m in body["models"]] == [2]

    status, body = request(runner, load_event("model.json"))
    assert status == 200 and body["version"] == 3 and body["thresholds"][0]["fpr"] == 0.01
    assert body["features"] == ["amount", "count_24h"] and body["metrics"] == {"validation": {"average_precision": 0.5}}
    one = load_event("model.json") | {"path": "/models/2", "pathParameters": {"version": "2"}}
    status, body = request(runner, one)
    assert status == 200 and (body["status"], body["name"]) == ("champion", "m2")

    for version, expected in (("9", 404), ("0", 422), ("two", 422), ("-1", 422), ("99999999999", 422)):
        event = load_event("model.json") | {"path": f"/models/{version}", "pathParameters": {"version": version}}
        status, body = request(runner, event)
        assert status == expected, (version, body)
        assert set(body) == {"error"}
    status, body = request(runner, load_event("models.json") | {"queryStringParameters": {"status": "best"}})
    assert status == 422


def test_without_the_api_key_the_registry_is_401(runner: FunctionRunner) -> None:
    for name in ("models.json", "model.json"):
        event = load_event(name)
        event["headers"] = {k: v for k, v in event["headers"].items() if k.lower() != "x-api-key"}
        event["multiValueHeaders"] = {k: v for k, v in event["multiValueHeaders"].items() if k.lower() != "x-api-key"}
        status, body = request(runner, event)
        assert status == 401 and body["error"]["code"] == "missing_api_key"
