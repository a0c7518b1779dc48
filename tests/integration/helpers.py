"""Small builders shared by the integration tests."""

from __future__ import annotations

import itertools
import json
from decimal import Decimal
from typing import Any

from txguard import db
from txguard.detection import detector_cache as rule_cache
from txguard.domain import DecidedTransaction as Judged
from txguard.domain import StoreResult, Transaction
from txguard.ingest import store_transactions
from txguard.queries import recompute_window
from txguard.storage.rule_sets import apply_rule_set
from txguard_dev.local.runner import FunctionRunner

T0 = 1_700_000_000_000
_ids = itertools.count(1)


def tx(account_id: int, ts: int, amount: str, merchant_id: str | None = None, tid: int | None = None) -> Transaction:
    return Transaction(next(_ids) if tid is None else tid, account_id, ts, Decimal(amount), "EUR", merchant_id)


def store(batch: list[Transaction]) -> list[StoreResult]:
    return db.run_in_transaction(lambda cur: store_transactions(cur, batch, rule_cache.current(cur, 0)))


def recompute(account_id: int) -> list[Judged]:
    """The account's whole history re-decided, in time order."""
    return db.run_in_transaction(
        lambda cur: recompute_window(cur, account_id, rule_cache.current(cur, 0), None, 10**9)[0]
    )


def apply_rules(
    database: Any,
    rules: list[dict[str, Any]],
    threshold: str = "0.5",
    features: dict[str, Any] | None = None,
    **options: Any,
) -> None:
    """Store a rule set; `options`: more of its top-level fields (review_threshold, model_review_threshold, ...)."""
    import psycopg2

    document: dict[str, Any] = {"threshold": threshold, "rules": rules, **options}
    if features is not None:
        document["features"] = features
    conn = psycopg2.connect(database.admin_url)
    try:
        with conn, conn.cursor() as cur:
            apply_rule_set(cur, document, "test")
    finally:
        conn.close()
    rule_cache.clear()


def rule(rule_id: str, when: str, score: str | None = "1", **extra: Any) -> dict[str, Any]:
    """A rule's document; `score` None leaves the weight out (a rule of an action other than `score`)."""
    found = {"id": rule_id, "description": rule_id, "when": when, **extra}
    return found if score is None else found | {"score": score}


def stats(database: Any, account_id: int) -> tuple[Any, ...]:
    """The account's running totals: (count, first_ts, last_ts, ((currency, count, sum, sum of squares, max,
    max_ts), ...)); () for an account never locked."""
    rows = database.query("SELECT tx_count, first_ts, last_ts FROM account_stats WHERE account_id = %s", (account_id,))
    amounts = database.query(
        "SELECT currency, tx_count, amount_sum, amount_sum_sq, amount_max, amount_max_ts "
        "FROM account_currency_stats WHERE account_id = %s ORDER BY currency",
        (account_id,),
    )
    return (*rows[0], tuple(amounts)) if rows else ()


def sql_decisions(database: Any, account_id: int) -> dict[int, tuple[bool, Decimal, list[str], list[str]]]:
    rows = database.query(
        "SELECT transaction_id, fraud, score, rule_ids, shadow_rule_ids FROM detect_fraud(%s)", (account_id,)
    )
    return {r[0]: (r[1], r[2], sorted(r[3]), sorted(r[4])) for r in rows}


def python_decisions(judged: list[Judged]) -> dict[int, tuple[bool, Decimal, list[str], list[str]]]:
    return {
        j.transaction.transaction_id: (
            j.decision.fraud,
            j.decision.score,
            sorted(r.rule_id for r in j.decision.reasons if r.mode == "active"),
            sorted(r.rule_id for r in j.decision.reasons if r.mode == "shadow"),
        )
        for j in judged
    }


def sql_features(database: Any, account_id: int, time_zone: str, delay_days: int) -> dict[int, dict[str, Any]]:
    """transaction_features of the account, by transaction id; numbers read exactly (as Decimal)."""
    rows = database.query(
        "SELECT transaction_id, features::text FROM transaction_features(%s, %s, %s)",
        (account_id, time_zone, delay_days),
    )
    return {r[0]: json.loads(r[1], parse_float=Decimal) for r in rows}


def rebuild_merchant_label_daily(database: Any) -> None:
    """merchant_label_daily re-derived from its definition (the merchant_label_steps view)."""
    database.execute(
        "DELETE FROM merchant_label_daily; INSERT INTO merchant_label_daily "
        "SELECT merchant_id, tx_day, known_day, frauds FROM merchant_label_steps"
    )


def invoke(runner: FunctionRunner, function: str, event: dict[str, Any]) -> dict[str, Any]:
    """Call a function with an API Gateway event; its response, the body parsed under "json". Fails the test when
    the function raised."""
    result = runner.call(function, event)
    assert not result.failed, result.output
    response: dict[str, Any] = json.loads(result.output)
    response["json"] = json.loads(response["body"])
    return response
