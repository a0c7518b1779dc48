"""Exactly once through the local SQS FIFO queue (moto's server), polled the way the event source mapping polls:
300 transactions (20,000 with TXGUARD_LOAD_SCALE=full), 20% of them sent twice, 50 invalid ones mixed in, one
account held locked for a while (its messages retried) and the function's database connection killed mid-run ->
every valid transaction stored once with one decision and counted once in its account's totals, every invalid one
in the dead-letter queue with its reason, no valid one there, and no message overtaken by a later one of its
account."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

from tests.conftest import Database, admin_query, project_template
from txguard import db, stream
from txguard_dev.local import streams
from txguard_dev.local.runner import FunctionRunner

pytestmark = pytest.mark.integration

# `make test` size: 300 transactions. TXGUARD_LOAD_SCALE=full: the 20,000 (as tests/reliability scales).
FULL_SCALE = os.environ.get("TXGUARD_LOAD_SCALE", "").lower() == "full"
TRANSACTIONS = 20_000 if FULL_SCALE else 300
# moto's SQS scans every message of a queue several times per message sent or received (a batch of 10 costs
# ~30 ms with 10 waiting, ~700 ms with 400), so the producer keeps at most this many waiting: it sends as the
# consumer drains, as a live feed would. Everything still goes through the one FIFO queue.
MAX_WAITING = 40
# The template's redrive policy lets a message fail for maxReceiveCount x VisibilityTimeout = 10 x 360 s before
# it is dead-lettered; locally a failed message comes back every 2 s, so the same hour is 1,800 receives. (The
# local default, 5, would dead-letter the locked account's messages after 10 s.)
MAX_RECEIVES = 10 * 360 // streams.VISIBILITY_TIMEOUT_S
INVALID = 50
ACCOUNTS = 400
T0 = 1_714_564_800_000  # 2024-05-01T12:00:00Z


@pytest.fixture
def local_queue(monkeypatch: pytest.MonkeyPatch) -> Iterator[streams.Resources]:
    with streams.moto_server() as endpoint:
        resources = streams.create_resources(endpoint, shards=1, max_receives=MAX_RECEIVES)
        for name, value in resources.environment().items():
            monkeypatch.setenv(name, value)
        stream.reset_client()
        yield resources
        stream.reset_client()


def valid(n: int) -> dict[str, Any]:
    account = 1 + n % ACCOUNTS
    return {
        "account_id": account,
        "transaction_id": 1_000_000 + n,
        "timestamp": T0 + n * 1000,
        "amount": f"{n % 97 + 1}.{n % 100:02d}",
        "merchant_id": f"m-{n % 50}",
    }


def invalid(k: int) -> dict[str, Any]:
    return {"account_id": 1 + k % ACCOUNTS, "transaction_id": 9_000_000 + k, "timestamp": T0, "amount": "-1.00"}


def test_transactions_through_the_queue_are_stored_exactly_once_with_invalid_ones_dead_lettered(
    database: Database, local_queue: streams.Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TXGUARD_LOCK_TIMEOUT_MS", "200")
    db.reset_connection()
    runner = FunctionRunner(project_template(), database_url=database.service_url)
    sqs = streams.client("sqs", local_queue.endpoint_url)

    # Given: every valid transaction once, 20% of them again later (a producer's retry: a new message), and 50
    # invalid ones, interleaved; one message group per account.
    messages: list[tuple[int, str]] = []
    for n in range(TRANSACTIONS):
        t = valid(n)
        messages.append((t["account_id"], json.dumps(t)))
        if n % 5 == 4:
            again = valid(n - 2)
            messages.append((again["account_id"], json.dumps(again)))
        if n * INVALID // TRANSACTIONS != (n + 1) * INVALID // TRANSACTIONS:  # INVALID of them, evenly spread
            bad = invalid(n)
            messages.append((bad["account_id"], json.dumps(bad)))
    invalid_ids = {json.loads(body)["transaction_id"] for _, body in messages if "-1.00" in body}
    assert len(invalid_ids) == INVALID
    sent = completed = 0

    # The order in which records of each account were first reported done.
    done_order: dict[int, list[int]] = defaultdict(list)
    seen: set[int] = set()
    invoke = streams.runner_invoke(runner)
    failures_reported = 0

    def recording_invoke(event: dict[str, Any]) -> tuple[bool, list[Any]]:
        nonlocal failures_reported
        failed, failures = invoke(event)
        retried = {f["itemIdentifier"] for f in failures}
        failures_reported += len(retried)
        nonlocal completed
        if not failed:
            completed += len(event["Records"]) - len(retried)
            for record in event["Records"]:
                body = json.loads(record["body"])
                if record["messageId"] not in retried and body["transaction_id"] not in seen:
                    seen.add(body["transaction_id"])
                    done_order[body["account_id"]].append(body["transaction_id"])
        return failed, failures

    # When: the queue is polled while, from other connections, the function's connection is killed and one
    # account is held locked for a moment.
    stop = threading.Event()

    def interfere() -> None:
        # Account 7 locked by another connection until a third of the run is stored: its messages are retried
        # (and its group waits) meanwhile. Then the function's connection is killed twice, mid-run.
        hold = psycopg2.connect(database.admin_url)
        hold.cursor().execute("INSERT INTO account_stats (account_id) VALUES (7)")
        hold.cursor().execute("SELECT 1 FROM account_stats WHERE account_id = 7 FOR UPDATE")
        try:
            while not stop.is_set() and stored_count() < TRANSACTIONS // 3:
                time.sleep(0.05)
        finally:
            hold.rollback()
            hold.close()
        for share in (2, 3):
            while not stop.is_set() and stored_count() < TRANSACTIONS * share // 4:
                time.sleep(0.02)
            kills.append(
                admin_query(
                    database.admin_url,
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = 'txguard' AND datname = current_database() AND pid <> pg_backend_pid()",
                )[0][0]
            )

    def stored_count() -> int:
        return int(admin_query(database.admin_url, "SELECT count(*) FROM transactions")[0][0])

    def produce() -> None:
        # A feed of its own, as a producer would be: it sends while the function decides.
        nonlocal sent
        for start in range(0, len(messages), 10):
            while not stop.is_set() and sent - completed >= MAX_WAITING:
                time.sleep(0.002)
            if stop.is_set():
                return
            streams.send_bodies(sqs, local_queue.queue_url, messages[start : start + 10], unique=True)
            sent += len(messages[start : start + 10])

    kills: list[int] = []
    interferer = threading.Thread(target=interfere, daemon=True)
    producer = threading.Thread(target=produce, daemon=True)
    interferer.start()
    producer.start()
    started = time.monotonic()
    deadline = started + (3600 if FULL_SCALE else 300)
    idle = 0
    try:
        # Done when everything was sent and nothing came back for longer than a retried message stays invisible.
        while (producer.is_alive() or idle < 8) and time.monotonic() < deadline:
            received = streams.poll_sqs_once(local_queue, recording_invoke, wait_s=0)
            idle = 0 if received else idle + 1
            if os.environ.get("TXGUARD_STREAM_DEBUG") and (not received or len(seen) % 1000 < 8):
                print(f"{time.monotonic() - started:7.1f} s received {received} done {len(seen)}", flush=True)
            if not received:
                time.sleep(0.5)  # retried messages come back after the visibility timeout
    finally:
        stop.set()
        producer.join(10)
        interferer.join(5)
    if os.environ.get("TXGUARD_STREAM_DEBUG"):
        print(f"{TRANSACTIONS} transactions, {len(messages)} messages: {time.monotonic() - started:.1f} s", flush=True)
    assert sent == len(messages), "the run ended before everything was sent"

    # Then: every valid transaction stored once, with one decision, counted once in its account's totals.
    expected = {valid(n)["transaction_id"] for n in range(TRANSACTIONS)}
    rows = database.query("SELECT transaction_id, fraud, rule_set_version FROM transactions")
    assert sorted({r[0] for r in rows} - expected)[:5] == []
    assert len(rows) == len({r[0] for r in rows}) == TRANSACTIONS
    assert {r[0] for r in rows} == expected
    assert all(r[1] is not None and r[2] >= 1 for r in rows)
    counts = dict(database.query("SELECT account_id, tx_count FROM account_stats WHERE tx_count > 0"))
    per_account: dict[int, int] = defaultdict(int)
    for n in range(TRANSACTIONS):
        per_account[valid(n)["account_id"]] += 1
    assert counts == per_account
    outbox = database.query("SELECT count(*), count(DISTINCT detail->>'transaction_id') FROM alert_outbox")
    assert outbox[0][0] == outbox[0][1]

    # Every invalid one in the dead-letter queue with its reason, no valid one there.
    # Taken away batch by batch: a FIFO queue gives no further message of a group while one of it is held.
    letters: list[streams.DeadLetter] = []
    while batch := streams.read_dead_letters(sqs, local_queue.dlq_url):
        letters += batch
        for start in range(0, len(batch), 10):
            sqs.delete_message_batch(
                QueueUrl=local_queue.dlq_url,
                Entries=[
                    {"Id": str(n), "ReceiptHandle": d.receipt_handle} for n, d in enumerate(batch[start : start + 10])
                ],
            )
    dead = {json.loads(d.body)["transaction_id"]: d for d in letters}
    assert set(dead) == invalid_ids
    for letter in dead.values():
        assert letter.code == "validation_error"
        assert json.loads(letter.error or "{}")["error"]["details"][0]["reason"] == "amount must not be negative"

    # No record was reported done before an earlier record of its account (each account's ids rise with time).
    for account, order in done_order.items():
        valid_order = [tid for tid in order if tid not in invalid_ids]
        assert valid_order == sorted(valid_order), account
    assert failures_reported > 0, "nothing was retried: the locked account did not bite"
    assert sum(kills) >= 1, "the function held no connection to kill"
