"""Faults in the middle of ingest: the database connections killed, the server stopped and started again, a lock
held past the statement timeout, a secret that cannot be read. Clients get a retryable 503 with Retry-After,
never a 2xx for something not stored; afterwards every acknowledged transaction is there exactly once,
nothing is half-written, and the functions have reconnected by themselves."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import psycopg2
import pytest
from moto import mock_aws

from tests.conftest import ROOT, EmbeddedPostgres, admin_query, load_event, project_template
from tests.e2e.conftest import LocalService
from tests.reliability.conftest import NOW_MS, serve, stop
from txguard import db
from txguard.settings import reload_settings
from txguard_dev.local.runner import LambdaContext, load_module

pytestmark = [pytest.mark.reliability, pytest.mark.e2e]

CLIENTS = 4
BATCH = 20
RETRIES = 3  # attempts per batch before a client gives up on it (and moves on to its next batch)


def assert_retryable(status: int, body: Any, headers: dict[str, str]) -> None:
    """The only 5xx a client may see: 503, the error shape, and when to come back."""
    assert status == 503, (status, body)
    assert body["error"]["code"] == "database_unavailable", body
    assert set(body["error"]) == {"code", "message", "details"}
    assert int(headers["Retry-After"]) >= 1, headers


@dataclass
class Batch:
    items: list[dict[str, Any]]
    answers: list[int] = field(default_factory=list)  # status of each attempt, in order
    results: list[dict[str, Any]] | None = None  # those of the 201, if one came

    @property
    def ids(self) -> list[int]:
        return [t["transaction_id"] for t in self.items]


@dataclass
class IngestClients:
    """Clients posting batches non-stop; each retries a refused batch a few times, as told by Retry-After."""

    service: LocalService
    batches: list[Batch] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(CLIENTS)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout=120)
        assert not any(t.is_alive() for t in self._threads), "a client is stuck"

    def acknowledged(self) -> int:
        with self._lock:
            return sum(1 for b in self.batches if b.results is not None)

    def wait_for(self, count: int, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while self.acknowledged() < count:
            assert time.monotonic() < deadline, f"only {self.acknowledged()} of {count} batches acknowledged"
            assert not self.problems, self.problems[:5]
            time.sleep(0.02)

    def _run(self, client: int) -> None:
        while not self.stopping.is_set():
            with self._lock:
                batch = Batch([self._transaction(client, next(self._ids)) for _ in range(BATCH)])
                self.batches.append(batch)
            for _ in range(RETRIES):
                retry_after = self._attempt(batch)
                if retry_after is None:
                    break
                time.sleep(min(retry_after, 0.2))  # honoured in spirit; the test has no time to wait seconds

    def _transaction(self, client: int, tid: int) -> dict[str, Any]:
        return {
            "account_id": 100 + client * 10 + tid % 7,
            "transaction_id": tid,
            "timestamp": NOW_MS - 3_600_000 + tid,
            "amount": f"{tid % 997 + 1}.{tid % 100:02d}",
        }

    def _attempt(self, batch: Batch) -> float | None:
        """One POST; None when the batch is settled, else how long to wait before the next attempt."""
        try:
            response = self.service.request("POST", "/store_data", {"transactions": batch.items}, timeout_s=60)
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            self.problems.append(f"the API itself did not answer: {exc!r}")
            return None
        batch.answers.append(response.status)
        if response.status == 201:
            results = response.body["results"]
            if [r["transaction_id"] for r in results] != batch.ids:
                self.problems.append(f"201 with other ids than sent: {results[:2]}")
            if {r["status"] for r in results} - {"stored", "duplicate"}:
                self.problems.append(f"201 with an unknown status: {results[:2]}")
            batch.results = results
            return None
        try:
            assert_retryable(response.status, response.body, response.headers)
        except (AssertionError, KeyError, TypeError, ValueError):
            self.problems.append(f"{response.status} {response.headers} {response.body}")
            return None
        return float(response.headers["Retry-After"])


def terminate_service_connections(admin_url: str) -> int:
    rows = admin_query(
        admin_url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = 'txguard' AND datname = current_database() AND pid <> pg_backend_pid()",
    )
    return int(rows[0][0])


def test_killed_connections_and_a_restarted_server_lose_nothing_and_need_no_restart(
    own_postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    service = serve(own_postgres.url, tmp_path / "local.log", "--no-auth")
    clients = IngestClients(service)
    try:
        clients.start()
        clients.wait_for(20)
        terminated = 0
        for _ in range(5):  # each kill lands while the function is between or in the middle of batches
            terminated += terminate_service_connections(own_postgres.url)
            time.sleep(0.15)
        assert terminated >= 1, "the service held no connection to kill"
        clients.wait_for(clients.acknowledged() + 20)

        own_postgres.stop()
        time.sleep(1.0)  # clients keep posting into the outage
        own_postgres.start()
        recovered_from = clients.acknowledged()
        clients.wait_for(recovered_from + 20)
        clients.stop()

        assert not clients.problems, clients.problems[:10]
        answers = Counter(status for b in clients.batches for status in b.answers)
        assert set(answers) <= {201, 503}, answers
        assert answers[503] > 0, "the outage was never seen: the test proved nothing"

        # Every batch is in the database whole or not at all; every acknowledged one whole, exactly once.
        rows = admin_query(own_postgres.url, "SELECT transaction_id FROM transactions")
        present = Counter(tid for (tid,) in rows)
        assert all(n == 1 for n in present.values())
        acknowledged = [b for b in clients.batches if b.results is not None]
        refused = [b for b in clients.batches if b.results is None]
        assert all(all(tid in present for tid in b.ids) for b in acknowledged), "a 201 for something not stored"
        partial = [b.ids for b in refused if 0 < sum(tid in present for tid in b.ids) < len(b.ids)]
        assert not partial, f"half-written batches: {partial[:3]}"
        assert len(present) == sum(len(b.items) for b in clients.batches if b.ids[0] in present)
        assert_totals_match_rows(own_postgres.url)

        # Without restarting txguard local: the refused batches go through now, each stored exactly once.
        assert service.process.poll() is None
        for batch in refused:
            again = service.request("POST", "/store_data", {"transactions": batch.items})
            assert again.status == 201, again.body
        [(count, distinct)] = admin_query(
            own_postgres.url, "SELECT count(*), count(DISTINCT transaction_id) FROM transactions"
        )
        assert count == distinct == sum(len(b.items) for b in clients.batches)
        assert_totals_match_rows(own_postgres.url)
        in_doubt = sum(
            1 for b in acknowledged if 503 in b.answers and any(r["status"] == "duplicate" for r in b.results or [])
        )
        print(
            f"\n{len(clients.batches)} batches of {BATCH}: answers {dict(answers)}, {terminated} connections killed, "
            f"{len(refused)} batches refused then stored on re-send, {in_doubt} stored by an attempt answered 503"
        )
    finally:
        clients.stopping.set()
        stop(service)


def assert_totals_match_rows(admin_url: str) -> None:
    """account_stats, account_currency_stats and account_daily are written in the same transaction as the rows: a
    half-written batch would show here."""
    mismatched = admin_query(
        admin_url,
        """SELECT * FROM account_stats s
           FULL JOIN (SELECT account_id, count(*) AS n FROM transactions GROUP BY 1) t
           USING (account_id)
           WHERE s.tx_count IS DISTINCT FROM t.n""",
    )
    assert not mismatched, mismatched[:5]
    mismatched_amounts = admin_query(
        admin_url,
        """SELECT * FROM account_currency_stats s
           FULL JOIN (SELECT account_id, currency, count(*) AS n, sum(amount) AS total FROM transactions
                      GROUP BY 1, 2) t
           USING (account_id, currency)
           WHERE s.tx_count IS DISTINCT FROM t.n OR s.amount_sum IS DISTINCT FROM t.total""",
    )
    assert not mismatched_amounts, mismatched_amounts[:5]
    mismatched_days = admin_query(
        admin_url,
        """SELECT * FROM account_daily d
           FULL JOIN (SELECT account_id, div(txguard_ts_to_ms(ts), 86400000)::integer AS day, currency,
                             count(*) AS n, sum(amount) AS total FROM transactions GROUP BY 1, 2, 3) t
           USING (account_id, day, currency)
           WHERE d.tx_count IS DISTINCT FROM t.n OR d.amount_sum IS DISTINCT FROM t.total""",
    )
    assert not mismatched_days, mismatched_days[:5]


@pytest.fixture
def short_statement_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read by the functions from the environment of `txguard local`, which wins over the template's value."""
    monkeypatch.setenv("TXGUARD_STATEMENT_TIMEOUT_MS", "200")


