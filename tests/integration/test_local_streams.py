"""`txguard local --streams` pieces against moto's server: the Kinesis poller's checkpointing, `generate --sink`,
and `txguard dlq list | redrive`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import psycopg2
import pytest

from tests.conftest import ROOT, Database, project_template
from txguard import db, stream
from txguard_dev.cli import main
from txguard_dev.local import streams
from txguard_dev.local.runner import FunctionRunner

pytestmark = pytest.mark.integration
T0 = 1_714_564_800_000


@pytest.fixture
def local(monkeypatch: pytest.MonkeyPatch) -> Iterator[streams.Resources]:
    with streams.moto_server() as endpoint:
        resources = streams.create_resources(endpoint, shards=1)
        for name, value in resources.environment().items():
            monkeypatch.setenv(name, value)
        stream.reset_client()
        yield resources
        stream.reset_client()


def body(tid: int, account: int, amount: str = "10.00") -> dict[str, Any]:
    return {"account_id": account, "transaction_id": tid, "timestamp": T0 + tid * 1000, "amount": amount}


def test_a_kinesis_shard_resumes_at_the_first_failed_record_until_every_record_is_stored_once(
    database: Database, local: streams.Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TXGUARD_LOCK_TIMEOUT_MS", "200")
    db.reset_connection()
    kinesis = streams.client("kinesis", local.endpoint_url)
    records = [body(n, 1 + n % 3) for n in range(1, 31)] + [body(99, 2, amount="-1")]
    kinesis.put_records(
        StreamName=local.stream_name,
        Records=[{"Data": json.dumps(r).encode(), "PartitionKey": str(r["account_id"])} for r in records],
    )
    runner = FunctionRunner(project_template(), database_url=database.service_url)
    (reader,) = streams.kinesis_readers(local)
    invoke = streams.runner_invoke(runner)
    batches: list[list[Any]] = []

    def recording(event: dict[str, Any]) -> tuple[bool, list[Any]]:
        failed, failures = invoke(event)
        batches.append(failures)
        return failed, failures

    # Account 2 is held by another writer for the first batch: its records fail, the shard resumes there.
    with closing(psycopg2.connect(database.admin_url)) as hold:
        hold.cursor().execute("INSERT INTO account_stats (account_id) VALUES (2)")
        hold.cursor().execute("SELECT 1 FROM account_stats WHERE account_id = 2 FOR UPDATE")
        assert reader.poll_once(recording, batch_size=100) == len(records)
        hold.rollback()
    assert batches[0], "the locked account's records were not reported failed"
    for _ in range(5):
        reader.poll_once(recording, batch_size=100)
    assert batches[-1] == []
    stored = database.query("SELECT transaction_id FROM transactions ORDER BY 1")
    assert [row[0] for row in stored] == list(range(1, 31))
    letters = streams.read_dead_letters(streams.client("sqs", local.endpoint_url), local.failure_queue_url)
    assert [json.loads(d.body)["transaction_id"] for d in letters] == [99]


def test_generate_feeds_the_queue_and_dlq_lists_and_redrives_the_dead_letters(
    local: streams.Resources, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", "--sink", "sqs", "--endpoint-url", local.endpoint_url, "--num-transactions", "25"]) == 0
    sqs = streams.client("sqs", local.endpoint_url)
    queued = sqs.get_queue_attributes(QueueUrl=local.queue_url, AttributeNames=["ApproximateNumberOfMessages"])
    assert queued["Attributes"]["ApproximateNumberOfMessages"] == "25"

    refused = stream.Outcome(
        "refused", "validation_error", (stream.Problem("amount", "-1", "amount must not be negative"),)
    )
    record = stream.Record("m-1", "7", json.dumps(body(5, 7, amount="-1")), "7")
    assert stream.dead_letter("sqs", [(record, refused)]) == {"m-1"}
    capsys.readouterr()
    assert main(["dlq", "list", "--endpoint-url", local.endpoint_url, "--json"]) == 0
    (listed,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert listed["code"] == "validation_error"
    assert listed["error"]["error"]["details"][0]["reason"] == "amount must not be negative"
    assert json.loads(listed["body"])["transaction_id"] == 5

    assert main(["dlq", "redrive", "--endpoint-url", local.endpoint_url]) == 0
    assert streams.read_dead_letters(sqs, local.dlq_url) == []
    queued = sqs.get_queue_attributes(QueueUrl=local.queue_url, AttributeNames=["ApproximateNumberOfMessages"])
    assert queued["Attributes"]["ApproximateNumberOfMessages"] == "26"


def test_replay_feeds_the_queue_its_labels_go_to_the_store_and_the_stream_function_stores_each_transaction(
    database: Database, local: streams.Resources, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = ROOT / "tests" / "fixtures" / "handbook-sample.csv.gz"
    argv = ["replay", "--preset", "handbook", "--no-progress", "--sink", "sqs", "--endpoint-url", local.endpoint_url]
    assert main([*argv, str(sample)]) == 0
    out = capsys.readouterr().out
    assert "30 sent to the stream" in out and "labels (delay 7 days): 30 stored" in out
    # The labels are in the store, waiting for their transactions; the transactions are in the queue.
    assert database.query("SELECT count(*), count(DISTINCT transaction_id) FROM labels")[0] == (30, 30)
    assert database.query("SELECT count(*) FROM transactions")[0][0] == 0
    sqs = streams.client("sqs", local.endpoint_url)
    queued = sqs.get_queue_attributes(QueueUrl=local.queue_url, AttributeNames=["ApproximateNumberOfMessages"])
    assert queued["Attributes"]["ApproximateNumberOfMessages"] == "30"
    runner = FunctionRunner(project_template(), database_url=database.service_url)
    invoke = streams.runner_invoke(runner)
    assert streams.wait_until(lambda: streams.poll_sqs_once(local, invoke) == 0 and _stored(database) == 30, 60)
    # Each waiting label applied when its transaction arrived: the maintained merchant fraud counts equal the view.
    query = "SELECT merchant_id, tx_day, known_day, frauds FROM {} ORDER BY 1, 2, 3"
    assert database.query(query.format("merchant_label_daily")) == database.query(query.format("merchant_label_steps"))


def _stored(database: Database) -> int:
    return int(database.query("SELECT count(*) FROM transactions")[0][0])
