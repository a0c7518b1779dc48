"""Domain objects to the JSON the API returns (amounts in the currency's decimal places)."""

from __future__ import annotations

from typing import Any

import orjson
from aws_lambda_powertools.event_handler import Response, content_types

from txguard.currencies import money
from txguard.detection import Transaction
from txguard.ingest import StoreResult
from txguard.queries import Judged
from txguard.rule_engine import Decision


def transaction_json(t: Transaction) -> dict[str, Any]:
    return {
        "account_id": t.account_id,
        "transaction_id": t.transaction_id,
        "timestamp": t.ts,
        "amount": money(t.amount, t.currency),
        "currency": t.currency,
        "merchant_id": t.merchant_id,
    }


def decision_json(d: Decision) -> dict[str, Any]:
    return {
        "fraud": d.fraud,
        "score": str(d.score),
        "reasons": orjson.Fragment(d.reasons_text),  # the JSON text the decision was stored with
        "rule_set_version": d.rule_set_version,
    }


def store_results_json(results: list[StoreResult]) -> list[dict[str, Any]]:
    """One item per result; transactions decided alike share one decision object, and its JSON."""
    decisions: dict[int, dict[str, Any]] = {}
    items = []
    for r in results:
        decision = decisions.get(id(r.decision))
        if decision is None:
            decision = decisions[id(r.decision)] = decision_json(r.decision)
        items.append(
            {
                "transaction_id": r.transaction.transaction_id,
                "status": r.status,
                "transaction": transaction_json(r.transaction),
                "decision": decision,
            }
        )
    return items


def listed_json(j: Judged) -> dict[str, Any]:
    return {**transaction_json(j.transaction), "decision": decision_json(j.decision)}


def fraud_event_json(j: Judged) -> dict[str, Any]:
    t, d = j.transaction, j.decision
    return {
        "transaction_id": t.transaction_id,
        "timestamp": t.ts,
        "amount": money(t.amount, t.currency),
        "currency": t.currency,
        "merchant_id": t.merchant_id,
        "score": str(d.score),
        "reasons": orjson.Fragment(d.reasons_text),
        "rule_set_version": d.rule_set_version,
    }


def json_response(status: int, body: dict[str, Any]) -> Response[str]:
    """Serialised here, once: Powertools would otherwise walk a large result through pydantic again."""
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=orjson.dumps(body).decode(),
    )
