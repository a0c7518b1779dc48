"""Stream ingest: transactions from an SQS queue, a Kinesis data stream or a Kafka topic, one per message.

A message body is the same transaction JSON as `POST /store_data` takes, read by the one JSON rule
(`literals.loads`), validated by `intake` and stored exactly once by `service.store_checked`. The batch is decided
in one database transaction, which does not wait for an account another transaction holds (`skip_busy`): that
account's records are retried, every other account's are stored. Only when the transaction fails as a whole for a
retryable reason (the database down, or a wait on something else timed out) are the accounts tried one by one.

Each record ends in one of three ways, reported through Powertools' batch processing (ReportBatchItemFailures):
- stored, or a duplicate of what is stored: success;
- refused for good (invalid, or its transaction_id already stored with other content): sent to the dead-letter
  queue with its error attached (`error_code`, `error` message attributes), counted in `InvalidMessages`, and
  reported as success, so the source never redelivers it;
- failed for a retryable reason (DatabaseUnavailable, or the dead-letter queue unreachable): reported failed, so
  the source delivers it again.

Order per account: a failed record is never overtaken by a later record of its ordering key (SQS FIFO:
`MessageGroupId`; Kinesis: `partitionKey`; Kafka: the topic partition) in the same batch. Later records of the
key are reported failed too (Powertools' `SqsFifoPartialProcessor(skip_group_on_error=True)` for FIFO queues,
`KeyedPartialProcessor` for streams) and come back as duplicates if they were stored already.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    SqsFifoPartialProcessor,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse

from txguard import literals, service
from txguard.db import DatabaseUnavailable
from txguard.domain import StoreResult
from txguard.errors import echo, shorten
from txguard.intake import Checked, Problem, check_items
from txguard.observability import logger, metrics
from txguard.presenters import store_results_json

# Where records refused for good go, by source: a FIFO queue's dead-letter queue must be FIFO itself; Kinesis and
# Kafka share one standard queue, which is also their event source mappings' on-failure destination.
DLQ_URL_VARIABLE = {"sqs": "TXGUARD_STREAM_DLQ_URL", "kinesis": "TXGUARD_STREAM_FAILURE_QUEUE_URL"}
DLQ_URL_VARIABLE["kafka"] = DLQ_URL_VARIABLE["kinesis"]
MAX_ERROR_ATTRIBUTE = 4000  # characters of the error JSON attached to a dead letter (SQS allows 256 KiB in all)


class RetryLater(Exception):
    """A record that may succeed when delivered again (the database or the dead-letter queue was unavailable)."""


@dataclass(frozen=True)
class Record:
    """One message of a batch: its `identifier` (what batchItemFailures names), its ordering `key`, its body."""

    identifier: str
    key: str
    body: str | None  # None: the payload is not base64 of UTF-8 text
    group_id: str | None = None  # SQS FIFO MessageGroupId, kept for the dead letter


@dataclass(frozen=True)
class Outcome:
    """What became of one record: `stored` / `duplicate`, `refused` (with code and problems), or `retry`."""

    status: str
    code: str | None = None
    problems: tuple[Problem, ...] = ()
    reason: str | None = None
    result: StoreResult | None = None


def source_of(event: dict[str, Any]) -> str:
    """ "sqs", "kinesis" or "kafka" (MSK or self-managed), from the event's shape. Raises ValueError otherwise."""
    if event.get("eventSource") in ("aws:kafka", "SelfManagedKafka") and isinstance(event.get("records"), dict):
        return "kafka"
    records = event.get("Records")
    if isinstance(records, list) and records:
        source = records[0].get("eventSource")
        if source == "aws:sqs":
            return "sqs"
        if source == "aws:kinesis":
            return "kinesis"
    raise ValueError("not an SQS, Kinesis or Kafka batch event")


