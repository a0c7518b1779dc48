"""What the API functions do, independent of HTTP: store a batch, read an account, list transactions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from txguard.alerts import publish_fraud_detected
from txguard.db import run_in_transaction
from txguard.detection import Transaction
from txguard.ingest import StoreResult, store_transactions
from txguard.observability import logger, metrics, tracer
from txguard.queries import (
    Page,
    account_exists,
    any_flagged,
    flagged_transactions,
    list_transactions,
    recomputed_flagged,
)
from txguard.rule_store import rule_cache
from txguard.settings import service_settings


@dataclass(frozen=True)
class AccountView:
    # Stored decisions: any transaction of the account flagged, on any page. Recomputed: any on this page (a
    # request re-decides a bounded window of the history; see queries.RECOMPUTE_WINDOW).
    fraud: bool
    page: Page


class AccountNotFound(Exception):
    def __init__(self, account_id: int) -> None:
        super().__init__(f"account {account_id} has no transactions")
        self.account_id = account_id


@tracer.capture_method
def store(batch: list[Transaction]) -> list[StoreResult]:
    max_age = service_settings().rules_cache_seconds
    results = run_in_transaction(lambda cur: store_transactions(cur, batch, rule_cache.current(cur, max_age)))
    stored = [r for r in results if r.status == "stored"]
    flagged = [r for r in stored if r.decision.fraud]
    metrics.add_metric(name="TransactionsStored", unit=MetricUnit.Count, value=len(stored))
    metrics.add_metric(name="DuplicateTransactions", unit=MetricUnit.Count, value=len(results) - len(stored))
    metrics.add_metric(name="FraudDetected", unit=MetricUnit.Count, value=len(flagged))
    logger.info(
        "transactions stored",
        extra={"stored": len(stored), "duplicates": len(results) - len(stored), "flagged": len(flagged)},
    )
    publish_fraud_detected([fraud_event(r) for r in flagged])
    return results


def fraud_event(result: StoreResult) -> dict[str, Any]:
    t, d = result.transaction, result.decision
    return {
        "account_id": t.account_id,
        "transaction_id": t.transaction_id,
        "timestamp": t.ts,
        "amount": str(t.amount),
        "currency": t.currency,
        "merchant_id": t.merchant_id,
        "score": str(d.score),
        "rule_set_version": d.rule_set_version,
        "reasons": d.reasons_json,
    }


@tracer.capture_method
def account_view(account_id: int, limit: int, cursor: str | None, recompute: bool) -> AccountView:
    """The account's flagged transactions, newest first: stored decisions, or re-decided with today's rules.

    Raises AccountNotFound, InvalidCursor, DatabaseUnavailable.
    """

    def read(cur: Any) -> AccountView:
        if not account_exists(cur, account_id):
            raise AccountNotFound(account_id)
        if not recompute:
            return AccountView(any_flagged(cur, account_id), flagged_transactions(cur, account_id, limit, cursor))
        rules = rule_cache.current(cur, service_settings().rules_cache_seconds)
        page = recomputed_flagged(cur, account_id, rules, limit, cursor)
        return AccountView(bool(page.items), page)

    view = run_in_transaction(read)
    logger.info("account read", extra={"fraud": view.fraud, "events": len(view.page.items), "recompute": recompute})
    return view


@tracer.capture_method
def listing(account_id: int | None, from_ms: int | None, to_ms: int | None, limit: int, cursor: str | None) -> Page:
    return run_in_transaction(lambda cur: list_transactions(cur, account_id, from_ms, to_ms, limit, cursor))