@pytest.mark.usefixtures("short_statement_timeout")
def test_a_query_stuck_behind_a_lock_is_a_quick_503_then_works_once_released(
    fresh_database_url: str, tmp_path: Path
) -> None:
    service = serve(fresh_database_url, tmp_path / "local.log", "--no-auth")
    blocker = psycopg2.connect(fresh_database_url)
    try:
        first = {"account_id": 31, "transaction_id": 1, "timestamp": NOW_MS - 60_000, "amount": "10.00"}
        assert service.request("POST", "/store_data", first).status == 201

        with blocker.cursor() as cur:  # an open transaction holds the account's running totals
            cur.execute("SELECT * FROM account_stats WHERE account_id = 31 FOR UPDATE")
        blocked = {**first, "transaction_id": 2}
        timed = timed_request(service, "POST", "/store_data", blocked)
        print(f"\nPOST behind a row lock: {timed}")
        assert timed.seconds < 2.0, f"answered after {timed.seconds:.2f} s"
        assert_retryable(timed.status, timed.body, timed.headers)

        with blocker.cursor() as cur:  # readers wait too when the table itself is locked
            cur.execute("LOCK TABLE transactions IN ACCESS EXCLUSIVE MODE")
        timed = timed_request(service, "GET", "/is_fraud/31")
        print(f"GET behind a table lock: {timed}")
        assert timed.seconds < 2.0, f"answered after {timed.seconds:.2f} s"
        assert_retryable(timed.status, timed.body, timed.headers)

        blocker.rollback()
        assert service.request("POST", "/store_data", blocked).status == 201
        assert service.request("GET", "/is_fraud/31").status == 200
        assert admin_query(fresh_database_url, "SELECT transaction_id FROM transactions ORDER BY 1") == [(1,), (2,)]
        assert_totals_match_rows(fresh_database_url)
    finally:
        blocker.close()
        stop(service)


