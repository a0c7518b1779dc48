"""Local queues and streams for StreamIngestFunction: moto's server for SQS and Kinesis, and pollers that feed the
function the way Lambda's event source mappings do (nothing in SAM CLI runs event source mappings locally).

- SQS FIFO (`transactions.fifo`, dead-letter queue `transactions-dlq.fifo` after MAX_RECEIVES receives): up to
  10 messages a batch; the messages of a successful batch are deleted except those named in batchItemFailures,
  which come back when their visibility timeout ends (and block their message group until then, as SQS FIFO does).
  A failed invocation leaves every message of the batch to come back.
- Kinesis (`transactions`, partition key = account): each shard read in order; after a batch with
  batchItemFailures the shard resumes at the lowest failed sequence number (Lambda's checkpoint), after a failed
  invocation at the batch's start.

The function runs in-process through the same FunctionRunner as the local API (`txguard local --streams`); moto's
server runs as a child process.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from txguard_dev.local.runner import ACCOUNT_ID, log

REGION = "us-east-1"
QUEUE_NAME = "transactions.fifo"
DLQ_NAME = "transactions-dlq.fifo"
FAILURE_QUEUE_NAME = "transactions-stream-failures"
STREAM_NAME = "transactions"
FUNCTION = "StreamIngestFunction"
MAX_RECEIVES = 5  # the local redrive policy's maxReceiveCount
VISIBILITY_TIMEOUT_S = 2  # short, so that a retried message comes back soon locally
DEFAULT_PORT = 4566


def client(service: str, endpoint_url: str) -> Any:
    import boto3

    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )


# `python -m moto.server`, without werkzeug's line per request (thousands a minute under load).
_MOTO_SERVER = (
    "import logging, sys; logging.getLogger('werkzeug').setLevel(logging.WARNING); "
    "from moto.server import main; main(sys.argv[1:])"
)


@contextmanager
def moto_server(host: str = "127.0.0.1", port: int = 0, ready_timeout_s: float = 30.0) -> Iterator[str]:
    """moto's server (SQS, Kinesis and the rest) as a child process (`python -m moto.server`); yields its endpoint
    URL, and stops the process on exit.

    A process of its own, not a thread of this one: moto's SQS costs CPU on every call (it scans the queue's
    messages several times per message sent or received), which then runs beside the function instead of
    sharing this interpreter's lock with it, and a crash in the server cannot take the poller down with it.
    """
    if port == 0:
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
    endpoint = f"http://{host}:{port}"
    with tempfile.TemporaryFile() as errors:
        server = subprocess.Popen(
            [sys.executable, "-c", _MOTO_SERVER, "--host", host, "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,  # read only if the server does not start
        )
        try:
            _wait_until_serving(endpoint, server, errors, ready_timeout_s)
            yield endpoint
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _wait_until_serving(endpoint: str, server: subprocess.Popen[bytes], errors: Any, timeout_s: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=2).close()
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            errors.seek(0)
            tail = errors.read()[-2000:].decode(errors="replace")
            raise RuntimeError(f"moto's server did not start at {endpoint} (exit {server.returncode}): {tail}")
        time.sleep(0.1)


@dataclass(frozen=True)
class Resources:
    endpoint_url: str
    queue_url: str
    dlq_url: str
    failure_queue_url: str
    stream_name: str

    def environment(self) -> dict[str, str]:
        """What StreamIngestFunction needs to reach them (the template's values name AWS resources)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "TXGUARD_STREAM_DLQ_URL": self.dlq_url,
            "TXGUARD_STREAM_FAILURE_QUEUE_URL": self.failure_queue_url,
        }


