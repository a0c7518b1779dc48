"""FraudDetected events on EventBridge, published after the decision is committed.

A failure to publish is logged and counted, never raised: the transaction and its decision are stored.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from txguard.observability import logger, metrics
from txguard.settings import service_settings

_client: Any = None
_ENTRIES_PER_CALL = 10  # PutEvents limit


def _events_client() -> Any:
    global _client
    if _client is None:
        import boto3  # ~120 ms to import: only paid once a fraud has to be published

        _client = boto3.client("events")
    return _client


def reset_client() -> None:
    global _client
    _client = None


def publish_fraud_detected(events: list[dict[str, Any]]) -> int:
    """Publish one FraudDetected event per flagged transaction; returns how many failed."""
    bus = service_settings().event_bus_name
    if not bus or not events:
        return 0
    failed = 0
    for start in range(0, len(events), _ENTRIES_PER_CALL):
        chunk = events[start : start + _ENTRIES_PER_CALL]
        entries = [
            {
                "Source": "txguard",
                "DetailType": "FraudDetected",
                "Detail": json.dumps(e, default=str),
                "EventBusName": bus,
            }
            for e in chunk
        ]
        try:
            answer = _events_client().put_events(Entries=entries)
            failed += int(answer.get("FailedEntryCount", 0))
        except Exception:  # publishing is best effort; the decision is already stored
            logger.exception("could not publish FraudDetected events", extra={"count": len(chunk)})
            failed += len(chunk)
    if failed:
        metrics.add_metric(name="AlertPublishFailures", unit=MetricUnit.Count, value=failed)
    return failed
