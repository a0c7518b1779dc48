"""FraudDetected events on EventBridge: the client and one PutEvents call.

What to publish and when (at least once, within the invocation's time) is decided by txguard/outbox.py.
The client waits at most CONNECT_TIMEOUT_S + READ_TIMEOUT_S per call and never retries by itself: a slow
or unreachable EventBridge must not hold an API request (API Gateway gives up after 29 s), and the outbox
retries later with backoff.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from txguard.settings import service_settings

ENTRIES_PER_CALL = 10  # PutEvents limit
CONNECT_TIMEOUT_S = 1.0
READ_TIMEOUT_S = 1.0
# The longest one put_events call can take; a drain starts a call only when this much time is left.
CALL_BOUND_MS = int((CONNECT_TIMEOUT_S + READ_TIMEOUT_S) * 1000) + 100

_client: Any = None


def _events_client() -> Any:
    global _client
    if _client is None:
        import boto3  # ~120 ms to import: only paid once a fraud has to be published
        from botocore.config import Config

        _client = boto3.client(
            "events",
            config=Config(
                connect_timeout=CONNECT_TIMEOUT_S,
                read_timeout=READ_TIMEOUT_S,
                retries={"total_max_attempts": 1},
            ),
        )
    return _client


def reset_client() -> None:
    global _client
    _client = None


def put_fraud_detected(details: Sequence[dict[str, Any]]) -> list[bool]:
    """Send up to ENTRIES_PER_CALL FraudDetected events in one PutEvents call.

    Returns, per event in order, whether EventBridge accepted it. Raises whatever botocore raises when the
    call itself fails (timeout, connection refused, access denied): then none is known to be published.
    With no bus configured (TXGUARD_EVENT_BUS_NAME unset) nothing is sent and every event counts as done.
    """
    if len(details) > ENTRIES_PER_CALL:
        raise ValueError(f"at most {ENTRIES_PER_CALL} events per call, got {len(details)}")
    bus = service_settings().event_bus_name
    if not bus or not details:
        return [True] * len(details)
    entries = [
        {"Source": "txguard", "DetailType": "FraudDetected", "Detail": json.dumps(d, default=str), "EventBusName": bus}
        for d in details
    ]
    answer = _events_client().put_events(Entries=entries)
    accepted = answer.get("Entries") or []  # one per entry, in order; an entry with an ErrorCode failed
    return [i < len(accepted) and not accepted[i].get("ErrorCode") for i in range(len(entries))]
