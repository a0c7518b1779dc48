"""What the reliability tests share: their sizes, a `txguard local` of each test's own on a database of its
own, an embedded PostgreSQL that a test may kill, and plain HTTP for bodies no JSON encoder would write.

Sizes fit `make test`; TXGUARD_LOAD_SCALE=full runs the sizes the issue names (16 clients × 5,000
transactions, a longer and randomised fuzz).
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import scratch_database
from tests.e2e.conftest import LocalService, start_local, stop_local
from txguard_dev.local.postgres import Server

FULL_SCALE = os.environ.get("TXGUARD_LOAD_SCALE", "").lower() == "full"
NOW_MS = int(time.time() * 1000)


@pytest.fixture
def fresh_database_url(pg_server: Server) -> Iterator[str]:
    with scratch_database(pg_server, "txguard_rel") as url:
        yield url


@pytest.fixture(scope="module")
def hostile_database_url(pg_server: Server) -> Iterator[str]:
    """A database of the test module's own."""
    with scratch_database(pg_server, "txguard_rel") as url:
        yield url


@pytest.fixture(scope="module")
def service(hostile_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    """`txguard local` on the module's database, with an API key, as clients meet it."""
    served = serve(hostile_database_url, tmp_path_factory.mktemp("hostile") / "local.log", "--api-key", "hostile-key")
    yield served
    stop(served)


def serve(database_url: str, log_path: Path, *args: str) -> LocalService:
    """`txguard local` with schedules off, as a developer starts it."""
    return start_local(["--no-schedule", *args], database_url, log_path)


def stop(service: LocalService) -> None:
    assert stop_local(service) == 0, service.log()


@dataclass(frozen=True)
class RawAnswer:
    status: int
    body: bytes
    headers: dict[str, str]
    seconds: float


def send_bytes(
    service: LocalService,
    method: str,
    path: str,
    data: bytes | None = None,
    content_type: str | None = "application/json",
    api_key: str | None = "default",
) -> RawAnswer:
    """One request with exactly these bytes; the answer unparsed, with the time it took."""
    headers = {"content-type": content_type} if content_type else {}
    key = service.api_key if api_key == "default" else api_key
    if key is not None:
        headers["x-api-key"] = key
    request = urllib.request.Request(service.url + path, data=data, method=method, headers=headers)
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            status, body, answer_headers = answer.status, answer.read(), dict(answer.headers)
    except urllib.error.HTTPError as error:
        status, body, answer_headers = error.code, error.read(), dict(error.headers)
    return RawAnswer(status, body, answer_headers, time.perf_counter() - started)