def _decode(data: str | None) -> str | None:
    if data is None:
        return None
    try:
        return base64.b64decode(data, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def records_of(source: str, event: dict[str, Any]) -> list[Record]:
    """The batch's records in delivery order, in the shape each source delivers them."""
    if source == "sqs":
        return [
            Record(
                r["messageId"],
                (r.get("attributes") or {}).get("MessageGroupId") or r["messageId"],
                r.get("body"),
                (r.get("attributes") or {}).get("MessageGroupId"),
            )
            for r in event["Records"]
        ]
    if source == "kinesis":
        return [
            Record(r["kinesis"]["sequenceNumber"], r["kinesis"]["partitionKey"], _decode(r["kinesis"].get("data")))
            for r in event["Records"]
        ]
    return [
        Record(kafka_identifier(r), f"{r['topic']}-{r['partition']}", _decode(r.get("value")))
        for partition in event["records"].values()
        for r in partition
    ]


def kafka_identifier(record: Any) -> str:
    return f"{record['topic']}-{record['partition']}-{record['offset']}"


def decide(records: Sequence[Record], remaining_ms: Callable[[], int] | None = None) -> dict[str, Outcome]:
    """Each record's outcome by identifier: the batch validated item by item and stored in one database
    transaction (service.store_checked, skipping busy accounts: their records come back `retry` at once); when
    that transaction is unavailable as a whole, account by account, stopping at the first account the database
    refuses as down (not merely busy)."""
    outcomes: dict[str, Outcome] = {}
    items: dict[str, Checked] = {}
    for record in records:
        if record.body is None:
            problem = Problem(None, None, "the message is not base64 of UTF-8 text")
            outcomes[record.identifier] = Outcome("refused", "malformed_json", (problem,))
            continue
        try:
            document = literals.loads(record.body)
        except literals.JsonRefused as exc:
            problem = Problem(None, echo(record.body), shorten(str(exc)))
            outcomes[record.identifier] = Outcome("refused", "malformed_json", (problem,))
            continue
        # Validated before the database is asked anything: an invalid record is refused even while it is down.
        (checked,) = check_items([document])
        if checked.transaction is None:
            outcomes[record.identifier] = Outcome("refused", "validation_error", checked.problems)
        else:
            items[record.identifier] = checked
    try:
        outcomes |= _store(list(items.items()), remaining_ms)
    except DatabaseUnavailable as whole:
        logger.warning("batch store unavailable; storing account by account", extra={"reason": str(whole)})
        # By account (a Kafka partition holds many accounts).
        by_key: dict[str, list[tuple[str, Checked]]] = defaultdict(list)
        for record in records:
            if record.identifier in items:
                item = items[record.identifier]
                assert item.transaction is not None
                by_key[str(item.transaction.account_id)].append((record.identifier, item))
        down: str | None = None
        for group in by_key.values():
            if down is None:
                try:
                    outcomes |= _store(group, remaining_ms)
                    continue
                except DatabaseUnavailable as exc:
                    if exc.retry_after_s > 1:  # down, not merely busy (see db.database_failure)
                        down = str(exc)
                    outcomes |= {i: Outcome("retry", reason=str(exc)) for i, _ in group}
                    continue
            outcomes |= {i: Outcome("retry", reason=down) for i, _ in group}
    return outcomes


def _store(group: list[tuple[str, Checked]], remaining_ms: Callable[[], int] | None) -> dict[str, Outcome]:
    if not group:
        return {}
    indexed = [Checked(n, item.transaction) for n, (_, item) in enumerate(group)]
    results = service.store_checked(indexed, remaining_ms, skip_busy=True)
    outcomes = {}
    for (identifier, _), result in zip(group, results, strict=True):
        if result.busy:
            outcomes[identifier] = Outcome("retry", reason="its account is held by another transaction")
        elif result.result is not None:
            outcomes[identifier] = Outcome(result.result.status, result=result.result)
        else:
            outcomes[identifier] = Outcome("refused", result.code, result.problems)
    return outcomes


class KeyedPartialProcessor(BatchProcessor):
    """A stream's batch processor that keeps order per key: once a record fails, every later record with the same
    key (Kinesis partition key, Kafka topic partition) is reported failed without being handled, as
    SqsFifoPartialProcessor(skip_group_on_error=True) does for a FIFO queue's message groups."""

    def __init__(self, event_type: EventType, key: Callable[[dict[str, Any]], str]) -> None:
        super().__init__(event_type)
        self._key = key
        self._failed_keys: set[str] = set()
        self._current_key: str | None = None

    def _process_record(self, record: dict[str, Any]) -> Any:
        self._current_key = self._key(record)
        if self._current_key in self._failed_keys:
            return self.failure_handler(
                record=self._to_batch_type(record, event_type=self.event_type, model=self.model),
                exception=(RetryLater, RetryLater("a previous record with this key failed"), None),
            )
        return super()._process_record(record)

    def failure_handler(self, record: Any, exception: Any) -> Any:
        if self._current_key is not None:
            self._failed_keys.add(self._current_key)
        return super().failure_handler(record, exception)

    def _clean(self) -> None:
        self._failed_keys.clear()
        self._current_key = None
        super()._clean()  # type: ignore[no-untyped-call]


def processor_for(source: str, event: dict[str, Any]) -> BatchProcessor:
    """The batch processor that keeps the source's order: per message group (FIFO), per key (streams)."""
    processor: BatchProcessor
    if source == "sqs":
        fifo = str(event["Records"][0].get("eventSourceARN", "")).endswith(".fifo")
        processor = SqsFifoPartialProcessor(skip_group_on_error=True) if fifo else BatchProcessor(EventType.SQS)
    elif source == "kinesis":
        processor = KeyedPartialProcessor(EventType.KinesisDataStreams, lambda r: r["kinesis"]["partitionKey"])
    else:
        processor = KeyedPartialProcessor(EventType.Kafka, lambda r: f"{r['topic']}-{r['partition']}")
    # A batch whose every record must be retried is reported record by record like any other (the same retry,
    # and the response still names each record), not raised as a function error.
    processor.raise_on_entire_batch_failure = False
    return processor


def _identifier(source: str, record: Any) -> str:
    if source == "sqs":
        return str(record.message_id)
    if source == "kinesis":
        return str(record.kinesis.sequence_number)
    return f"{record.topic}-{record.partition}-{record.offset}"


def handle_batch(event: dict[str, Any], context: Any) -> PartialItemFailureResponse:
    """StreamIngestFunction: an SQS, Kinesis or Kafka batch in, `{"batchItemFailures": [...]}` out (the records to
    deliver again; identifiers as each source expects: SQS messageId, Kinesis sequenceNumber, Kafka
    {"partition": "<topic>-<partition>", "offset"}). Raises ValueError for an event of no known source."""
    source = source_of(event)
    records = records_of(source, event)
    remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
    outcomes = decide(records, remaining_ms)
    held = held_back(source, event, records, outcomes)
    refused = [(r, outcomes[r.identifier]) for r in records if outcomes[r.identifier].status == "refused"]
    dead_lettered = dead_letter(source, [(r, o) for r, o in refused if r.identifier not in held])
    decided = [(r.identifier, outcomes[r.identifier].result) for r in records if r.identifier not in held]
    published = publish_decisions([(i, result) for i, result in decided if result is not None])
    counts: dict[str, int] = defaultdict(int)

    def record_handler(record: Any) -> None:
        identifier = _identifier(source, record)
        outcome = outcomes[identifier]
        if outcome.status == "refused" and identifier not in dead_lettered:
            outcome = Outcome("retry", reason="the dead-letter queue could not be reached")
        elif outcome.result is not None and identifier not in published:
            # Delivered again, it is a duplicate with the same decision, and published then.
            outcome = Outcome("retry", reason="the decisions queue could not be reached")
        counts[outcome.status] += 1
        if outcome.status == "retry":
            raise RetryLater(outcome.reason)

    response = process_partial_response(event, record_handler, processor_for(source, event), context)
    metrics.add_metric(name="StreamRecordsStored", unit=MetricUnit.Count, value=counts["stored"])
    metrics.add_metric(name="StreamRecordsDuplicate", unit=MetricUnit.Count, value=counts["duplicate"])
    metrics.add_metric(name="InvalidMessages", unit=MetricUnit.Count, value=counts["refused"])
    metrics.add_metric(name="StreamRecordsRetried", unit=MetricUnit.Count, value=len(response["batchItemFailures"]))
    logger.info(
        "stream batch",
        extra={"source": source, "records": len(records), **counts, "failed": len(response["batchItemFailures"])},
    )
    return response


def held_back(source: str, event: dict[str, Any], records: Sequence[Record], outcomes: dict[str, Outcome]) -> set[str]:
    """Records an ordered source will deliver again because an earlier record of their key is retried: they are
    neither dead-lettered nor published now (their next delivery decides), so that nothing of a key overtakes a
    failed record. A standard SQS queue keeps no order: nothing is held back there."""
    ordered = source != "sqs" or str(event["Records"][0].get("eventSourceARN", "")).endswith(".fifo")
    if not ordered:
        return set()
    blocked: set[str] = set()
    held: set[str] = set()
    for record in records:
        if record.key in blocked:
            held.add(record.identifier)
        elif outcomes[record.identifier].status == "retry":
            blocked.add(record.key)
    return held


def error_json(outcome: Outcome) -> str:
    """The error attached to a dead letter, in the API's one error shape (index null: one message)."""
    details = [{"index": None, "field": p.field, "value": p.value, "reason": p.reason} for p in outcome.problems]
    text = json.dumps(
        {
            "error": {
                "code": outcome.code,
                "message": "the message was refused; it will not be retried",
                "details": details,
            }
        },
        default=str,
    )
    return text if len(text) <= MAX_ERROR_ATTRIBUTE else text[:MAX_ERROR_ATTRIBUTE] + "…"


_sqs: Any = None


def sqs_client() -> Any:
    global _sqs
    if _sqs is None:
        import boto3  # only paid once a record is refused
        from botocore.config import Config

        _sqs = boto3.client("sqs", config=Config(connect_timeout=2, read_timeout=5, retries={"total_max_attempts": 2}))
    return _sqs


def reset_client() -> None:
    global _sqs
    _sqs = None


def publish_decisions(results: Sequence[tuple[str, StoreResult]]) -> set[str]:
    """Send each decided record's result (the API's result item: transaction, status, decision) to the decisions
    queue (TXGUARD_DECISIONS_QUEUE_URL), at least once: a duplicate is published again with its original decision.
    Returns the identifiers sent; with no queue configured, all of them."""
    url = os.environ.get("TXGUARD_DECISIONS_QUEUE_URL")
    if not url:
        return {identifier for identifier, _ in results}
    sent: set[str] = set()
    bodies = store_results_json([result for _, result in results])
    for start in range(0, len(results), 10):
        chunk = list(zip(results[start : start + 10], bodies[start : start + 10], strict=True))
        entries = [{"Id": str(n), "MessageBody": orjson.dumps(body).decode()} for n, (_, body) in enumerate(chunk)]
        try:
            answer = sqs_client().send_message_batch(QueueUrl=url, Entries=entries)
        except Exception as exc:  # botocore's errors: the records are retried
            logger.error("decisions queue unavailable", extra={"error": type(exc).__name__})
            continue
        sent.update(chunk[int(ok["Id"])][0][0] for ok in answer.get("Successful", []))
    return sent


def dead_letter(source: str, refused: Sequence[tuple[Record, Outcome]]) -> set[str]:
    """Send refused records to the source's dead-letter queue, body unchanged, the error in message attributes.

    Returns the identifiers sent (the rest are retried: their refusal is not recorded anywhere yet). With no
    queue configured, a refusal is only logged, and counts as sent: it must not block the stream.
    """
    if not refused:
        return set()
    url = os.environ.get(DLQ_URL_VARIABLE[source])
    for record, outcome in refused:
        logger.warning(
            "message refused",
            extra={
                "source": source,
                "identifier": record.identifier,
                "code": outcome.code,
                "error": error_json(outcome),
            },
        )
    if not url:
        return {r.identifier for r, _ in refused}
    sent: set[str] = set()
    fifo = url.endswith(".fifo")
    for start in range(0, len(refused), 10):  # SendMessageBatch takes at most 10 entries
        chunk = refused[start : start + 10]
        entries = []
        for n, (record, outcome) in enumerate(chunk):
            entry: dict[str, Any] = {
                "Id": str(n),
                "MessageBody": record.body if record.body else "(not UTF-8 text)",
                "MessageAttributes": {
                    "error_code": {"DataType": "String", "StringValue": outcome.code or "validation_error"},
                    "error": {"DataType": "String", "StringValue": error_json(outcome)},
                    "source": {"DataType": "String", "StringValue": source},
                    "source_id": {"DataType": "String", "StringValue": record.identifier},
                },
            }
            if fifo:
                entry["MessageGroupId"] = record.group_id or record.key
                # A record refused twice (redelivered after a crash) is one dead letter within SQS's 5 minutes.
                entry["MessageDeduplicationId"] = record.identifier[:128]
            entries.append(entry)
        try:
            answer = sqs_client().send_message_batch(QueueUrl=url, Entries=entries)
        except Exception as exc:  # botocore's errors: the records are retried, and refused again then
            logger.error("dead-letter queue unavailable", extra={"error": type(exc).__name__})
            continue
        for ok in answer.get("Successful", []):
            sent.add(chunk[int(ok["Id"])][0].identifier)
    metrics.add_metric(name="DeadLettered", unit=MetricUnit.Count, value=len(sent))
    return sent
