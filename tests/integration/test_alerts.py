"""FraudDetected events reach EventBridge (moto delivering to SQS); a publishing failure loses nothing."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import boto3
import psycopg2
import pytest
from moto import mock_aws

from tests.conftest import Database, load_event, project_template
from tests.integration.helpers import T0, apply_rules, rule, tx
from txguard import alerts, outbox, service
from txguard.currencies import money
from txguard.db import DatabaseUnavailable, run_in_transaction
from txguard.domain import Transaction
from txguard.settings import reload_settings
from txguard_dev.local.runner import FunctionRunner

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


@pytest.fixture(autouse=True)
def publishing_resumed() -> Iterator[None]:
    """No test inherits the pause a failed publish in an earlier test started."""
    outbox.resume()
    yield
    outbox.resume()


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


def test_only_blocked_transactions_publish_an_event_which_carries_the_outcome_and_review_publishes_none(
    database: Database, aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_url = bus_to_queue(aws, "txguard-fraud")
    monkeypatch.setenv("TXGUARD_EVENT_BUS_NAME", "txguard-fraud")
    reload_settings()
    apply_rules(
        database,
        [rule("big", "amount > 500", "0.5"), rule("huge", "amount > 5000", None, action="block")],
        threshold="0.9",
        review_threshold="0.5",
    )
    results = service.store([tx(5, T0, "600.00"), tx(6, T0, "6000.00")])
    assert [r.decision.outcome for r in results] == ["review", "block"]
    messages = aws.client("sqs").receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
    details = [json.loads(m["Body"])["detail"] for m in messages]
    assert [(d["account_id"], d["outcome"]) for d in details] == [(6, "block")]


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


# ------------------------------------------------------------------ the outbox: at least once, in time ----


@pytest.fixture
def fraud_bus(database: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A bus is configured, every transaction over 500 is flagged, and no earlier failure paused publishing."""
    monkeypatch.setenv("TXGUARD_EVENT_BUS_NAME", "txguard-fraud")
    reload_settings()
    apply_rules(database, [rule("big", "amount > 500")])
    yield
    reload_settings()


