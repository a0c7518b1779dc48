"""`txguard local` as a user runs it: a subprocess serving over HTTP, on a database of this test run's own."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import scratch_database
from txguard_dev.local.postgres import Server

ROOT = Path(__file__).resolve().parents[2]
TXGUARD = Path(sys.executable).with_name("txguard")
READY = "txguard local ready on "


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str]


@dataclass
class LocalService:
    process: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""
    api_key: str | None = None
    children: list[psutil.Process] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.log():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared in the log of txguard local:\n{self.log()}")
            time.sleep(0.05)

    def request(
        self, method: str, path: str, body: Any = None, api_key: str | None = "default", timeout_s: float = 30
    ) -> Response:
        """One HTTP request; api_key "default" sends the service's own key, None sends none."""
        headers = {"content-type": "application/json"}
        key = self.api_key if api_key == "default" else api_key
        if key is not None:
            headers["x-api-key"] = key
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as answer:
                status, raw, answer_headers = answer.status, answer.read(), dict(answer.headers)
        except urllib.error.HTTPError as error:
            status, raw, answer_headers = error.code, error.read(), dict(error.headers)
        return Response(status, json.loads(raw) if raw else None, answer_headers)


def start_local(
    args: list[str],
    database_url: str | None,
    log_path: Path,
    timeout_s: float = 60,
    launcher: list[str] | None = None,
) -> LocalService:
    """Start `txguard local` on a free port and wait until it says it is ready (no DATABASE_URL for None)."""
    env = {k: v for k, v in os.environ.items() if k not in {"TXGUARD_API_KEY", "PORT", "DATABASE_URL"}}
    env |= {"PYTHONUNBUFFERED": "1"} | ({} if database_url is None else {"DATABASE_URL": database_url})
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*(launcher or [str(TXGUARD)]), "local", "--port", "0", *args],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    service = LocalService(process, log_path)
    try:
        service.wait_for_log(READY, timeout_s)
    except AssertionError:
        stop_local(service)
        raise
    ready_line = next(line for line in service.log().splitlines() if line.startswith(READY))
    service.url = ready_line.removeprefix(READY).strip()
    key_line = next(line for line in service.log().splitlines() if line.startswith("API key"))
    service.api_key = None if "--no-auth" in key_line else key_line.split()[2]
    service.children = psutil.Process(process.pid).children(recursive=True)
    return service


def stop_local(service: LocalService, timeout_s: float = 30) -> int:
    """SIGTERM, as a container runtime or `kill` would send, then check that nothing it started is left."""
    if service.process.poll() is None:
        service.process.send_signal(signal.SIGTERM)
    try:
        code = service.process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        service.process.kill()
        service.process.wait()
        raise AssertionError(f"txguard local ignored SIGTERM for {timeout_s} s:\n{service.log()}") from None
    left = [child for child in service.children if alive(child)]
    assert not left, f"txguard local left processes running: {left}"
    return code


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="session")
def e2e_database_url(pg_server: Server) -> Iterator[str]:
    """An empty database: `txguard local` migrates it itself, as it does a developer's."""
    with scratch_database(pg_server, "txguard_e2e") as url:
        yield url


@pytest.fixture(scope="session")
def local_service(e2e_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    """The project's template served by `txguard local` as `make run` starts it (schedules off), with an API key."""
    log_path = tmp_path_factory.mktemp("txguard-local") / "local.log"
    api_key = secrets.token_urlsafe(16)
    # One "--api-key=..." argument: a random key starts with "-" one time in 64, which argparse reads as an option.
    service = start_local([f"--api-key={api_key}"], e2e_database_url, log_path)
    yield service
    assert stop_local(service) == 0, service.log()


TINY_TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Globals:
  Function:
    Runtime: python3.11
    Timeout: 5
Resources:
  HelloFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: hello/
      Handler: app.lambda_handler
      Events:
        Hello:
          Type: Api
          Properties:
            Path: /hello/{name}
            Method: GET
        Boom:
          Type: Api
          Properties:
            Path: /boom
            Method: GET
  TickFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: tick/
      Handler: app.lambda_handler
      Events:
        Every:
          Type: Schedule
          Properties:
            Schedule: rate(1 hour)
"""

HELLO_APP = """\
import json

def lambda_handler(event, context):
    print("hello was called")
    if event.get("path") == "/boom":
        raise RuntimeError("boom on purpose")
    name = (event.get("pathParameters") or {}).get("name", "world")
    return {"statusCode": 200, "headers": {"Content-Type": "application/json"},
            "body": json.dumps({"hello": name, "function": context.function_name})}
"""

TICK_APP = """\
def lambda_handler(event, context):
    print("tick", event["detail-type"], event["resources"][0])
    return {"ticked": True}
"""


@pytest.fixture(scope="session")
def tiny_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A template of two throwaway functions: the runtime tested apart from the service's own handlers."""
    directory = tmp_path_factory.mktemp("tiny-app")
    (directory / "template.yaml").write_text(TINY_TEMPLATE)
    for name, source in (("hello", HELLO_APP), ("tick", TICK_APP)):
        (directory / name).mkdir()
        (directory / name / "app.py").write_text(source)
    return directory / "template.yaml"
