"""Many clients at once against `txguard local`, re-sending and retrying as real clients do: every transaction is
stored exactly once with one decision, and what the database holds adds up to what the clients sent.

`make test` size: 8 clients × 1,000 transactions in batches of 100. TXGUARD_LOAD_SCALE=full: 16 × 5,000.
(`txguard local` runs one function invocation at a time, like one Lambda execution environment: the HTTP
server takes the clients' requests concurrently and they queue for the function.)
"""

from __future__ import annotations

import random
import threading
import time
import urllib.error
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import admin_query
from tests.e2e.conftest import LocalService
from tests.reliability.conftest import FULL_SCALE, NOW_MS, serve, stop
from txguard.domain import ATTRIBUTES

pytestmark = [pytest.mark.reliability, pytest.mark.e2e]

CLIENTS, PER_CLIENT, BATCH = (16, 5000, 100) if FULL_SCALE else (8, 1000, 100)
ACCOUNTS = 64  # shared by all clients: their batches touch the same accounts' running totals
MERCHANTS = [f"m-{k}" for k in range(12)]
CURRENCIES = {"EUR": 2, "USD": 2, "JPY": 0}
LOST_RESPONSE_RATE = 0.10  # the client never saw the answer and sends the same request again
REPLAY_RATE = 0.10  # a batch carries a few transactions that were already acknowledged
REPEAT_RATE = 0.05  # a batch names one transaction twice
SINGLES_RATE = 0.05  # the first few transactions of a batch go one request each


def make_transaction(rng: random.Random, transaction_id: int) -> dict[str, Any]:
    currency = rng.choice(list(CURRENCIES))
    places = CURRENCIES[currency]
    amount = Decimal(rng.randint(1, 500_000)).scaleb(-places)
    item: dict[str, Any] = {
        "account_id": rng.randint(1, ACCOUNTS),
        "transaction_id": transaction_id,
        "timestamp": NOW_MS - rng.randint(0, 7 * 86_400_000),
        "amount": str(amount),
        "currency": currency,
    }
    if rng.random() < 0.7:
        item["merchant_id"] = rng.choice(MERCHANTS)
    return item


@dataclass
class Client:
    """One client: sends its own transactions and knows, for each, whether the service has stored it yet."""

    number: int
    service: LocalService
    acknowledged: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> transaction, once a 201 said so
    decisions: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> the decision answered first
    statuses: Counter[int] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def run(self) -> None:
        rng = random.Random(self.number)
        first_id = (self.number + 1) * 10_000_000
        mine = [make_transaction(rng, first_id + i) for i in range(PER_CLIENT)]
        for start in range(0, len(mine), BATCH):
            batch = mine[start : start + BATCH]
            if rng.random() < SINGLES_RATE:
                for item in batch[:5]:
                    self.send([item], single=True)
                    self.requests["single"] += 1
                batch = batch[5:]
            extra = []
            if self.acknowledged and rng.random() < REPLAY_RATE:
                extra += [self.acknowledged[i] for i in rng.sample(sorted(self.acknowledged), 3)]
                self.requests["batch with acknowledged transactions"] += 1
            if rng.random() < REPEAT_RATE:
                extra.append(batch[0])
                self.requests["batch naming a transaction twice"] += 1
            items = batch + extra
            first = self.send(items)
            self.requests["batch"] += 1
            if first is not None and rng.random() < LOST_RESPONSE_RATE:
                again = self.send(items)
                self.requests["lost response, sent again"] += 1
                if again is not None and [r["status"] for r in again] != ["duplicate"] * len(items):
                    self.problems.append(f"a re-sent request was not answered as duplicates: {again[:2]}")

    def send(self, items: list[dict[str, Any]], single: bool = False) -> list[dict[str, Any]] | None:
        expected, seen_here = [], set()
        for item in items:
            tid = item["transaction_id"]
            expected.append("duplicate" if tid in self.acknowledged or tid in seen_here else "stored")
            seen_here.add(tid)
        body = items[0] if single else {"transactions": items}
        uncertain = False  # a transport error leaves it open whether the first attempt was stored
        for attempt in range(3):
            try:
                response = self.service.request("POST", "/store_data", body, timeout_s=120)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                self.requests["retried after a transport error"] += 1
                uncertain = True
                if attempt == 2:
                    self.problems.append(f"no answer after 3 attempts: {exc!r}")
                    return None
                time.sleep(0.2)
        self.statuses[response.status] += 1
        if response.status != 201:
            self.problems.append(f"{response.status} for a valid request: {response.body}")
            return None
        results: list[dict[str, Any]] = response.body["results"]
        if [r["transaction_id"] for r in results] != [i["transaction_id"] for i in items]:
            self.problems.append("results are not one per transaction in request order")
            return None
        for item, result, status in zip(items, results, expected, strict=True):
            tid = item["transaction_id"]
            if result["status"] != status and not uncertain:
                self.problems.append(f"{tid}: answered {result['status']}, expected {status}")
            # Optional fields the client left out are answered as null, as the API documents.
            sent = item | {name: item.get(name) for name in ("merchant_id", *ATTRIBUTES)}
            if result["transaction"] != sent:
                self.problems.append(f"{tid}: answered {result['transaction']}, sent {sent}")
            known = self.decisions.setdefault(tid, result["decision"])
            if known != result["decision"]:
                self.problems.append(f"{tid}: decision changed between answers: {known} then {result['decision']}")
            self.acknowledged[tid] = item
        return results


