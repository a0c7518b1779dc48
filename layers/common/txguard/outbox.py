"""FraudDetected alerts, at least once: an outbox table written with the transactions, drained with retries.

1. `enqueue` runs inside the unit of work that stores a batch: one row per newly stored, flagged
   transaction goes into `alert_outbox` in the same database transaction. The same statement claims a
   bounded number of older due rows, so each ingest call also helps with what earlier calls left.
2. After the commit, the ingest call publishes what it claimed (`publish`), within its time budget:
   at most TXGUARD_ALERT_PUBLISH_BUDGET_MS, and never past the invocation's remaining time less a reserve
   for answering. Accepted rows are deleted; the others stay and become due again.
3. The ingest function's `DrainAlerts` schedule (every minute) runs `drain`: due rows, claimed and
   published in chunks until the invocation's time runs short. It is what guarantees delivery when no
   ingest call follows, when an invocation died after its commit, or when its acknowledgement was lost.

Claiming a row moves its `next_attempt_at` forward (a lease that doubles with each attempt, from
LEASE_BASE_S up to LEASE_MAX_S), so concurrent drains skip it; a publisher that fails or vanishes simply
lets the lease run out. An event may therefore be published twice (a crash between PutEvents and the
DELETE): consumers deduplicate on `transaction_id`. After a failed call the request path stops
publishing for PAUSE_AFTER_FAILURE_S in this execution environment, so an EventBridge outage costs one
timed-out call per pause, not one per request; the scheduled drain keeps trying.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2.extensions
from aws_lambda_powertools.metrics import MetricUnit

from txguard import alerts
from txguard.db import run_in_transaction
from txguard.observability import logger, metrics, tracer
from txguard.settings import service_settings
from txguard.storage import outbox as outbox_table
from txguard.storage.outbox import Claimed as Claimed

LEASE_BASE_S = 60  # longer than any one drain (the functions' timeout is 29 s): no double claim in flight
LEASE_MAX_S = 3600
CLAIM_ON_INGEST = 20  # older due rows an ingest call takes along
PAUSE_AFTER_FAILURE_S = 30.0
RESERVE_MS = 1000  # left for answering the request or ending the invocation

_paused_until = 0.0


@dataclass(frozen=True)
class DrainResult:
    published: int
    failed: int  # attempted and not accepted; retried once their lease ends
    left: int  # claimed but not attempted for want of time; retried once their lease ends


def enqueue(cur: psycopg2.extensions.cursor, details: Sequence[dict[str, Any]]) -> list[Claimed]:
    """Inside the caller's unit of work: add one outbox row per event detail (each must hold `transaction_id`;
    a transaction already in the outbox is not added twice) and claim up to CLAIM_ON_INGEST older due rows.

    Returns the rows the caller should pass to `publish` after its commit: the new ones and the claimed
    ones, unless publishing is paused after a recent failure (then nothing is claimed and the new rows are
    due at once for the scheduled drain). With no event bus configured nothing is written.
    """
    if not service_settings().event_bus_name:
        return []
    claim = 0 if _paused() else CLAIM_ON_INGEST
    if not details and not claim:
        return []
    return outbox_table.claim(cur, details, claim, LEASE_BASE_S, LEASE_MAX_S)


def publish(claimed: Sequence[Claimed], remaining_ms: Callable[[], int] | None = None) -> DrainResult:
    """After the commit: publish claimed rows within the request's budget, delete the accepted ones.

    `remaining_ms` is the invocation's `context.get_remaining_time_in_millis` (None outside Lambda).
    Never raises for EventBridge's or the database's sake: what is not published stays in the outbox.
    """
    budget_ms = service_settings().alert_publish_budget_ms
    if remaining_ms is not None:
        budget_ms = min(budget_ms, remaining_ms() - RESERVE_MS)
    result = _publish(claimed, time.monotonic() + budget_ms / 1000)
    if result.failed:
        global _paused_until
        _paused_until = time.monotonic() + PAUSE_AFTER_FAILURE_S
    return result


@tracer.capture_method(capture_response=False, capture_error=False)
def drain(remaining_ms: Callable[[], int]) -> DrainResult:
    """The scheduled drain: claim and publish due rows, ENTRIES_PER_CALL at a time, while time is left.

    Stops at the first failed call (EventBridge is then unlikely to do better at once) or when fewer than
    one call's bound plus the reserve remain. Database trouble is raised (DatabaseUnavailable).
    """
    if not service_settings().event_bus_name:
        return DrainResult(0, 0, 0)
    published = failed = left = 0
    while remaining_ms() - RESERVE_MS > alerts.CALL_BOUND_MS:
        claimed = run_in_transaction(
            lambda cur: outbox_table.claim(cur, (), alerts.ENTRIES_PER_CALL, LEASE_BASE_S, LEASE_MAX_S)
        )
        if not claimed:
            break
        result = _publish(claimed, time.monotonic() + (remaining_ms() - RESERVE_MS) / 1000)
        published, failed, left = published + result.published, failed + result.failed, left + result.left
        if result.failed or result.left:
            break
    logger.info("alert outbox drained", extra={"published": published, "failed": failed, "left": left})
    return DrainResult(published, failed, left)


def is_scheduled_event(event: dict[str, Any]) -> bool:
    """Whether the ingest function was invoked by its DrainAlerts schedule rather than by API Gateway."""
    return event.get("source") == "aws.events" and event.get("detail-type") == "Scheduled Event"


def drain_alerts(context: Any) -> dict[str, int]:
    """The DrainAlerts schedule's entry point: `drain` within the invocation's remaining time.

    Returns {"published", "failed", "left"} counts; raises DatabaseUnavailable (the schedule retries).
    """
    result = drain(context.get_remaining_time_in_millis)
    return {"published": result.published, "failed": result.failed, "left": result.left}


def _publish(claimed: Sequence[Claimed], deadline: float) -> DrainResult:
    done: list[int] = []
    failed = 0
    start = 0
    while start < len(claimed):
        if (deadline - time.monotonic()) * 1000 < alerts.CALL_BOUND_MS:
            break
        chunk = claimed[start : start + alerts.ENTRIES_PER_CALL]
        start += len(chunk)
        try:
            accepted = alerts.put_fraud_detected([c.detail for c in chunk])
        except Exception as exc:  # any failure of the call: the rows stay in the outbox
            logger.warning(
                "could not publish FraudDetected events", extra={"count": len(chunk), "error": type(exc).__name__}
            )
            failed += len(chunk)
            break
        done += [c.id for c, ok in zip(chunk, accepted, strict=True) if ok]
        if not all(accepted):
            failed += accepted.count(False)
            break
    left = len(claimed) - start
    if done:
        _delete(done)
    if failed or left:
        metrics.add_metric(name="AlertPublishFailures", unit=MetricUnit.Count, value=failed + left)
    if done:
        metrics.add_metric(name="AlertsPublished", unit=MetricUnit.Count, value=len(done))
    return DrainResult(len(done), failed, left)


def _delete(ids: list[int]) -> None:
    try:
        run_in_transaction(lambda cur: outbox_table.delete(cur, ids))
    except Exception:  # published already; the rows are published once more when their lease ends
        logger.exception("could not delete published alerts from the outbox", extra={"count": len(ids)})


def _paused() -> bool:
    return time.monotonic() < _paused_until


def resume() -> None:
    """Forget a pause after a failure (tests, and the local runtime when it switches endpoints)."""
    global _paused_until
    _paused_until = 0.0
