"""The functions as Lambda runs them, fed the sample events in events/: responses, metrics and log lines."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ROOT, Database, load_event, project_template
from tests.integration.helpers import apply_rules, rule
from txguard.observability import metrics
from txguard_dev.local.runner import FunctionRunner

pytestmark = pytest.mark.integration


@pytest.fixture
def runner(database: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[FunctionRunner]:
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    metrics.clear_metrics()  # what earlier tests' direct calls buffered is not this function's
    yield FunctionRunner(project_template(), database_url=database.service_url)


def invoke(runner: FunctionRunner, function: str, event: dict[str, Any]) -> dict[str, Any]:
    result = runner.call(function, event)
    assert not result.failed, result.output
    response: dict[str, Any] = json.loads(result.output)
    return response


def emitted(out: str) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metric totals (CloudWatch embedded metric format) and structured log lines printed by the function."""
    metrics: dict[str, float] = {}
    logs = []
    for line in out.splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if "_aws" in record:
            for definition in record["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
                values = record[definition["Name"]]
                metrics[definition["Name"]] = metrics.get(definition["Name"], 0) + sum(
                    values if isinstance(values, list) else [values]
                )
        elif "level" in record:
            logs.append(record)
    return metrics, logs


def test_the_sample_store_event_stores_and_emits_metrics_and_correlated_logs(
    runner: FunctionRunner, database: Database, capsys: pytest.CaptureFixture[str], log_lines: io.StringIO
) -> None:
    event = load_event("store_data.json")
    response = invoke(runner, "IngestFunction", event)
    assert response["statusCode"] == 201
    body = json.loads(response["body"])
    assert body["results"][0]["status"] == "stored"
    assert database.query("SELECT account_id, amount::text FROM transactions") == [(42, "129.9000")]
    metrics, _ = emitted(capsys.readouterr().out)
    _, logs = emitted(log_lines.getvalue())
    assert metrics["TransactionsStored"] == 1 and metrics["DuplicateTransactions"] == 0
    assert "FraudDetected" in metrics
    assert logs, "the function logged nothing"
    for line in logs:
        assert line["correlation_id"] == event["requestContext"]["requestId"]
        assert line["account_id"] == 42


def test_the_sample_batch_then_its_replay_counts_duplicates(
    runner: FunctionRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    event = load_event("store_data_batch.json")
    assert invoke(runner, "IngestFunction", event)["statusCode"] == 201
    capsys.readouterr()
    replay = json.loads(invoke(runner, "IngestFunction", event)["body"])
    assert {r["status"] for r in replay["results"]} == {"duplicate"}
    metrics, _ = emitted(capsys.readouterr().out)
    assert metrics["TransactionsStored"] == 0 and metrics["DuplicateTransactions"] == 4


def test_the_sample_invalid_event_is_422_counts_a_validation_error_and_stores_nothing(
    runner: FunctionRunner, database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    response = invoke(runner, "IngestFunction", load_event("store_data_invalid.json"))
    assert response["statusCode"] == 422
    details = json.loads(response["body"])["error"]["details"]
    assert {(d["index"], d["field"]) for d in details} >= {(1, "account_id"), (1, "colour"), (2, "timestamp")}
    assert database.query("SELECT count(*) FROM transactions") == [(0,)]
    metrics, _ = emitted(capsys.readouterr().out)
    assert metrics["ValidationErrors"] == 1


def with_query(event: dict[str, Any], **parameters: str) -> dict[str, Any]:
    return {
        **event,
        "queryStringParameters": parameters,
        "multiValueQueryStringParameters": {name: [value] for name, value in parameters.items()},
    }


def test_the_compact_form_answers_each_transaction_s_id_status_outcome_and_score_only(
    runner: FunctionRunner, database: Database
) -> None:
    event = load_event("store_data_batch.json")
    compact = invoke(runner, "IngestFunction", with_query(event, response="decisions"))
    assert compact["statusCode"] == 201
    results = json.loads(compact["body"])["results"]
    full = json.loads(invoke(runner, "IngestFunction", event)["body"])["results"]  # the replay, in full
    assert [set(r) for r in results] == [{"transaction_id", "status", "outcome", "score"}] * len(full)
    assert [(r["transaction_id"], r["status"]) for r in results] == [(r["transaction_id"], "stored") for r in full]
    assert [(r["outcome"], r["score"]) for r in results] == [
        (r["decision"]["outcome"], r["decision"]["score"]) for r in full
    ]
    assert database.query("SELECT count(*) FROM transactions") == [(len(full),)]


def test_an_unknown_response_form_is_422_naming_the_parameter_and_stores_nothing(
    runner: FunctionRunner, database: Database
) -> None:
    response = invoke(runner, "IngestFunction", with_query(load_event("store_data_batch.json"), response="short"))
    assert response["statusCode"] == 422
    details = json.loads(response["body"])["error"]["details"]
    assert [(d["field"], d["value"]) for d in details] == [("response", "short")]
    assert "decisions" in details[0]["reason"]
    assert database.query("SELECT count(*) FROM transactions") == [(0,)]


def test_the_sample_list_and_is_fraud_events_read_what_was_stored(runner: FunctionRunner) -> None:
    invoke(runner, "IngestFunction", load_event("store_data_batch.json"))
    listing = json.loads(invoke(runner, "IngestFunction", load_event("store_data_list.json"))["body"])
    assert [t["transaction_id"] for t in listing["transactions"]] == [9101, 9102, 9103]
    answer = invoke(runner, "DetectFunction", load_event("is_fraud.json"))
    assert answer["statusCode"] == 200
    body = json.loads(answer["body"])
    assert body["account_id"] == 42 and isinstance(body["fraud"], bool)
    flagged = {t["transaction_id"] for t in listing["transactions"] if t["decision"]["fraud"]}
    assert {e["transaction_id"] for e in body["events"]} == flagged


def test_an_unreachable_database_is_a_503_with_retry_after(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    closed = FunctionRunner(project_template(), database_url="postgresql://nobody@127.0.0.1:1/none")
    from txguard import db

    db.reset_connection()
    response = invoke(closed, "IngestFunction", load_event("store_data.json"))
    assert response["statusCode"] == 503
    assert response["multiValueHeaders"]["Retry-After"] == ["2"]
    assert json.loads(response["body"])["error"]["code"] == "database_unavailable"
    db.reset_connection()


def test_the_sample_openapi_event_returns_the_committed_document(runner: FunctionRunner) -> None:
    response = invoke(runner, "DetectFunction", load_event("openapi.json"))
    assert response["statusCode"] == 200
    assert json.loads(response["body"]) == json.loads((ROOT / "docs" / "openapi.json").read_text())


@pytest.mark.parametrize(
    ("currency", "amounts", "shown", "explanation"),
    [
        (
            "BHD",
            ["0.125"] * 5 + ["0.004"],
            "0.004",
            "amount 0.004 is less than 0.9 × the mean of the 5 previous transactions (0.125)",
        ),
        (
            "JPY",
            ["1200.0", 1201, 900],
            "900",
            "amount 900 is less than 0.9 × the mean of the 2 previous transactions (1201)",
        ),
        (
            "EUR",
            ["10.00", "10.05", 7.1],
            "7.10",
            "amount 7.10 is less than 0.9 × the mean of the 2 previous transactions (10.03)",
        ),
    ],
)
def test_amounts_in_responses_and_explanations_have_the_currency_s_decimal_places(
    runner: FunctionRunner, database: Database, currency: str, amounts: list[object], shown: str, explanation: str
) -> None:
    apply_rules(database, [rule("below_mean", "amount < 0.9 * mean_amount")])
    batch = [
        {"account_id": 77, "transaction_id": 7700 + i, "timestamp": 1714564800000 + i * 1000, "amount": amount}
        | {"currency": currency}
        for i, amount in enumerate(amounts)
    ]
    stored = invoke(
        runner, "IngestFunction", load_event("store_data.json") | {"body": json.dumps({"transactions": batch})}
    )
    last = json.loads(stored["body"])["results"][-1]
    assert last["transaction"]["amount"] == shown
    assert [r["explanation"] for r in last["decision"]["reasons"]] == [explanation]
    event = load_event("is_fraud.json") | {"path": "/is_fraud/77", "pathParameters": {"account": "77"}}
    (flagged,) = json.loads(invoke(runner, "DetectFunction", event)["body"])["events"]
    assert flagged["amount"] == shown and [r["explanation"] for r in flagged["reasons"]] == [explanation]


def test_is_fraud_shows_the_features_each_decision_was_taken_on_when_asked(
    runner: FunctionRunner, database: Database
) -> None:
    # Given a rule on the 30-day mean and night time, and three transactions of one account
    apply_rules(database, [rule("night_spike", "amount > 2 * mean_amount_30d AND is_night = 1")])
    night = 1714532400000  # 2024-05-01 03:00 UTC
    batch = [
        {"account_id": 78, "transaction_id": 7800 + i, "timestamp": night + i * 60_000, "amount": amount}
        | {"currency": "EUR", "merchant_id": "m78"}
        for i, amount in enumerate(["10.00", "20.00", "100.00"])
    ]
    invoke(runner, "IngestFunction", load_event("store_data.json") | {"body": json.dumps({"transactions": batch})})
    event = load_event("is_fraud.json") | {"path": "/is_fraud/78", "pathParameters": {"account": "78"}}

    # When the flagged ones are read with features=true, then each shows exactly the values its rule read
    asked = event | {"queryStringParameters": {"features": "true"}}
    (flagged,) = json.loads(invoke(runner, "DetectFunction", asked)["body"])["events"]
    assert flagged["transaction_id"] == 7802
    assert flagged["features"] == {"amount": 100.0, "count": 2, "is_night": 1, "mean_amount_30d": 15.0}

    # Without it, no features; a value other than true/false is refused naming the parameter
    (plain,) = json.loads(invoke(runner, "DetectFunction", event)["body"])["events"]
    assert "features" not in plain
    refused = invoke(runner, "DetectFunction", event | {"queryStringParameters": {"features": "yes"}})
    assert refused["statusCode"] == 422 and "features" in refused["body"]