def create_resources(endpoint_url: str, shards: int = 2, max_receives: int = MAX_RECEIVES) -> Resources:
    """The queues and the stream the template creates, in moto (idempotent). A message still failing after
    `max_receives` receives, one every VISIBILITY_TIMEOUT_S seconds at most, goes to the dead-letter queue."""
    sqs = client("sqs", endpoint_url)
    dlq = sqs.create_queue(QueueName=DLQ_NAME, Attributes={"FifoQueue": "true"})["QueueUrl"]
    dlq_arn = f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{DLQ_NAME}"
    queue = sqs.create_queue(
        QueueName=QUEUE_NAME,
        Attributes={
            "FifoQueue": "true",
            "ContentBasedDeduplication": "true",
            "VisibilityTimeout": str(VISIBILITY_TIMEOUT_S),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives}),
        },
    )["QueueUrl"]
    failures = sqs.create_queue(QueueName=FAILURE_QUEUE_NAME)["QueueUrl"]
    kinesis = client("kinesis", endpoint_url)
    try:
        kinesis.create_stream(StreamName=STREAM_NAME, ShardCount=shards)
    except kinesis.exceptions.ResourceInUseException:
        pass
    return Resources(endpoint_url, queue, dlq, failures, STREAM_NAME)


Invoke = Callable[[dict[str, Any]], tuple[bool, list[Any]]]  # event -> (invocation failed, batchItemFailures)


def sqs_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    """Messages from ReceiveMessage as Lambda's SQS event source delivers them."""
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m.get("Attributes", {}),
                "messageAttributes": {
                    name: {
                        "stringValue": value.get("StringValue"),
                        "dataType": value.get("DataType"),
                        "stringListValues": [],
                        "binaryListValues": [],
                    }
                    for name, value in (m.get("MessageAttributes") or {}).items()
                },
                "md5OfBody": m.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": REGION,
            }
            for m in messages
        ]
    }


def poll_sqs_once(resources: Resources, invoke: Invoke, batch_size: int = 10, wait_s: int = 0) -> int:
    """One receive and one invocation, as the event source mapping does; returns the messages received."""
    sqs = client("sqs", resources.endpoint_url)
    got = sqs.receive_message(
        QueueUrl=resources.queue_url,
        MaxNumberOfMessages=batch_size,
        WaitTimeSeconds=wait_s,
        AttributeNames=["All"],
        MessageAttributeNames=["All"],
    ).get("Messages", [])
    if not got:
        return 0
    failed, failures = invoke(sqs_event(got, f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{QUEUE_NAME}"))
    if failed:
        return len(got)  # every message comes back after its visibility timeout
    retry = {f["itemIdentifier"] for f in failures}
    _keep_group_order(sqs, resources.queue_url, [m for m in got if m["MessageId"] in retry])
    done = [m for m in got if m["MessageId"] not in retry]
    for start in range(0, len(done), 10):
        sqs.delete_message_batch(
            QueueUrl=resources.queue_url,
            Entries=[
                {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(done[start : start + 10])
            ],
        )
    return len(got)


def _keep_group_order(sqs: Any, queue_url: str, failed: list[dict[str, Any]]) -> None:
    """Leave only the first failed message of each message group in flight, and make the rest visible at once.

    On SQS nothing changes: the group stays blocked by its first message until that one comes back. moto, when
    several messages of a group become visible again together, gives out the later ones first (it skips a message
    while another of its group still counts as in flight), which would let a transaction overtake an earlier one
    of its account.
    """
    heads: set[str] = set()
    behind = []
    for message in failed:
        group = (message.get("Attributes") or {}).get("MessageGroupId")
        if group is None:
            continue
        if group in heads:
            behind.append(message)
        else:
            heads.add(group)
    for start in range(0, len(behind), 10):
        sqs.change_message_visibility_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                for n, m in enumerate(behind[start : start + 10])
            ],
        )


def kinesis_event(records: list[dict[str, Any]], shard_id: str, stream_arn: str) -> dict[str, Any]:
    return {
        "Records": [
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": r["PartitionKey"],
                    "sequenceNumber": r["SequenceNumber"],
                    "data": base64.b64encode(r["Data"]).decode(),
                    "approximateArrivalTimestamp": r["ApproximateArrivalTimestamp"].timestamp(),
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"{shard_id}:{r['SequenceNumber']}",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": f"arn:aws:iam::{ACCOUNT_ID}:role/{FUNCTION}",
                "awsRegion": REGION,
                "eventSourceARN": stream_arn,
            }
            for r in records
        ]
    }