@pytest.fixture
def silent_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[socket.socket]]:
    """EventBridge at an address that accepts connections and never answers; yields the connections made."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(server.accept()[0])  # held open, never read from or answered

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_EVENTBRIDGE", url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    alerts.reset_client()
    try:
        yield accepted
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()
        alerts.reset_client()


def pending(database: Database) -> list[tuple[int, int]]:
    return database.query("SELECT transaction_id, attempts FROM alert_outbox ORDER BY transaction_id")


def lease_expires(database: Database) -> None:
    """What the passing of LEASE_BASE_S seconds does: every outbox row is due again."""
    database.execute("UPDATE alert_outbox SET next_attempt_at = clock_timestamp() - interval '1 second'")


def delivered(aws: Any, queue_url: str) -> list[int]:
    messages = aws.client("sqs").receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
    return sorted(json.loads(m["Body"])["detail"]["transaction_id"] for m in messages)


def scheduled_drain(database: Database) -> dict[str, Any]:
    runner = FunctionRunner(project_template(), database_url=database.service_url)
    result = runner.call("IngestFunction", load_event("scheduled.json"))
    assert not result.failed, result.output
    answer: dict[str, Any] = json.loads(result.output)
    return answer


@pytest.mark.usefixtures("fraud_bus")
def test_an_alert_is_committed_with_its_transaction_and_removed_once_published(database: Database, aws: Any) -> None:
    queue_url = bus_to_queue(aws, "txguard-fraud")
    seen: list[list[tuple[Any, ...]]] = []
    real = alerts.put_fraud_detected

    def observed(details: Any) -> list[bool]:  # the alert was committed before anything is published
        seen.append(database.query("SELECT transaction_id FROM alert_outbox"))
        return real(details)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(alerts, "put_fraud_detected", observed)
        service.store([tx(5, T0, "900.00", tid=501), tx(5, T0 + 1, "10.00", tid=502)])
    assert seen == [[(501,)]]
    assert delivered(aws, queue_url) == [501]
    assert pending(database) == []


@pytest.mark.usefixtures("fraud_bus")
def test_an_eventbridge_that_never_answers_costs_one_bounded_call_and_a_later_drain_publishes(
    database: Database, silent_endpoint: list[socket.socket], aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = FunctionRunner(project_template(), database_url=database.service_url)
    event = load_event("store_data.json")
    event["body"] = json.dumps({"account_id": 7, "transaction_id": 701, "timestamp": T0, "amount": "900.00"})
    started = time.monotonic()
    result = runner.call("IngestFunction", event)
    took = time.monotonic() - started
    assert json.loads(result.output)["statusCode"] == 201
    # One PutEvents call, cut off by the client's own timeouts (boto3's defaults waited 60 s, and retried).
    assert len(silent_endpoint) == 1
    assert took < alerts.CALL_BOUND_MS / 1000 + 3, f"answered after {took:.1f} s"
    assert pending(database) == [(701, 1)]

    # A later request while EventBridge is still silent: publishing is paused, no call is made.
    event["body"] = json.dumps({"account_id": 7, "transaction_id": 702, "timestamp": T0 + 1, "amount": "950.00"})
    assert json.loads(runner.call("IngestFunction", event).output)["statusCode"] == 201
    assert len(silent_endpoint) == 1
    assert pending(database) == [(701, 1), (702, 0)]

    # EventBridge answers again (moto): the scheduled drain publishes both, 701 once its lease has run out.
    monkeypatch.delenv("AWS_ENDPOINT_URL_EVENTBRIDGE")
    alerts.reset_client()
    queue_url = bus_to_queue(aws, "txguard-fraud")
    assert scheduled_drain(database) == {"published": 1, "failed": 0, "left": 0}
    assert delivered(aws, queue_url) == [702]
    lease_expires(database)
    assert scheduled_drain(database) == {"published": 1, "failed": 0, "left": 0}
    assert delivered(aws, queue_url) == [701]
    assert pending(database) == []


@pytest.mark.usefixtures("fraud_bus")
def test_an_alert_whose_commit_acknowledgement_was_lost_is_published_by_a_later_drain(
    database: Database, aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_url = bus_to_queue(aws, "txguard-fraud")
    real = service.run_in_transaction

    def committed_then_connection_lost(work: Any) -> Any:
        real(work)
        raise DatabaseUnavailable("lost the database connection: server closed the connection unexpectedly")

    monkeypatch.setattr(service, "run_in_transaction", committed_then_connection_lost)
    with pytest.raises(DatabaseUnavailable):
        service.store([tx(9, T0, "900.00", tid=901)])
    monkeypatch.setattr(service, "run_in_transaction", real)

    # The client retries: the transaction is a duplicate, and nothing new is enqueued for it.
    assert [r.status for r in service.store([tx(9, T0, "900.00", tid=901)])] == ["duplicate"]
    assert delivered(aws, queue_url) == []
    lease_expires(database)  # the lost call had claimed its alert
    assert scheduled_drain(database)["published"] == 1
    assert delivered(aws, queue_url) == [901]
    assert pending(database) == []


@pytest.mark.usefixtures("fraud_bus")
def test_a_drain_stops_when_the_invocation_has_no_time_left(database: Database, aws: Any) -> None:
    bus_to_queue(aws, "txguard-fraud")
    database.execute("""INSERT INTO alert_outbox (transaction_id, detail) VALUES (11, '{"transaction_id": 11}')""")
    assert outbox.drain(lambda: outbox.RESERVE_MS + alerts.CALL_BOUND_MS - 1) == outbox.DrainResult(0, 0, 0)
    assert pending(database) == [(11, 0)]
    assert outbox.drain(lambda: 20_000) == outbox.DrainResult(1, 0, 0)


@pytest.mark.usefixtures("fraud_bus")
def test_concurrent_drains_never_claim_the_same_alert(database: Database) -> None:
    database.execute("""INSERT INTO alert_outbox (transaction_id, detail) VALUES (21, '{"transaction_id": 21}')""")
    first = psycopg2.connect(database.service_url)
    try:
        with first.cursor() as cur:  # the first drain holds its claim, not yet committed
            assert [c.id for c in outbox.enqueue(cur, [])] != []
            second = run_in_transaction(lambda cur: outbox.enqueue(cur, []))
            assert second == []
        first.commit()
    finally:
        first.close()
    assert run_in_transaction(lambda cur: outbox.enqueue(cur, [])) == []  # leased now
