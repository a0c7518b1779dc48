"""StreamIngestFunction as Lambda runs it, fed the sample events in events/ (sqs.json, kinesis.json, kafka.json):
the exact batchItemFailures, what is stored, and what lands in the dead-letter queue (moto)."""

from __future__ import annotations

import base64
import copy
import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import psycopg2
import pytest
from moto import mock_aws

from tests.conftest import Database, load_event, project_template
from txguard import db, service, stream
from txguard_dev.local.runner import FunctionRunner

pytestmark = pytest.mark.integration

# events/*.json hold the same four transactions: 9001 (account 1), 9002 (account 2, a negative amount: invalid),
# 9003 (account 3), 9004 (account 1, a minute after 9001).
SQS_IDS = [f"0b6a5f6e-0000-4000-8000-00000000000{i}" for i in range(1, 5)]
KINESIS_SEQ = [f"4959033345345434534545345345345345345345345345345345{i:04d}" for i in range(1, 5)]


@pytest.fixture
def dlq(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A FIFO dead-letter queue and a standard failure queue in moto, named in the function's environment."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        fifo = sqs.create_queue(QueueName="dlq.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
        failures = sqs.create_queue(QueueName="stream-failures")["QueueUrl"]
        monkeypatch.setenv("TXGUARD_STREAM_DLQ_URL", fifo)
        monkeypatch.setenv("TXGUARD_STREAM_FAILURE_QUEUE_URL", failures)
        stream.reset_client()
        yield sqs
        stream.reset_client()


@pytest.fixture
def runner(database: Database, monkeypatch: pytest.MonkeyPatch) -> FunctionRunner:
    monkeypatch.setenv("TXGUARD_LOCK_TIMEOUT_MS", "200")  # a held account lock fails fast
    db.reset_connection()
    return FunctionRunner(project_template(), database_url=database.service_url)


def invoke(runner: FunctionRunner, event: dict[str, Any]) -> list[Any]:
    result = runner.call("StreamIngestFunction", event)
    assert not result.failed, result.output
    failures: list[Any] = result.payload["batchItemFailures"]
    return failures


def dead_letters(sqs: Any, url: str) -> list[dict[str, Any]]:
    """Every message in the queue: body, error code and the error (parsed)."""
    found = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"])
        messages = got.get("Messages", [])
        if not messages:
            return found
        for m in messages:
            attributes = m["MessageAttributes"]
            try:
                body = json.loads(m["Body"])
            except ValueError:
                body = m["Body"]
            found.append(
                {
                    "body": body,
                    "code": attributes["error_code"]["StringValue"],
                    "error": json.loads(attributes["error"]["StringValue"]),
                    "source_id": attributes["source_id"]["StringValue"],
                }
            )
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


def stored(database: Database) -> list[tuple[int, int]]:
    """(transaction_id, decisions) of every stored transaction."""
    return database.query("SELECT transaction_id, count(*) FROM transactions GROUP BY transaction_id ORDER BY 1")


@contextmanager
def account_locked(database: Database, account_id: int) -> Iterator[None]:
    """Another connection holds the account's running totals locked, as a long concurrent writer would."""
    conn = psycopg2.connect(database.admin_url)
    try:
        cur = conn.cursor()
        cur.execute("INSERT INTO account_stats (account_id) VALUES (%s) ON CONFLICT DO NOTHING", (account_id,))
        cur.execute("SELECT 1 FROM account_stats WHERE account_id = %s FOR UPDATE", (account_id,))
        yield
    finally:
        conn.rollback()
        conn.close()


def test_a_fifo_batch_stores_the_valid_messages_and_dead_letters_the_invalid_one_with_its_reason(
    runner: FunctionRunner, database: Database, dlq: Any
) -> None:
    assert invoke(runner, load_event("sqs.json")) == []
    assert stored(database) == [(9001, 1), (9003, 1), (9004, 1)]
    (letter,) = dead_letters(dlq, dlq.get_queue_url(QueueName="dlq.fifo")["QueueUrl"])
    assert letter["body"]["transaction_id"] == 9002
    assert letter["code"] == "validation_error" and letter["source_id"] == SQS_IDS[1]
    assert letter["error"]["error"]["details"] == [
        {"index": None, "field": "amount", "value": "-5.00", "reason": "amount must not be negative"}
    ]


def test_a_card_number_sent_as_a_json_integer_is_masked_in_the_dead_letters_error_and_the_log(
    runner: FunctionRunner, database: Database, dlq: Any, log_lines: io.StringIO
) -> None:
    event = copy.deepcopy(load_event("sqs.json"))
    record = event["Records"][1]
    record["body"] = json.dumps({**json.loads(record["body"]), "amount": "5.00", "card_id": 4111111111111111})
    assert invoke(runner, event) == []
    (letter,) = dead_letters(dlq, dlq.get_queue_url(QueueName="dlq.fifo")["QueueUrl"])
    assert letter["error"]["error"]["details"][0]["value"] == "411111******1111"
    logged = log_lines.getvalue()
    assert "message refused" in logged and "411111******1111" in logged and "4111111111111111" not in logged


def test_a_mixed_batch_reports_exactly_the_retryable_record_and_dead_letters_the_invalid_one(
    runner: FunctionRunner, database: Database, dlq: Any
) -> None:
    with account_locked(database, 3):
        failures = invoke(runner, load_event("sqs.json"))
    assert failures == [{"itemIdentifier": SQS_IDS[2]}]  # account 3 busy: retried; account 2 invalid: not retried
    assert stored(database) == [(9001, 1), (9004, 1)]
    assert [
        d["body"]["transaction_id"] for d in dead_letters(dlq, dlq.get_queue_url(QueueName="dlq.fifo")["QueueUrl"])
    ] == [9002]
    # The source delivers the whole batch again (at least once): the retried one is stored, the rest are duplicates.
    assert invoke(runner, load_event("sqs.json")) == []
    assert stored(database) == [(9001, 1), (9003, 1), (9004, 1)]


def holding(database: Database, holder: Any) -> Any:
    """When the transaction open on `holder` (and so its locks) began, or None when none is open."""
    rows = database.query(
        "SELECT xact_start FROM pg_stat_activity WHERE pid = %s AND state = 'idle in transaction'",
        (holder.get_backend_pid(),),
    )
    return rows[0][0] if rows else None


def fifo_batch(transactions: list[tuple[int, int]]) -> dict[str, Any]:
    """An SQS FIFO batch (the shape of events/sqs.json) of (account, transaction id), one a second, in that order;
    message ids m-<transaction id>, message group = account."""
    template = load_event("sqs.json")["Records"][0]
    records = []
    for n, (account, tid) in enumerate(transactions):
        record = copy.deepcopy(template)
        body = {"account_id": account, "transaction_id": tid, "timestamp": 1_714_564_800_000 + n * 1000}
        record["body"] = json.dumps(body | {"amount": f"{10 + n}.00", "merchant_id": f"m-{n}"})
        record["messageId"] = f"m-{tid}"
        record["attributes"]["MessageGroupId"] = str(account)
        records.append(record)
    return {"Records": records}


@pytest.mark.parametrize("held", ["created and not committed", "committed and locked"])
def test_a_busy_account_fails_alone_and_the_others_are_stored_in_one_transaction_without_waiting_for_it(
    runner: FunctionRunner, database: Database, dlq: Any, monkeypatch: pytest.MonkeyPatch, held: str
) -> None:
    # Given: a wait for the lock would last until the holder lets go (a safety timer, long after the call would
    # otherwise have returned), and account 3 held by another transaction, its row being created or already there.
    monkeypatch.setenv("TXGUARD_STATEMENT_TIMEOUT_MS", "120000")
    monkeypatch.setenv("TXGUARD_LOCK_TIMEOUT_MS", "90000")
    db.reset_connection()
    if held == "committed and locked":
        database.query("INSERT INTO account_stats (account_id) VALUES (3) RETURNING account_id")
    holder = psycopg2.connect(database.admin_url)
    holder.cursor().execute("INSERT INTO account_stats (account_id) VALUES (3) ON CONFLICT DO NOTHING")
    holder.cursor().execute("SELECT 1 FROM account_stats WHERE account_id = 3 FOR UPDATE")
    held_since = holding(database, holder)
    assert held_since is not None
    safety = threading.Timer(60, holder.rollback)
    safety.start()
    try:
        # When: a batch of accounts 1, 3, 5, 3, 1 arrives.
        failures = invoke(runner, fifo_batch([(1, 9001), (3, 9003), (5, 9005), (3, 9006), (1, 9004)]))

        # Then, with account 3 still held: exactly its two records are retried, and the others are committed,
        # all by one database transaction.
        assert holding(database, holder) == held_since
        assert failures == [{"itemIdentifier": "m-9003"}, {"itemIdentifier": "m-9006"}]
        assert stored(database) == [(9001, 1), (9004, 1), (9005, 1)]
        assert database.query("SELECT count(DISTINCT xmin::text) FROM transactions") == [(1,)]
        assert database.query("SELECT count(DISTINCT xmin::text) FROM account_stats WHERE account_id IN (1, 5)") == [
            (1,)
        ]
    finally:
        safety.cancel()
        holder.rollback()
        holder.close()

    # Delivered again once the account is free, its records are stored in order; the others are duplicates.
    assert invoke(runner, fifo_batch([(1, 9001), (3, 9003), (5, 9005), (3, 9006), (1, 9004)])) == []
    assert stored(database) == [(9001, 1), (9003, 1), (9004, 1), (9005, 1), (9006, 1)]
    assert database.query("SELECT tx_count FROM account_stats WHERE account_id = 3") == [(2,)]


def test_the_api_per_item_mode_waits_for_a_held_account_instead_of_skipping_it(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TXGUARD_LOCK_TIMEOUT_MS", "3000")
    db.reset_connection()
    holder = psycopg2.connect(database.admin_url)
    holder.cursor().execute("INSERT INTO account_stats (account_id) VALUES (3)")
    holder.cursor().execute("SELECT 1 FROM account_stats WHERE account_id = 3 FOR UPDATE")
    release = threading.Timer(0.5, holder.rollback)
    release.start()
    try:
        outcomes = service.store_each(
            [
                {"account_id": a, "transaction_id": t, "timestamp": 1_714_564_800_000, "amount": "1.00"}
                for a, t in [(1, 9001), (3, 9003)]
            ]
        )
    finally:
        release.cancel()
        holder.close()
    assert [(o.result.status if o.result else None, o.busy) for o in outcomes] == [("stored", False)] * 2
    assert stored(database) == [(9001, 1), (9003, 1)]


def test_a_failed_fifo_message_fails_the_rest_of_its_group_and_no_other(
    runner: FunctionRunner, database: Database, dlq: Any
) -> None:
    with account_locked(database, 1):
        failures = invoke(runner, load_event("sqs.json"))
    assert failures == [{"itemIdentifier": SQS_IDS[0]}, {"itemIdentifier": SQS_IDS[3]}]
    assert stored(database) == [(9003, 1)]


def test_kinesis_later_records_of_a_failed_partition_key_fail_too(
    runner: FunctionRunner, database: Database, dlq: Any
) -> None:
    with account_locked(database, 1):
        failures = invoke(runner, load_event("kinesis.json"))
    assert failures == [{"itemIdentifier": KINESIS_SEQ[0]}, {"itemIdentifier": KINESIS_SEQ[3]}]
    assert stored(database) == [(9003, 1)]
    (letter,) = dead_letters(dlq, dlq.get_queue_url(QueueName="stream-failures")["QueueUrl"])
    assert letter["source_id"] == KINESIS_SEQ[1] and letter["code"] == "validation_error"
    assert invoke(runner, load_event("kinesis.json")) == []
    assert stored(database) == [(9001, 1), (9003, 1), (9004, 1)]


def test_kafka_records_as_lambda_delivers_them_with_failures_by_partition_and_offset(
    runner: FunctionRunner, database: Database, dlq: Any
) -> None:
    with account_locked(database, 3):
        failures = invoke(runner, load_event("kafka.json"))
    # Partition 1 holds accounts 1 and 3 (offsets 100, 102, 103): from account 3's record on, it is retried.
    assert failures == [
        {"itemIdentifier": {"partition": "transactions-1", "offset": 102}},
        {"itemIdentifier": {"partition": "transactions-1", "offset": 103}},
    ]
    # 9004 (account 1) was stored with its account, yet reported failed after 9003: it comes back as a duplicate.
    assert stored(database) == [(9001, 1), (9004, 1)]
    (letter,) = dead_letters(dlq, dlq.get_queue_url(QueueName="stream-failures")["QueueUrl"])
    assert letter["source_id"] == "transactions-0-101"
    assert invoke(runner, load_event("kafka.json")) == []
    assert stored(database) == [(9001, 1), (9003, 1), (9004, 1)]


def test_a_known_id_with_other_content_is_dead_lettered_as_a_conflict(
    runner: FunctionRunner, database: Database, dlq: Any
) -> None:
    assert invoke(runner, load_event("sqs.json")) == []
    event = copy.deepcopy(load_event("sqs.json"))
    changed = json.loads(event["Records"][0]["body"]) | {"amount": "26.00"}
    event["Records"][0]["body"] = json.dumps(changed)
    event["Records"][0]["messageId"] = "changed-content"
    event["Records"] = event["Records"][:1]
    assert invoke(runner, event) == []
    url = dlq.get_queue_url(QueueName="dlq.fifo")["QueueUrl"]
    letters = [d for d in dead_letters(dlq, url) if d["source_id"] == "changed-content"]
    assert [(d["code"], d["error"]["error"]["details"][0]["reason"]) for d in letters] == [
        ("transaction_id_conflict", "differs in amount")
    ]
    assert database.query("SELECT amount FROM transactions WHERE transaction_id = 9001") == [(pytest.approx(25),)]


def test_bodies_that_are_not_json_or_not_base64_text_are_dead_lettered_not_retried(
    runner: FunctionRunner, database: Database, dlq: Any
) -> None:
    event = copy.deepcopy(load_event("kinesis.json"))
    event["Records"][0]["kinesis"]["data"] = base64.b64encode(b'{"account_id": 1, "account_id": 2}').decode()
    event["Records"][2]["kinesis"]["data"] = base64.b64encode(b"\xff\xfe").decode()
    assert invoke(runner, event) == []
    letters = dead_letters(dlq, dlq.get_queue_url(QueueName="stream-failures")["QueueUrl"])
    assert sorted((d["source_id"], d["code"]) for d in letters if d["code"] == "malformed_json") == sorted(
        [(KINESIS_SEQ[0], "malformed_json"), (KINESIS_SEQ[2], "malformed_json")]
    )
    assert stored(database) == [(9004, 1)]


def test_with_the_database_down_every_valid_record_is_retried_and_the_invalid_one_still_dead_lettered(
    runner: FunctionRunner, database: Database, dlq: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("TXGUARD_CONNECT_TIMEOUT", "1")
    runner.database_url = "postgresql://nobody@127.0.0.1:1/none"
    db.reset_connection()
    failures = invoke(runner, load_event("sqs.json"))
    assert failures == [{"itemIdentifier": SQS_IDS[i]} for i in (0, 2, 3)]
    assert [d["source_id"] for d in dead_letters(dlq, dlq.get_queue_url(QueueName="dlq.fifo")["QueueUrl"])] == [
        SQS_IDS[1]
    ]


def test_an_unreachable_dead_letter_queue_retries_the_invalid_record_instead_of_losing_it(
    runner: FunctionRunner, database: Database, dlq: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TXGUARD_STREAM_DLQ_URL", "https://sqs.us-east-1.amazonaws.com/123456789012/missing.fifo")
    failures = invoke(runner, load_event("sqs.json"))
    assert failures == [{"itemIdentifier": SQS_IDS[1]}]
    assert stored(database) == [(9001, 1), (9003, 1), (9004, 1)]


def test_every_decision_is_published_to_the_decisions_queue_when_one_is_configured(
    runner: FunctionRunner, database: Database, dlq: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = dlq.create_queue(QueueName="decisions")["QueueUrl"]
    monkeypatch.setenv("TXGUARD_DECISIONS_QUEUE_URL", url)
    assert invoke(runner, load_event("sqs.json")) == []
    got = dlq.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    published = sorted((json.loads(m["Body"])["transaction_id"], json.loads(m["Body"])["status"]) for m in got)
    assert published == [(9001, "stored"), (9003, "stored"), (9004, "stored")]
    assert all("fraud" in json.loads(m["Body"])["decision"] for m in got)


@pytest.mark.parametrize("source", ["sqs", "kinesis", "kafka"])
def test_records_carry_attributes_stored_canonical_and_a_bad_one_is_dead_lettered_naming_it(
    runner: FunctionRunner, database: Database, dlq: Any, source: str
) -> None:
    event = copy.deepcopy(load_event(f"{source}.json"))
    if source == "kafka":
        records = [r for partition in event["records"].values() for r in partition]
    else:
        records = event["Records"]

    def holder(record: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Where the record's JSON document is, and under which key (base64 in Kinesis and Kafka)."""
        if source == "kinesis":
            return record["kinesis"], "data"
        return record, "body" if source == "sqs" else "value"

    def read(record: dict[str, Any]) -> Any:
        place, key = holder(record)
        return json.loads(place[key] if source == "sqs" else base64.b64decode(place[key]))

    def write(record: dict[str, Any], document: Any) -> None:
        place, key = holder(record)
        text = json.dumps(document)
        place[key] = text if source == "sqs" else base64.b64encode(text.encode()).decode()

    for record in records:
        document = read(record)
        if document["transaction_id"] == 9001:
            write(record, document | {"country": "fr", "device_id": "dev-1", "metadata": {"campaign": "x"}})
        elif document["transaction_id"] == 9003:
            write(record, document | {"country": "XX"})
    invoke(runner, event)
    assert database.query("SELECT transaction_id, country, device_id, metadata FROM transactions ORDER BY 1") == [
        (9001, "FR", "dev-1", {"campaign": "x"}),
        (9004, None, None, None),
    ]
    url = dlq.get_queue_url(QueueName="dlq.fifo" if source == "sqs" else "stream-failures")["QueueUrl"]
    details = {d["source_id"]: d["error"]["error"]["details"] for d in dead_letters(dlq, url)}
    assert {
        "index": None,
        "field": "country",
        "value": "XX",
        "reason": "is not an ISO 3166-1 alpha-2 country code",
    } in [detail for found in details.values() for detail in found]