class KinesisShardReader:
    """One shard read from its start (TRIM_HORIZON), resuming where Lambda would checkpoint."""

    def __init__(self, resources: Resources, shard_id: str) -> None:
        self.kinesis = client("kinesis", resources.endpoint_url)
        self.resources = resources
        self.shard_id = shard_id
        self.arn = f"arn:aws:kinesis:{REGION}:{ACCOUNT_ID}:stream/{resources.stream_name}"
        self.iterator = self.kinesis.get_shard_iterator(
            StreamName=resources.stream_name, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]

    def poll_once(self, invoke: Invoke, batch_size: int = 500) -> int:
        got = self.kinesis.get_records(ShardIterator=self.iterator, Limit=batch_size)
        records = got["Records"]
        if not records:
            self.iterator = got["NextShardIterator"]
            return 0
        failed, failures = invoke(kinesis_event(records, self.shard_id, self.arn))
        if failed:
            self._resume_at(records[0]["SequenceNumber"])
        elif failures:
            self._resume_at(min((f["itemIdentifier"] for f in failures), key=int))
        else:
            self.iterator = got["NextShardIterator"]
        return len(records)

    def _resume_at(self, sequence_number: str) -> None:
        self.iterator = self.kinesis.get_shard_iterator(
            StreamName=self.resources.stream_name,
            ShardId=self.shard_id,
            ShardIteratorType="AT_SEQUENCE_NUMBER",
            StartingSequenceNumber=sequence_number,
        )["ShardIterator"]


def kinesis_readers(resources: Resources) -> list[KinesisShardReader]:
    shards = client("kinesis", resources.endpoint_url).list_shards(StreamName=resources.stream_name)["Shards"]
    return [KinesisShardReader(resources, s["ShardId"]) for s in shards]


class Pollers:
    """A thread polling the queue and each shard in turn until stopped; an idle round waits a moment."""

    def __init__(self, resources: Resources, invoke: Invoke, idle_s: float = 0.2) -> None:
        self.resources = resources
        self.invoke = invoke
        self.idle_s = idle_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="txguard-streams", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        readers = kinesis_readers(self.resources)
        while not self._stop.is_set():
            try:
                busy = poll_sqs_once(self.resources, self.invoke)
                busy += sum(reader.poll_once(self.invoke) for reader in readers)
            except Exception:
                log.exception("stream poll failed; trying again")
                busy = 0
            if not busy:
                self._stop.wait(self.idle_s)


def runner_invoke(runner: Any) -> Invoke:
    """Invoke StreamIngestFunction in-process (the caller has put Resources.environment() in os.environ)."""

    def invoke(event: dict[str, Any]) -> tuple[bool, list[Any]]:
        result = runner.call(FUNCTION, event)
        if result.failed:
            return True, []
        return False, list(result.payload.get("batchItemFailures") or [])

    return invoke


# ------------------------------------------------------------------------------------------- feeding ----


class SqsSink:
    """`txguard generate --sink sqs`: one transaction per message, MessageGroupId = account id."""

    def __init__(self, endpoint_url: str, queue_url: str) -> None:
        self.description = f"SQS {queue_url}"
        self._sqs = client("sqs", endpoint_url)
        self._url = queue_url
        self._fifo = queue_url.endswith(".fifo")

    def send(self, batch: list[Any]) -> Any:
        from txguard_generator.sinks import Outcome, transaction_record

        send_bodies(self._sqs, self._url, [(t.account_id, json.dumps(transaction_record(t))) for t in batch])
        return Outcome(written=len(batch))

    def close(self) -> None:
        pass