@dataclass(frozen=True)
class Timed:
    status: int
    body: Any
    headers: dict[str, str]
    seconds: float

    def __str__(self) -> str:
        return f"{self.status} in {self.seconds:.2f} s, Retry-After {self.headers.get('Retry-After')}"


def timed_request(service: LocalService, method: str, path: str, body: Any = None) -> Timed:
    started = time.perf_counter()
    response = service.request(method, path, body, timeout_s=30)
    return Timed(response.status, response.body, response.headers, time.perf_counter() - started)


# --- the database secret (AWS only: `txguard local` always uses DATABASE_URL) ----------------------------------

SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:txguard-service-AbCdEf"
AWS_ENVIRONMENT = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_LAMBDA_FUNCTION_NAME": "IngestFunction",
    "AWS_SAM_LOCAL": "true",  # keeps the Powertools Tracer off, as under `sam local`
    "POWERTOOLS_METRICS_DISABLED": "true",
    "TXGUARD_DB_HOST": "proxy.invalid",
    "TXGUARD_DB_SECRET_ARN": SECRET_ARN,
}


@pytest.fixture
def aws_ingest_handler(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[dict[str, Any]], dict[str, Any]]]:
    """The ingest function as in AWS: no DATABASE_URL, a database host and the ARN of its secret."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    for name, value in AWS_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    reload_settings()
    db.reset_connection()
    module = load_module(project_template().function("IngestFunction"))
    yield lambda event: module.lambda_handler(event, LambdaContext("IngestFunction", 512, 30))
    db.reset_connection()
    reload_settings()


@pytest.mark.parametrize("secret", [None, {"user": "only-a-name"}], ids=["missing", "without-password"])
def test_a_secret_that_cannot_be_read_is_a_quick_503(
    aws_ingest_handler: Callable[[dict[str, Any]], dict[str, Any]],
    secret: dict[str, str] | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aws_lambda_powertools.utilities import parameters

    parameters.clear_caches()
    with mock_aws():
        if secret is not None:
            created = boto3.client("secretsmanager").create_secret(Name="txg-svc", SecretString=json.dumps(secret))
            monkeypatch.setenv("TXGUARD_DB_SECRET_ARN", created["ARN"])
        started = time.perf_counter()
        response = aws_ingest_handler(load_event("store_data.json"))
        seconds = time.perf_counter() - started
    assert seconds < 2.0, f"answered after {seconds:.2f} s"
    headers = {k: v[0] for k, v in response["multiValueHeaders"].items()}
    assert_retryable(response["statusCode"], json.loads(response["body"]), headers)


# The fetch runs in a process of its own: a hung fetch holds the connection lock and would stall the tests after it.
_UNANSWERED_FETCH = """
import json, os, socket, sys, threading, time
sys.path[:0] = [{layer!r}, {code!r}]
silent = socket.socket()
silent.bind(("127.0.0.1", 0))
silent.listen(64)  # accepts connections and never answers on them
os.environ["AWS_ENDPOINT_URL_SECRETS_MANAGER"] = "http://127.0.0.1:%d" % silent.getsockname()[1]
import app
from txguard_dev.local.runner import LambdaContext
event = json.load(open({event!r}))
answer = {{}}
started = time.perf_counter()
worker = threading.Thread(
    target=lambda: answer.update(app.lambda_handler(event, LambdaContext("IngestFunction", 512, 30))), daemon=True
)
worker.start()
worker.join({budget})
seconds = time.perf_counter() - started
print("RESULT", json.dumps({{"status": answer.get("statusCode"), "seconds": seconds}}), flush=True)
os._exit(0)
"""
UNANSWERED_FETCH_BUDGET_S = 5.0  # the database itself gets TXGUARD_CONNECT_TIMEOUT (5 s by default)


def test_a_secret_endpoint_that_never_answers_is_a_503_within_the_connect_budget(tmp_path: Path) -> None:
    function = project_template().function("IngestFunction")
    script = _UNANSWERED_FETCH.format(
        layer=str(function.layer_dirs[0]),
        code=str(function.code_dir),
        event=str(ROOT / "events" / "store_data.json"),
        budget=UNANSWERED_FETCH_BUDGET_S,
    )
    environment = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | AWS_ENVIRONMENT
    finished = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True, timeout=60
    )
    line = next((line for line in finished.stdout.splitlines() if line.startswith("RESULT ")), None)
    assert line is not None, finished.stderr[-2000:]
    result = json.loads(line.removeprefix("RESULT "))
    assert result["status"] is not None, f"no answer within {UNANSWERED_FETCH_BUDGET_S:.0f} s: the invocation hangs"
    assert result["status"] == 503
