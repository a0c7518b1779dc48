"""What the API functions do, independent of HTTP: store a batch, read an account, list transactions, read the
model registry.

Storing has two modes: `store` is atomic (every item stored, or none: the HTTP API's contract), `store_each`
answers per item (a transport that must report each record, such as a stream consumer, uses it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from txguard import outbox
from txguard.db import run_in_transaction
from txguard.detection import detector_cache
from txguard.domain import FraudLabel, LabelResult, StoredLabel, StoreResult, Transaction
from txguard.errors import NotFound
from txguard.ingest import DuplicateIdConflict, store_transactions, store_unless_busy
from txguard.intake import Checked, Problem, check_items
from txguard.observability import logger, metrics, tracer
from txguard.presenters import fraud_detected_detail
from txguard.queries import Page, flagged_transactions, list_transactions, recomputed_flagged
from txguard.settings import service_settings
from txguard.storage import labels as label_storage
from txguard.storage import models as model_storage
from txguard.storage.models import ModelVersion, Status
from txguard.storage.transactions import account_exists, any_flagged


@dataclass(frozen=True)
class AccountView:
    # Stored decisions: any transaction of the account flagged, on any page. Recomputed: any on this page (a
    # request re-decides a bounded window of the history; see queries.RECOMPUTE_WINDOW).
    fraud: bool
    page: Page


class AccountNotFound(NotFound):
    code = "account_not_found"

    def __init__(self, account_id: int) -> None:
        super().__init__(f"account {account_id} has no transactions")
        self.account_id = account_id


@tracer.capture_method(capture_response=False, capture_error=False)
def store(batch: list[Transaction], remaining_ms: Callable[[], int] | None = None) -> list[StoreResult]:
    """Store a batch exactly once with its decisions; results in request order.

    The FraudDetected alerts of newly flagged transactions are committed with them (the outbox), then
    published within the call's budget (`remaining_ms`: the invocation's remaining time in ms, if any).
    Raises DuplicateIdConflict (nothing stored) and DatabaseUnavailable (nothing stored, retry); a failure
    to publish is never raised: the alert stays in the outbox for a later drain.
    """
    return [r for r in _store(batch, remaining_ms, skip_busy=False) if r is not None]


def _store(
    batch: list[Transaction], remaining_ms: Callable[[], int] | None, skip_busy: bool
) -> list[StoreResult | None]:
    """`store`; with `skip_busy`, accounts another transaction holds are not waited for (ingest.store_unless_busy:
    None in the results for their transactions not stored yet)."""
    max_age = service_settings().rules_cache_seconds  # also how long a detector version is kept
    store_batch = store_unless_busy if skip_busy else store_transactions

    def work(cur: Any) -> tuple[Sequence[StoreResult | None], list[outbox.Claimed]]:
        results = store_batch(cur, batch, detector_cache.current(cur, max_age), detector_cache.lists())
        flagged = [
            fraud_detected_detail(r.transaction, r.decision)
            for r in results
            if r is not None and r.status == "stored" and r.decision.fraud
        ]
        return results, outbox.enqueue(cur, flagged)

    results, claimed = run_in_transaction(work)
    stored = [r for r in results if r is not None and r.status == "stored"]
    duplicates = sum(1 for r in results if r is not None and r.status == "duplicate")
    flagged = sum(1 for r in stored if r.decision.fraud)
    metrics.add_metric(name="TransactionsStored", unit=MetricUnit.Count, value=len(stored))
    metrics.add_metric(name="DuplicateTransactions", unit=MetricUnit.Count, value=duplicates)
    metrics.add_metric(name="FraudDetected", unit=MetricUnit.Count, value=flagged)
    # Decisions waiting for an analyst (outcome review: no FraudDetected event, the console's review queue).
    reviewed = sum(1 for r in stored if r.decision.outcome == "review")
    metrics.add_metric(name="ReviewDecisions", unit=MetricUnit.Count, value=reviewed)
    # Decisions the rules took alone because the champion could not be loaded (an alarm watches it).
    fallbacks = sum(1 for r in stored if r.decision.model_fallback is not None)
    if fallbacks:
        metrics.add_metric(name="ModelUnavailable", unit=MetricUnit.Count, value=fallbacks)
        why = next(r.decision.model_fallback for r in stored if r.decision.model_fallback is not None)
        logger.warning("decided by the rules alone", extra={"decisions": fallbacks, "why": why})
    extra = {"stored": len(stored), "duplicates": duplicates, "flagged": flagged, "review": reviewed}
    if skip_busy:
        extra["busy"] = len(results) - len(stored) - duplicates
    logger.info("transactions stored", extra=extra)
    if claimed:
        outbox.publish(claimed, remaining_ms)
    return list(results)


@dataclass(frozen=True)
class ItemOutcome:
    """One item of `store_each`, by its index: its `result` (stored or duplicate), or, when refused, the
    error `code` (validation_error, transaction_id_conflict) and its problems, or (`store_checked` with
    `skip_busy` only) `busy`: its account was held by another transaction, nothing stored, to be tried again."""

    index: int
    result: StoreResult | None
    code: str | None = None
    problems: tuple[Problem, ...] = ()
    busy: bool = False


def store_each(items: Sequence[Any], remaining_ms: Callable[[], int] | None = None) -> list[ItemOutcome]:
    """Per-item mode: each decoded JSON item validated on its own (intake.check_items), the valid ones stored
    exactly once in one database transaction, an item whose transaction_id conflicts (with a stored one, or
    with an earlier item) refused alone. Outcomes in item order.

    Raises DatabaseUnavailable (nothing stored; retrying the whole sequence is safe: what was stored by an
    earlier try comes back as `duplicate`).
    """
    return store_checked(check_items(items), remaining_ms)


@tracer.capture_method(capture_response=False, capture_error=False)
def store_checked(
    items: Sequence[Checked], remaining_ms: Callable[[], int] | None = None, skip_busy: bool = False
) -> list[ItemOutcome]:
    """`store_each` for items already validated (intake.check_items): the valid ones stored exactly once in one
    database transaction, a conflicting one refused alone; outcomes in index order. Raises DatabaseUnavailable.

    `skip_busy` (the stream path): an account that another transaction holds is not waited for; its items come
    back `busy` (none of them stored) and the other accounts' are stored. Without it (the API), the call waits
    for the lock as `store` does."""
    outcomes: dict[int, ItemOutcome] = {}
    pending: dict[int, Transaction] = {}
    for checked in items:
        if checked.transaction is None:
            outcomes[checked.index] = ItemOutcome(checked.index, None, "validation_error", checked.problems)
        else:
            pending[checked.index] = checked.transaction
    while pending:
        indices = list(pending)
        try:
            results = _store([pending[i] for i in indices], remaining_ms, skip_busy)
        except DuplicateIdConflict as conflict:
            # Each try refuses at least one more item, so this ends; the others are stored by a later try.
            for detail in conflict.details:
                index = indices[detail["index"]]
                refused = (Problem(detail["field"], detail["value"], detail["reason"]),)
                outcomes[index] = ItemOutcome(index, None, conflict.code, refused)
                del pending[index]
            continue
        outcomes.update(
            (i, ItemOutcome(i, result, busy=result is None)) for i, result in zip(indices, results, strict=True)
        )
        break
    return [outcomes[i] for i in sorted(outcomes)]


@tracer.capture_method(capture_response=False, capture_error=False)
def account_view(
    account_id: int,
    limit: int,
    cursor: str | None,
    recompute: bool,
    with_features: bool = False,
    outcome: str = "block",
) -> AccountView:
    """The account's transactions of `outcome` (block: flagged), newest first: stored decisions, or re-decided with
    today's rules; each with the features it was decided on when `with_features` (stored ones: as stored at ingest).
    `fraud` says whether any is blocked (recomputed: any of this page, when `outcome` is block).

    Raises AccountNotFound, InvalidCursor, DatabaseUnavailable.
    """

    def read(cur: Any) -> AccountView:
        if not account_exists(cur, account_id):
            raise AccountNotFound(account_id)
        if not recompute:
            return AccountView(
                any_flagged(cur, account_id),
                flagged_transactions(cur, account_id, limit, cursor, with_features, outcome),
            )
        detector = detector_cache.current(cur, service_settings().rules_cache_seconds)
        page = recomputed_flagged(cur, account_id, detector, limit, cursor, outcome)
        return AccountView(any(j.decision.fraud for j in page.items), page)

    view = run_in_transaction(read)
    logger.info("account read", extra={"fraud": view.fraud, "events": len(view.page.items), "recompute": recompute})
    return view


@tracer.capture_method(capture_response=False, capture_error=False)
def listing(account_id: int | None, from_ms: int | None, to_ms: int | None, limit: int, cursor: str | None) -> Page:
    return run_in_transaction(lambda cur: list_transactions(cur, account_id, from_ms, to_ms, limit, cursor))


@tracer.capture_method(capture_response=False, capture_error=False)
def store_labels(batch: Sequence[FraudLabel]) -> list[LabelResult]:
    """Store a batch of labels all or nothing, each exactly once (see storage.labels.write_labels); results in
    request order. A label without labelled_at is known now. Raises DatabaseUnavailable (nothing stored, retry)."""
    now_ms = int(time.time() * 1000)
    results = run_in_transaction(lambda cur: label_storage.write_labels(cur, batch, now_ms))
    stored = sum(1 for r in results if r.status == "stored")
    metrics.add_metric(name="LabelsStored", unit=MetricUnit.Count, value=stored)
    metrics.add_metric(name="DuplicateLabels", unit=MetricUnit.Count, value=len(results) - stored)
    logger.info("labels stored", extra={"stored": stored, "duplicates": len(results) - stored})
    return results


@dataclass(frozen=True)
class LabelPage:
    items: list[StoredLabel]
    next_cursor: str | None


@tracer.capture_method(capture_response=False, capture_error=False)
def label_listing(transaction_id: int | None, account_id: int | None, limit: int, cursor: str | None) -> LabelPage:
    """Labels of one transaction or of one account's stored transactions, in order of receipt, a page at a time.
    Raises InvalidLabelCursor, DatabaseUnavailable."""
    after = label_storage.decode_cursor(cursor) if cursor else None
    rows = run_in_transaction(lambda cur: label_storage.listed(cur, transaction_id, account_id, after, limit + 1))
    if len(rows) <= limit:
        return LabelPage(rows, None)
    return LabelPage(rows[:limit], label_storage.encode_cursor(rows[limit - 1].label_id))


@dataclass(frozen=True)
class ModelPage:
    items: list[ModelVersion]
    next_before: int | None  # pass as `before` for the next page; None on the last


@tracer.capture_method(capture_response=False, capture_error=False)
def model_listing(status: Status | None, before: int | None, limit: int) -> ModelPage:
    """Registered model versions, newest first, optionally of one status, below version `before`; a page of at
    most `limit`. Raises DatabaseUnavailable."""
    rows = run_in_transaction(lambda cur: model_storage.list_versions(cur, status, limit + 1, before))
    if len(rows) <= limit:
        return ModelPage(rows, None)
    return ModelPage(rows[:limit], rows[limit - 1].version)


@tracer.capture_method(capture_response=False, capture_error=False)
def model_version(version: str) -> ModelVersion:
    """One registered version (a number, or `latest`), with its metrics and threshold table. Raises
    InvalidModelVersion, ModelNotFound, DatabaseUnavailable."""
    wanted = model_storage.parse_version(version)
    return run_in_transaction(lambda cur: model_storage.get(cur, wanted))
