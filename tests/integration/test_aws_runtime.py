"""The handlers as they run in AWS: the layer as `sam build` builds it, tracing on, X-Ray receiving traces.

Locally Powertools turns tracing off (no LAMBDA_TASK_ROOT, or AWS_SAM_LOCAL), so every other test runs
without the X-Ray SDK patching anything. Here a process of its own runs the handlers with tracing on,
its X-Ray daemon a UDP socket, and reports the responses and every trace entity the SDK sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EVENTS_DIR, ROOT, Database, load_event
from tests.template.build import built

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).with_name("lambda_as_in_aws.py")


@pytest.fixture(scope="session")
def built_layer() -> Path:
    """The CommonLayer as `sam build` builds it (`make template-checks` does; built here when stale)."""
    return built() / "CommonLayer" / "python"


def run_as_in_aws(layer: Path, database: Database, calls: list[tuple[str, Path]]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_", "TXGUARD_"))}
    env.update(DATABASE_URL=database.service_url, POWERTOOLS_METRICS_DISABLED="true")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(layer), json.dumps([[str(ROOT / d), str(e)] for d, e in calls])],
        env=env, capture_output=True, text=True, timeout=120, cwd="/",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


@pytest.fixture
def conflicting_store_event(tmp_path: Path) -> Path:
    """The sample transaction's id again, with another amount: a 409 raised through the traced service."""
    event = load_event("store_data.json")
    body = json.loads(event["body"])
    event["body"] = json.dumps({**body, "amount": "130.00"})
    path = tmp_path / "conflict.json"
    path.write_text(json.dumps(event))
    return path


@pytest.fixture
def report(built_layer: Path, database: Database, conflicting_store_event: Path) -> dict[str, Any]:
    """POST the sample transaction, POST its id again with other content, GET the account: as in AWS."""
    return run_as_in_aws(
        built_layer,
        database,
        [
            ("functions/ingest", EVENTS_DIR / "store_data.json"),
            ("functions/ingest", conflicting_store_event),
            ("functions/detect", EVENTS_DIR / "is_fraud.json"),
        ],
    )


def test_the_handlers_answer_with_tracing_on_and_the_built_layer(
    report: dict[str, Any], built_layer: Path, database: Database
) -> None:
    assert [r["statusCode"] for r in report["responses"]] == [201, 409, 200], report["responses"]
    assert report["modules"]["txguard"].startswith(str(built_layer))
    assert report["modules"]["psycopg2"].startswith(str(built_layer))
    stored = json.loads(load_event("store_data.json")["body"])
    assert database.query("SELECT transaction_id FROM transactions") == [(stored["transaction_id"],)]


def test_traces_carry_no_transaction_data_neither_responses_nor_error_messages(report: dict[str, Any]) -> None:
    entities = [json.loads(line) for line in report["segments"]]
    names = {e["name"] for e in entities}
    # The decorators did record: the absence of data below is not the absence of traces.
    assert {"## lambda_handler", "## txguard.service.store", "## txguard.db.run_in_transaction"} <= names
    assert "## txguard.service.account_view" in names
    recorded_errors = [x for e in entities if isinstance(e.get("cause"), dict) for x in e["cause"]["exceptions"]]
    assert [x["type"] for x in recorded_errors] == ["DuplicateIdConflict"]  # the 409, by type and stack only
    assert all("message" not in x for x in recorded_errors)
    for entity in entities:
        for namespace in entity.get("metadata", {}).values():
            assert not [k for k in namespace if k.endswith((" response", " error"))], entity
    stored = json.loads(load_event("store_data.json")["body"])
    text = "\n".join(report["segments"])
    tid = stored["transaction_id"]
    for value in (stored["merchant_id"], str(stored["amount"]), "130.00", f'"transaction_id": {tid}'):
        assert value not in text
