"""The naive Flask + psycopg2 app the benchmarks measure txguard against (bench/peer_app.py) stores and answers
correctly, so that the peer cannot silently break; and the round-trip counter the benchmarks use counts its
exchanges with the server."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from bench import roundtrips
from bench.peer_app import READY_LINE, create_app
from tests.conftest import admin_query, scratch_database
from txguard_dev.local.postgres import Server

ROOT = Path(__file__).resolve().parents[2]
HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def peer_database(pg_server: Server) -> Iterator[str]:
    with scratch_database(pg_server, "txguard_peer") as url:
        yield url


@pytest.fixture
def peer_url(peer_database: str) -> str:
    """The database, without the peer's table: each app made on it starts from an empty one."""
    admin_query(peer_database, "DROP TABLE IF EXISTS peer_transactions")
    return peer_database


@pytest.fixture
def client(peer_url: str) -> FlaskClient:
    return create_app(peer_url).test_client()


def tx(transaction_id: int, account_id: int, ts: int, amount: Any) -> dict[str, Any]:
    return {"transaction_id": transaction_id, "account_id": account_id, "timestamp": ts, "amount": amount}


def stored(url: str) -> list[tuple[Any, ...]]:
    return admin_query(url, "SELECT transaction_id, account_id, ts, amount FROM peer_transactions ORDER BY 1")


def test_stores_one_transaction_and_a_list_once(client: FlaskClient, peer_url: str) -> None:
    answer = client.post("/store_data", json=tx(1, 7, 1000, "12.50"))
    assert (answer.status_code, answer.json) == (201, {"stored": 1, "duplicates": 0})
    answer = client.post("/store_data", json=[tx(1, 7, 1000, "12.50"), tx(2, 7, 2000, 3), tx(3, 8, 3000, 0.5)])
    assert (answer.status_code, answer.json) == (201, {"stored": 2, "duplicates": 1})
    assert stored(peer_url) == [
        (1, 7, 1000, Decimal("12.50")),
        (2, 7, 2000, Decimal("3.00")),
        (3, 8, 3000, Decimal("0.50")),
    ]


@pytest.mark.parametrize(
    "body",
    [
        [tx(1, 7, 1000, "1.00"), {"transaction_id": 2, "account_id": 7, "timestamp": 2000}],
        [tx(1, 7, 1000, "1.00"), tx(2, 7, 2000, "-1")],
        [tx(1, 7, 1000, "1.00"), tx("two", 7, 2000, "1")],
        [tx(1, 7, 1000, "1.00"), tx(2, 7, 2000, "NaN")],
        "not a transaction",
    ],
)
def test_refuses_an_unreadable_body_and_stores_nothing(client: FlaskClient, peer_url: str, body: Any) -> None:
    answer = client.post("/store_data", json=body)
    assert answer.status_code == 400
    assert "invalid transaction" in answer.json["error"]
    assert stored(peer_url) == []


def test_detects_on_request_only(client: FlaskClient) -> None:
    assert client.get("/is_fraud/7").status_code == 404
    # Twelve ordinary transactions two hours apart, then one far over their mean.
    history = [tx(i, 7, i * 2 * HOUR_MS, f"{10 + i % 3}.00") for i in range(1, 13)]
    assert client.post("/store_data", json=history).status_code == 201
    answer = client.get("/is_fraud/7")
    assert answer.json == {"account_id": 7, "transaction_id": 12, "fraud": False, "reasons": []}
    assert client.post("/store_data", json=tx(13, 7, 26 * HOUR_MS, "900.00")).status_code == 201
    answer = client.get("/is_fraud/7")
    assert (answer.json["transaction_id"], answer.json["fraud"]) == (13, True)
    assert answer.json["reasons"] == ["amount 900.00 is over the 30-day mean 11.00 plus 3 standard deviations"]


@pytest.mark.parametrize(("count", "fraud"), [(10, False), (11, True)])
def test_flags_the_eleventh_transaction_within_an_hour(client: FlaskClient, count: int, fraud: bool) -> None:
    burst = [tx(100 + i, 9, i * 60_000, "5.00") for i in range(count)]
    assert client.post("/store_data", json=burst).status_code == 201
    answer = client.get("/is_fraud/9").json
    assert (answer["transaction_id"], answer["fraud"]) == (100 + count - 1, fraud)
    assert answer["reasons"] == ([f"{count} transactions within an hour"] if fraud else [])


def test_one_transaction_is_three_round_trips(peer_url: str) -> None:
    with roundtrips.counting() as log:
        client = create_app(peer_url).test_client()
        log.clear()
        assert client.post("/store_data", json=tx(1, 7, 1000, "1.00")).status_code == 201
        assert [entry.split()[0] for entry in log] == ["BEGIN", "INSERT", "COMMIT"]
        log.clear()
        assert client.post("/store_data", json=[tx(2, 7, 2000, "1.00"), tx(3, 7, 3000, "1.00")]).status_code == 201
        assert [entry.split()[0] for entry in log] == ["BEGIN", "INSERT", "INSERT", "COMMIT"]


def test_serves_over_http_as_the_benchmark_starts_it(peer_url: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.peer_app", "--port", "0", "--database-url", peer_url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        prefix = READY_LINE.split("{", 1)[0]
        assert line.startswith(prefix), line
        url = line.removeprefix(prefix).strip()
        request = urllib.request.Request(
            url + "/store_data",
            data=json.dumps(tx(1, 7, 1000, "1.00")).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert (answer.status, json.loads(answer.read())) == (201, {"stored": 1, "duplicates": 0})
        with urllib.request.urlopen(url + "/is_fraud/7", timeout=10) as answer:
            assert json.loads(answer.read())["transaction_id"] == 1
    finally:
        process.terminate()
        process.wait(10)
