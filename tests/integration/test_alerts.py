"""FraudDetected events reach EventBridge (moto delivering to SQS); a publishing failure loses nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tests.conftest import Database
from tests.integration.helpers import T0, apply_rules, rule, tx
from txguard import alerts, service
from txguard.currencies import money
from txguard.detection import Transaction
from txguard.settings import reload_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        alerts.reset_client()
        yield boto3
    alerts.reset_client()
    reload_settings()


def bus_to_queue(aws: Any, bus: str) -> str:
    events, sqs = aws.client("events"), aws.client("sqs")
    events.create_event_bus(Name=bus)
    queue_url = sqs.create_queue(QueueName="fraud")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="fraud", EventBusName=bus, EventPattern=json.dumps({"detail-type": ["FraudDetected"]}))
    events.put_targets(Rule="fraud", EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
    return str(queue_url)


def test_each_flagged_transaction_publishes_one_fraud_detected_event(
    database: Database, aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_url = bus_to_queue(aws, "txguard-fraud")
    monkeypatch.setenv("TXGUARD_EVENT_BUS_NAME", "txguard-fraud")
    reload_settings()
    apply_rules(database, [rule("big", "amount > 500")])
    service.store([tx(1, T0, "10.00"), tx(1, T0 + 1, "600.00"), tx(2, T0, "700.00")])
    messages = aws.client("sqs").receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
    details = sorted((json.loads(m["Body"])["detail"] for m in messages), key=lambda d: d["account_id"])
    assert [(d["account_id"], d["amount"], d["reasons"][0]["rule_id"]) for d in details] == [
        (1, "600.00", "big"),
        (2, "700.00", "big"),
    ]


def test_a_failure_to_publish_keeps_the_transaction_and_its_decision(
    database: Database, aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TXGUARD_EVENT_BUS_NAME", "no-such-bus")
    reload_settings()
    apply_rules(database, [rule("big", "amount > 500")])
    results = service.store([tx(3, T0, "900.00")])
    assert results[0].decision.fraud
    assert database.query("SELECT account_id, fraud FROM transactions") == [(3, True)]


@pytest.mark.parametrize(
    ("currency", "given", "published"),
    [("BHD", "600.1", "600.100"), ("JPY", "6E+2", "600"), ("EUR", "600.5", "600.50")],
)
def test_the_event_s_amount_and_explanations_have_the_currency_s_decimal_places(
    database: Database, aws: Any, monkeypatch: pytest.MonkeyPatch, currency: str, given: str, published: str
) -> None:
    queue_url = bus_to_queue(aws, "txguard-fraud")
    monkeypatch.setenv("TXGUARD_EVENT_BUS_NAME", "txguard-fraud")
    reload_settings()
    apply_rules(database, [rule("big", "amount > 500 AND amount >= max_amount")])
    first = Transaction(4100, 4, T0, Decimal("1.5"), currency)
    service.store([first, Transaction(4101, 4, T0 + 1, Decimal(given), currency)])
    (message,) = aws.client("sqs").receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
    detail = json.loads(message["Body"])["detail"]
    assert (detail["amount"], detail["currency"]) == (published, currency)
    largest = money(Decimal("1.5"), currency)
    assert detail["reasons"][0]["explanation"] == (
        f"amount {published} is more than 500; amount {published} is at least the largest of the 1 previous amounts "
        f"({largest})"
    )
