"""One presenter per outward shape: the JSON of a transaction, a decision, a stored batch's results, a listed
transaction, and a flagged transaction (as the API's `events` and as the FraudDetected event's `detail`, which
agree field for field). Amounts have the transaction currency's decimal places; scores are 0-1 as text.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

from txguard.currencies import MINOR_UNITS, money
from txguard.domain import (
    ATTRIBUTES,
    OUTCOMES,
    DecidedTransaction,
    Decision,
    LabelResult,
    StoredLabel,
    StoreResult,
    Transaction,
)
from txguard.features import FEATURES, features_json


def transaction_json(t: Transaction) -> dict[str, Any]:
    """A transaction as stored, its optional attributes (ATTRIBUTES, in order) null when absent."""
    # One dict literal, not a merge of attributes_json: a batch's response builds one per transaction.
    channel, country, merchant_category, card_id, ip_address, device_id, metadata = t.attributes()
    return {
        "account_id": t.account_id,
        "transaction_id": t.transaction_id,
        "timestamp": t.ts,
        "amount": money(t.amount, t.currency),
        "currency": t.currency,
        "merchant_id": t.merchant_id,
        "channel": channel,
        "country": country,
        "merchant_category": merchant_category,
        "card_id": card_id,
        "ip_address": ip_address,
        "device_id": device_id,
        "metadata": metadata,
    }


def attributes_json(t: Transaction) -> dict[str, Any]:
    """The optional attributes by name, null when absent."""
    return dict(zip(ATTRIBUTES, t.attributes(), strict=True))


def decision_json(d: Decision) -> dict[str, Any]:
    return {
        "fraud": d.fraud,
        "outcome": d.outcome,
        "score": str(d.score),
        "reasons": orjson.Fragment(d.reasons_text),  # the JSON text the decision was stored with
        "rule_set_version": d.rule_set_version,
        **model_json(d),
    }


def model_json(d: Decision) -> dict[str, Any]:
    """What a decision records of its detector version and models: the champion's probability 0–1 at full
    precision (null when no champion scored) and its threshold, why it was not used, the shadows' probabilities
    by version."""
    return {
        "detector_version": d.detector_version,
        "model_version": d.model_version,
        "model_score": d.model_score,
        "model_threshold": d.model_threshold,
        "model_fallback": d.model_fallback,
        "shadow_scores": None if d.shadow_scores is None else {str(v): p for v, p in sorted(d.shadow_scores.items())},
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


def store_results_text(results: list[StoreResult]) -> orjson.Fragment:
    """A stored batch's results in the full form, as JSON text: the bytes orjson writes for
    store_results_json(results), built without the per-row dicts (see result_members)."""
    return _objects(result_members(results))


def result_members(results: list[StoreResult]) -> list[str]:
    """Each result's members in the full form, as JSON text without the braces (so that a per-item answer can put
    its `index` first): the text orjson writes for a store_results_json item, byte for byte.

    A batch's answer is built per row thousands of times: each distinct decision (by identity) is written once,
    the fields a row always has are written as text, and what can hold any text (merchant_id, the attributes)
    goes through orjson, written as a constant when the row has none of it."""
    decisions: dict[int, str] = {}
    currencies: dict[str, tuple[str, int]] = {}
    members: list[str] = []
    append = members.append
    for r in results:
        t = r.transaction
        decision = decisions.get(id(r.decision))
        if decision is None:
            decision = decisions[id(r.decision)] = decision_text(r.decision)
        known = currencies.get(t.currency)
        if known is None:
            known = currencies[t.currency] = (orjson.dumps(t.currency).decode(), MINOR_UNITS.get(t.currency, 4))
        currency, places = known
        # An amount that already has its currency's places (intake quantizes them) is money()'s text as it is:
        # plain digits, with `places` of them after the point (no exponent).
        amount = str(t.amount)
        if not (
            amount.isdigit()
            if places == 0
            else len(amount) > places and amount[-places - 1] == "." and "E" not in amount and "e" not in amount
        ):
            amount = money(t.amount, t.currency)
        tail = _NO_TAIL_TEXT if t[5:] == _NO_TAIL else _tail_text(t)
        # The ids and the timestamp are int64 (intake), which str writes as orjson does; an amount is digits.
        append(
            f'"transaction_id":{t.transaction_id},"status":"{r.status}","transaction":{{"account_id":{t.account_id},'
            f'"transaction_id":{t.transaction_id},"timestamp":{t.ts},"amount":"{amount}",'
            f'"currency":{currency}{tail}}},"decision":{decision}'
        )
    return members


# A transaction's fields from merchant_id on (Transaction's order, as transaction_json shows them), and their text
# when all are absent: most rows of a batch have none, or the same few.
_TAIL_FIELDS = ("merchant_id", *ATTRIBUTES)
_NO_TAIL = (None,) * len(_TAIL_FIELDS)
_NO_TAIL_TEXT = "".join(f',"{name}":null' for name in _TAIL_FIELDS)


def _tail_text(t: Transaction) -> str:
    return "," + orjson.dumps(dict(zip(_TAIL_FIELDS, t[5:], strict=True)))[1:-1].decode()


# What model_json writes for a decision of rules alone (no model fields, no shadows), after its detector version.
_RULES_ONLY_MODEL = "".join(
    f',"{name}":null' for name in ("model_version", "model_score", "model_threshold", "model_fallback", "shadow_scores")
)


def decision_text(d: Decision) -> str:
    """decision_json(d) as orjson writes it, byte for byte (reasons as the stored JSON text)."""
    if (
        d.model_version is None
        and d.model_score is None
        and d.model_threshold is None
        and d.model_fallback is None
        and d.shadow_scores is None
        and (d.detector_version is None or type(d.detector_version) is int)
    ):
        model = f'"detector_version":{"null" if d.detector_version is None else d.detector_version}{_RULES_ONLY_MODEL}'
    else:
        model = orjson.dumps(model_json(d))[1:-1].decode()
    fraud = "true" if d.fraud is True else "false" if d.fraud is False else _json_text(d.fraud)
    outcome = _QUOTED_OUTCOMES.get(d.outcome) or _json_text(d.outcome)
    # A Decimal's text is digits, point, sign and exponent: nothing JSON escapes.
    score = '"' + str(d.score) + '"' if type(d.score) is Decimal else _json_text(str(d.score))
    version = d.rule_set_version if type(d.rule_set_version) is int else _json_text(d.rule_set_version)
    return (
        f'{{"fraud":{fraud},"outcome":{outcome},"score":{score},"reasons":{d.reasons_text},'
        f'"rule_set_version":{version},{model}}}'
    )


_QUOTED_OUTCOMES = {o: f'"{o}"' for o in OUTCOMES}


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def store_decisions_json(results: list[StoreResult]) -> orjson.Fragment:
    """The compact form of a stored batch's results (`response=decisions`), as JSON text: per result, in order,
    `{"transaction_id", "status", "outcome", "score"}` (score 0-1, four places, as text)."""
    return _objects(decision_members(results))


def _objects(members: list[str]) -> orjson.Fragment:
    """A JSON array of objects, from each object's members."""
    return orjson.Fragment("[{" + "},{".join(members) + "}]" if members else "[]")


