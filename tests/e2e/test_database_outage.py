"""With PostgreSQL stopped, the API answers 503 with Retry-After and stores nothing; once PostgreSQL is back,
the functions reconnect by themselves."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests.conftest import EmbeddedPostgres
from tests.e2e.conftest import LocalService, start_local, stop_local

pytestmark = pytest.mark.e2e

NOW_MS = int(time.time() * 1000)


def transaction(tid: int) -> dict[str, Any]:
    return {"account_id": 9, "transaction_id": tid, "timestamp": NOW_MS - 60_000 + tid, "amount": "12.50"}


def test_postgresql_down_gives_503_with_retry_after_and_the_service_recovers_alone(
    own_postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    url = own_postgres.url
    service: LocalService = start_local(["--no-schedule", "--no-auth"], url, tmp_path / "local.log")
    try:
        assert service.request("POST", "/store_data", transaction(1)).status == 201

        own_postgres.stop()
        down = service.request("POST", "/store_data", transaction(2))
        assert down.status == 503, down.body
        assert down.body["error"]["code"] == "database_unavailable"
        assert int(down.headers["Retry-After"]) >= 1
        assert service.request("GET", "/is_fraud/9").status == 503

        own_postgres.start()
        back = service.request("POST", "/store_data", transaction(3))
        assert back.status == 201, back.body
        conn = psycopg2.connect(url)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT transaction_id FROM transactions ORDER BY 1")
                assert [row[0] for row in cur.fetchall()] == [1, 3]
        finally:
            conn.close()
    finally:
        assert stop_local(service) == 0, service.log()
