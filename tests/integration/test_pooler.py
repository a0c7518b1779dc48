"""The service through a pooling proxy in transaction mode (PgBouncer), as in AWS through RDS Proxy.

RDS Proxy refuses startup options ("RDS Proxy currently doesn't support command-line options") and, like
PgBouncer in transaction mode, gives each transaction whichever server connection is free: timeouts and
jit=off must be set per transaction, and no session state may be relied on.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

import psycopg2
import pytest
from psycopg2 import sql

from tests.conftest import Database, Pooler, load_event, project_template
from tests.integration.helpers import T0, tx
from txguard import db, service
from txguard_dev.local.runner import FunctionRunner

pytestmark = pytest.mark.integration

# What every connection sent before: accepted by PostgreSQL, refused by RDS Proxy and PgBouncer.
STARTUP_OPTIONS = "-c statement_timeout=5000 -c lock_timeout=5000 -c jit=off"


@pytest.fixture
def through_pooler(database: Database, pooler: Pooler, monkeypatch: pytest.MonkeyPatch) -> str:
    """The code under test connects through the pooler, as the service role."""
    url = pooler.url(database.name)
    monkeypatch.setenv("DATABASE_URL", url)
    db.reset_connection()
    return url


def test_the_pooler_refuses_startup_options_as_rds_proxy_does(through_pooler: str) -> None:
    with pytest.raises(psycopg2.OperationalError, match="unsupported startup parameter: options"):
        psycopg2.connect(through_pooler, options=STARTUP_OPTIONS)
    db.connect(through_pooler).close()


def test_ingest_and_detect_answer_through_the_pooler(through_pooler: str, database: Database) -> None:
    runner = FunctionRunner(project_template(), database_url=through_pooler)

    def call(function: str, event_name: str) -> dict[str, Any]:
        result = runner.call(function, load_event(event_name))
        assert not result.failed, result.output
        response: dict[str, Any] = json.loads(result.output)
        return response

    assert call("IngestFunction", "store_data.json")["statusCode"] == 201
    assert call("IngestFunction", "store_data_batch.json")["statusCode"] == 201
    assert call("IngestFunction", "store_data_batch.json")["statusCode"] == 201  # the replay: duplicates
    assert call("IngestFunction", "store_data_list.json")["statusCode"] == 200
    assert call("DetectFunction", "is_fraud.json")["statusCode"] == 200
    assert database.query("SELECT count(*) FROM transactions")[0][0] > 1


def test_every_unit_of_work_gets_its_timeouts_whatever_the_pooled_connection_carries(
    through_pooler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TXGUARD_STATEMENT_TIMEOUT_MS", "3000")
    db.reset_connection()
    # Another client leaves session settings on the server connections it used (transaction mode does not
    # reset them): a timeout that would cancel everything, and JIT on.
    other = psycopg2.connect(through_pooler)
    other.autocommit = True
    with other.cursor() as cur:
        for _ in range(4):  # the pool holds 2 server connections; reach both
            cur.execute("SET statement_timeout = 1; SET lock_timeout = 1; SET jit = on")
    other.close()

    def settings(cur: Any) -> tuple[Any, ...]:
        cur.execute("SELECT current_setting('statement_timeout'), current_setting('lock_timeout'), "
                    "current_setting('jit'), pg_sleep(0.01)")  # fmt: skip
        row: tuple[Any, ...] = cur.fetchone()
        return row[:3]

    for _ in range(4):
        assert db.run_in_transaction(settings) == ("3s", "1500ms", "off")


def test_a_wait_on_another_transactions_lock_answers_busy_before_the_statement_timeout(
    through_pooler: str, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    service.store([tx(61, T0, "10.00")])
    monkeypatch.setenv("TXGUARD_STATEMENT_TIMEOUT_MS", "2000")
    db.reset_connection()
    holder = psycopg2.connect(database.admin_url)
    try:
        with holder.cursor() as cur:  # an open transaction holds the account's running totals
            cur.execute("SELECT * FROM account_stats WHERE account_id = 61 FOR UPDATE")
        started = time.monotonic()
        with pytest.raises(db.DatabaseUnavailable, match="busy"):
            service.store([tx(61, T0 + 1, "11.00")])
        print(f"\nbusy after {time.monotonic() - started:.2f} s")
    finally:
        holder.rollback()
        holder.close()
    assert [r.status for r in service.store([tx(61, T0 + 1, "11.00")])] == ["stored"]


@pytest.mark.parametrize("form", ["text", "bytes", "composed", "copy"])
def test_the_settings_come_with_the_first_statement_whatever_its_form(
    through_pooler: str, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    monkeypatch.setenv("TXGUARD_STATEMENT_TIMEOUT_MS", "4000")
    db.reset_connection()
    query = "SELECT current_setting('lock_timeout')"

    def first_statement(cur: Any) -> str:
        if form == "text":
            cur.execute(query)
        elif form == "bytes":
            cur.execute(query.encode())
        elif form == "composed":
            cur.execute(sql.SQL("SELECT current_setting({})").format(sql.Literal("lock_timeout")))
        else:
            out = io.StringIO()
            cur.copy_expert(f"COPY ({query}) TO STDOUT", out)
            return out.getvalue().strip()
        value: str = cur.fetchone()[0]
        return value

    assert db.run_in_transaction(first_statement) == "2s"