def decision_members(results: list[StoreResult]) -> list[str]:
    """Each result's members in the compact form, as JSON text without the braces (so that a per-item answer can
    put its `index` first). Written as text, each distinct decision's part once: a batch's rows are thousands,
    its distinct decisions few."""
    tails: dict[int, str] = {}
    members = []
    for r in results:
        tail = tails.get(id(r.decision))
        if tail is None:
            tail = tails[id(r.decision)] = f',"outcome":"{r.decision.outcome}","score":"{r.decision.score}"'
        members.append(f'"transaction_id":{r.transaction.transaction_id},"status":"{r.status}"{tail}')
    return members


def listed_json(j: DecidedTransaction) -> dict[str, Any]:
    return {**transaction_json(j.transaction), "decision": decision_json(j.decision)}


def fraud_event_json(j: DecidedTransaction, with_features: bool = False) -> dict[str, Any]:
    """A flagged transaction in GET /is_fraud's `events` (serialised by orjson: reasons as stored JSON text); with
    `features` (exact numbers, by name; null for a decision stored before features were kept) when asked."""
    event = _flagged(j.transaction, j.decision, orjson.Fragment(j.decision.reasons_text))
    if with_features:
        event["features"] = (
            None
            if j.features is None
            else orjson.Fragment(features_json(j.features, sorted(n for n in j.features if n in FEATURES)))
        )
    return event


def fraud_detected_detail(t: Transaction, d: Decision) -> dict[str, Any]:
    """The FraudDetected event's detail: an `events` item plus the account id, plain JSON types only."""
    return {"account_id": t.account_id, **_flagged(t, d, d.reasons_json)}


def _flagged(t: Transaction, d: Decision, reasons: Any) -> dict[str, Any]:
    return {
        "transaction_id": t.transaction_id,
        "timestamp": t.ts,
        "amount": money(t.amount, t.currency),
        "currency": t.currency,
        "merchant_id": t.merchant_id,
        **attributes_json(t),
        "outcome": d.outcome,
        "score": str(d.score),
        "reasons": reasons,
        "rule_set_version": d.rule_set_version,
        **model_json(d),
    }


def label_json(s: StoredLabel) -> dict[str, Any]:
    """A stored label: times in epoch ms; `in_force` when it is its transaction's latest (by labelled_at, label_id)."""
    return {
        "label_id": s.label_id,
        "transaction_id": s.transaction_id,
        "fraud": s.fraud,
        "source": s.source,
        "labelled_at": s.labelled_at_ms,
        "reason": s.reason,
        "received_at": s.received_at_ms,
        "in_force": s.in_force,
    }


def label_results_json(results: list[LabelResult]) -> list[dict[str, Any]]:
    """One item per label sent, in request order: its status and the label as stored."""
    return [
        {"transaction_id": r.label.transaction_id, "status": r.status, "label": label_json(r.label)} for r in results
    ]


def label_ids_json(results: list[LabelResult]) -> list[dict[str, Any]]:
    """The compact form of POST /labels' results (`response=ids`): per label sent, in request order,
    `{"transaction_id", "status", "label_id", "in_force"}`."""
    return [
        {
            "transaction_id": r.label.transaction_id,
            "status": r.status,
            "label_id": r.label.label_id,
            "in_force": r.label.in_force,
        }
        for r in results
    ]