def test_concurrent_clients_with_resends_store_every_transaction_exactly_once(
    fresh_database_url: str, tmp_path: Path
) -> None:
    service = serve(fresh_database_url, tmp_path / "local.log", "--no-auth")
    try:
        clients = [Client(n, service) for n in range(CLIENTS)]
        threads = [threading.Thread(target=c.run, name=f"client-{c.number}") for c in clients]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=900)
        elapsed = time.perf_counter() - started
        assert not any(t.is_alive() for t in threads), "a client never finished"
    finally:
        stop(service)

    problems = [p for c in clients for p in c.problems]
    assert not problems, f"{len(problems)} problems, first ones: {problems[:10]}"
    statuses = sum((c.statuses for c in clients), Counter())
    assert set(statuses) == {201}, f"every answer is 201: {statuses}"

    sent = {tid: item for c in clients for tid, item in c.acknowledged.items()}
    assert len(sent) == CLIENTS * PER_CLIENT
    requests = sum((c.requests for c in clients), Counter())
    rate = len(sent) / elapsed
    print(f"\n{len(sent)} transactions from {CLIENTS} clients in {elapsed:.1f} s ({rate:.0f}/s): {dict(requests)}")

    url = fresh_database_url
    [(rows, distinct, total)] = admin_query(
        url, "SELECT count(*), count(DISTINCT transaction_id), sum(amount) FROM transactions"
    )
    assert rows == distinct == len(sent)
    assert total == sum(Decimal(t["amount"]) for t in sent.values())

    expected: dict[tuple[int, str], list[Decimal]] = defaultdict(list)
    for t in sent.values():
        expected[(t["account_id"], t["currency"])].append(Decimal(t["amount"]))
    per_key = admin_query(url, "SELECT account_id, currency, count(*), sum(amount) FROM transactions GROUP BY 1, 2")
    assert {(a, c): (n, s) for a, c, n, s in per_key} == {k: (len(v), sum(v)) for k, v in expected.items()}

    stored = admin_query(url, "SELECT transaction_id, fraud, score::text, rule_set_version FROM transactions")
    assert {row[0] for row in stored} == set(sent)
    decisions = {tid: d for c in clients for tid, d in c.decisions.items()}
    mismatched = [row for row in stored if (decisions[row[0]]["fraud"], decisions[row[0]]["score"]) != row[1:3]]
    assert not mismatched, f"stored decisions differ from the answered ones: {mismatched[:5]}"
    versions = {v for (v,) in admin_query(url, "SELECT version FROM rule_sets")}
    assert {row[3] for row in stored} <= versions, "every decision names a rule set that exists"

    # The running totals the decisions read were maintained in the same transactions as the rows.
    totals = admin_query(
        url,
        """SELECT s.account_id, s.tx_count, s.amount_sum, t.n, t.total FROM account_currency_stats s
           FULL JOIN (SELECT account_id, currency, count(*) AS n, sum(amount) AS total FROM transactions
                      GROUP BY 1, 2) t
           USING (account_id, currency)""",
    )
    assert all(n == count and total == amount for _, count, amount, n, total in totals), totals
