"""The HTTP sink against a small local /store_data: retries with backoff, counts each transaction once."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from txguard.labels import read_labels
from txguard_dev.cli import main
from txguard_generator import GenerateParams, generate
from txguard_generator.delivery import deliver
from txguard_generator.sinks import Backoff, DeliveryError, HttpSink

pytestmark = pytest.mark.integration


@dataclass
class FakeApi:
    """Answers the next planned statuses, then 201; stores each transaction id once, like the real API."""

    plan: list[int] = field(default_factory=list)
    store_before_failing: bool = False  # a failure after the batch was stored (a lost response)
    stored: dict[int, dict[str, Any]] = field(default_factory=dict)
    requests: int = 0
    api_keys: set[str | None] = field(default_factory=set)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, body: dict[str, Any], api_key: str | None) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.requests += 1
            self.api_keys.add(api_key)
            status = self.plan.pop(0) if self.plan else 201
            if status != 201 and not self.store_before_failing:
                return status, {"error": {"code": "unavailable", "message": "try later", "details": []}}
            results = []
            for t in body["transactions"]:
                new = t["transaction_id"] not in self.stored
                self.stored.setdefault(t["transaction_id"], t)
                results.append(
                    {"transaction_id": t["transaction_id"], "status": "stored" if new else "duplicate",
                     "decision": {"fraud": False}}
                )  # fmt: skip
            if status != 201:
                return status, {"error": {"code": "gateway_timeout", "message": "lost", "details": []}}
            return 201, {"results": results}


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A loopback HTTP server with `handler` in a thread; yields its /store_data URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/store_data"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, answer = fake.answer(body, self.headers.get("x-api-key"))
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 503:
                self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving(Handler) as url:
        fake.url = url
        yield fake


@pytest.fixture
def redirecting_server(api: FakeApi) -> Iterator[str]:
    """A /store_data that answers every POST with a redirect to the fake API (which records any key it gets)."""
    status_cycle = iter([302, 307, 301, 308, 303] * 10)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(next(status_cycle))
            self.send_header("Location", api.url)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving(Handler) as url:
        yield url


def test_a_redirect_is_not_followed_and_its_target_never_sees_the_key(api: FakeApi, redirecting_server: str) -> None:
    sink = HttpSink(redirecting_server, api_key="secret-key", backoff=Backoff(attempts=1))
    batch = [item.transaction for item in small_run(3)]
    for status in (302, 307, 301, 308, 303):  # the order the redirecting server answers in
        with pytest.raises(DeliveryError, match=f"answered {status} .*redirects are not followed"):
            sink.send(batch)
    assert api.requests == 0 and api.api_keys == set()
    assert HttpSink(api.url, api_key="secret-key").send(batch).stored == 3  # the target itself works
    assert api.api_keys == {"secret-key"}


def small_run(n: int = 250) -> Any:
    return generate(GenerateParams(num_transactions=n, num_accounts=20, seed=4, start=1_767_225_600_000), run_id=77)


def test_a_503_is_retried_after_its_retry_after_and_nothing_is_counted_twice(api: FakeApi) -> None:
    api.plan = [503]
    pauses: list[float] = []
    sink = HttpSink(api.url, backoff=Backoff(attempts=3, base_s=0.01), sleep=pauses.append)
    summary = deliver(small_run(250), [sink], [], batch_size=100)
    assert api.requests == 4  # three batches, the first one twice
    assert pauses == [0.0] and summary.retries == 1
    assert len(api.stored) == 250
    assert (summary.outcome.stored, summary.outcome.duplicates) == (250, 0)


def test_without_retry_after_the_pauses_grow(api: FakeApi) -> None:
    api.plan = [500, 502, 429]
    pauses: list[float] = []
    sink = HttpSink(api.url, backoff=Backoff(attempts=5, base_s=0.01), sleep=pauses.append, jitter=lambda: 1.0)
    summary = deliver(small_run(10), [sink], [], batch_size=100)
    assert pauses == [0.01, 0.02, 0.04]
    assert summary.outcome.stored == 10 and len(api.stored) == 10


def test_a_batch_stored_before_a_lost_answer_comes_back_as_duplicates_not_twice(api: FakeApi) -> None:
    api.plan, api.store_before_failing = [504], True
    sink = HttpSink(api.url, backoff=Backoff(attempts=3, base_s=0.001), sleep=lambda _: None)
    summary = deliver(small_run(100), [sink], [], batch_size=100)
    assert len(api.stored) == 100
    assert (summary.outcome.stored, summary.outcome.duplicates) == (0, 100)


def test_a_refused_batch_is_not_retried(api: FakeApi) -> None:
    api.plan = [422]
    sink = HttpSink(api.url, backoff=Backoff(attempts=5, base_s=0.001), sleep=lambda _: None)
    with pytest.raises(DeliveryError, match="422: unavailable: try later"):
        deliver(small_run(10), [sink], [], batch_size=100)
    assert api.requests == 1


def test_giving_up_after_the_last_attempt_says_why(api: FakeApi) -> None:
    api.plan = [503, 503, 503]
    sink = HttpSink(api.url, backoff=Backoff(attempts=3, base_s=0.001), sleep=lambda _: None)
    with pytest.raises(DeliveryError, match="failed 3 times; last: 503"):
        deliver(small_run(10), [sink], [], batch_size=100)


def post(api: FakeApi, *extra: str) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        status = main(
            ["generate", "--post-url", api.url, "--num-transactions", "300", "--num-accounts", "30",
             "--batch-size", "120", "--seed", "6", "--start", "2026-01-01T00:00:00Z", "--no-progress", *extra]
        )  # fmt: skip
    assert status == 0, out.getvalue()
    return out.getvalue()


def test_the_cli_posts_every_transaction_once_with_the_key_and_keeps_labels_apart(
    api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("TXGUARD_API_KEY", "from-the-environment")
    api.plan = [503]
    output = post(api, "--labels-out", str(tmp_path / "labels.jsonl"))
    assert len(api.stored) == 300 and "300 stored, 0 duplicates" in output
    assert api.api_keys == {"from-the-environment"}
    assert all("pattern" not in t and "label" not in t for t in api.stored.values())
    labels = read_labels(tmp_path / "labels.jsonl")
    assert set(labels) == set(api.stored)
    assert sum(1 for label in labels.values() if label.pattern != "genuine") == 6


def test_the_cli_posts_the_same_traffic_for_the_same_seed(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    post(api, "--api-key", "k")
    first = {tid: t for tid, t in api.stored.items()}
    api.stored.clear()
    post(api, "--api-key", "k")
    assert not set(first) & set(api.stored)  # a new run: new ids

    def content(stored: dict[int, dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted((t["account_id"], t["timestamp"], t["amount"], t.get("merchant_id", "")) for t in stored.values())

    assert content(first) == content(api.stored)