def send_bodies(sqs: Any, url: str, messages: list[tuple[int | str, str]], unique: bool = False) -> None:
    """Send (group, body) pairs, 10 a call; `unique` gives each a fresh deduplication id (a deliberate resend)."""
    fifo = url.endswith(".fifo")
    for start in range(0, len(messages), 10):
        entries = []
        for n, (group, body) in enumerate(messages[start : start + 10]):
            entry: dict[str, Any] = {"Id": str(n), "MessageBody": body}
            if fifo:
                entry["MessageGroupId"] = str(group)
                if unique:
                    entry["MessageDeduplicationId"] = uuid.uuid4().hex
            entries.append(entry)
        answer = sqs.send_message_batch(QueueUrl=url, Entries=entries)
        if answer.get("Failed"):
            raise RuntimeError(f"SQS refused {len(answer['Failed'])} messages: {answer['Failed'][0]}")


class KinesisSink:
    """`txguard generate --sink kinesis`: one transaction per record, partition key = account id."""

    def __init__(self, endpoint_url: str, stream_name: str) -> None:
        self.description = f"Kinesis {stream_name}"
        self._kinesis = client("kinesis", endpoint_url)
        self._stream = stream_name

    def send(self, batch: list[Any]) -> Any:
        from txguard_generator.sinks import Outcome, transaction_record

        for start in range(0, len(batch), 500):  # PutRecords takes at most 500
            records = [
                {"Data": json.dumps(transaction_record(t)).encode(), "PartitionKey": str(t.account_id)}
                for t in batch[start : start + 500]
            ]
            answer = self._kinesis.put_records(StreamName=self._stream, Records=records)
            if answer.get("FailedRecordCount"):
                raise RuntimeError(f"Kinesis refused {answer['FailedRecordCount']} records")
        return Outcome(written=len(batch))

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------- dead letters ----


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    receipt_handle: str
    body: str
    group_id: str | None
    code: str | None  # None: moved by the queue's redrive policy (it kept failing), not refused by the function
    error: str | None


def read_dead_letters(sqs: Any, dlq_url: str, hold_s: int = 30) -> list[DeadLetter]:
    """The messages of the dead-letter queue, each held invisible for `hold_s` (a listing takes none away).

    On a FIFO queue a message whose message group already has one held (listed) is not given out until that one
    is visible again or deleted, so with several dead letters of one account a listing may show only the first:
    delete (or redrive) what was read and read again to see the rest."""
    found: list[DeadLetter] = []
    while True:
        got = sqs.receive_message(
            QueueUrl=dlq_url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=hold_s,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not got:
            return found
        for m in got:
            attributes = m.get("MessageAttributes") or {}
            found.append(
                DeadLetter(
                    m["MessageId"],
                    m["ReceiptHandle"],
                    m["Body"],
                    (m.get("Attributes") or {}).get("MessageGroupId"),
                    (attributes.get("error_code") or {}).get("StringValue"),
                    (attributes.get("error") or {}).get("StringValue"),
                )
            )


def release(sqs: Any, dlq_url: str, letters: list[DeadLetter]) -> None:
    """Make listed messages visible again at once."""
    for start in range(0, len(letters), 10):
        sqs.change_message_visibility_batch(
            QueueUrl=dlq_url,
            Entries=[
                {"Id": str(n), "ReceiptHandle": d.receipt_handle, "VisibilityTimeout": 0}
                for n, d in enumerate(letters[start : start + 10])
            ],
        )


def redrive(sqs: Any, dlq_url: str, queue_url: str, letters: list[DeadLetter]) -> int:
    """Send dead letters back to the queue (a fresh deduplication id each: content-based deduplication would
    drop a resend within 5 minutes), then delete them from the dead-letter queue. Returns how many."""
    for start in range(0, len(letters), 10):
        chunk = letters[start : start + 10]
        send_bodies(sqs, queue_url, [(d.group_id or "redriven", d.body) for d in chunk], unique=True)
        sqs.delete_message_batch(
            QueueUrl=dlq_url, Entries=[{"Id": str(n), "ReceiptHandle": d.receipt_handle} for n, d in enumerate(chunk)]
        )
    return len(letters)


def wait_until(condition: Callable[[], bool], timeout_s: float, every_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every_s)
    return condition()
