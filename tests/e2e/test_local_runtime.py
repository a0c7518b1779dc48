"""`txguard local` and `txguard invoke` over real HTTP and real processes: the runtime, not the business."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import admin_query, project_template
from tests.e2e.conftest import ROOT, TXGUARD, LocalService, alive, start_local, stop_local
from txguard.migrate import service_login_role
from txguard_dev.local.postgres import Server, drop_database
from txguard_generator.accounts import SYNTHETIC_ACCOUNT_BASE

pytestmark = pytest.mark.e2e


def _assert_error_shape(body: object, code: str) -> None:
    assert isinstance(body, dict)
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code


# --- the project's template ---------------------------------------------------------------------------------


def test_every_route_of_the_template_answers_over_http(local_service: LocalService) -> None:
    routes = project_template().api().routes
    assert routes, "the template has API routes"

    for route in routes:
        if route.function_name == "ConsoleFunction":
            continue  # HTML pages for a browser: tests/e2e/test_console_browser.py drives them
        for method in route.methods:
            path = re.sub(r"\{[^}]+\}", "1", route.path)
            response = local_service.request(method, path, body={} if method == "POST" else None)

            assert response.status < 500, f"{method} {path}: {response.status} {response.body}"
            assert response.headers["Content-Type"].startswith("application/json")


def test_an_unknown_route_is_403_missing_authentication_token_like_api_gateway(
    local_service: LocalService,
) -> None:
    response = local_service.request("GET", "/no_such_route")

    assert response.status == 403
    assert response.body == {"message": "Missing Authentication Token"}


def test_a_request_without_an_api_key_is_401(local_service: LocalService) -> None:
    response = local_service.request("GET", "/is_fraud/1", api_key=None)

    assert response.status == 401
    _assert_error_shape(response.body, "missing_api_key")


def test_a_request_with_a_wrong_api_key_is_403(local_service: LocalService) -> None:
    response = local_service.request("POST", "/store_data", body={"account_id": 1}, api_key="not-the-key")

    assert response.status == 403
    _assert_error_shape(response.body, "invalid_api_key")


def test_a_stored_transaction_can_be_asked_about(local_service: LocalService) -> None:
    transaction = {"account_id": 1, "transaction_id": 1, "timestamp": 1700000000000, "amount": "10.00"}

    stored = local_service.request("POST", "/store_data", body=transaction)
    answer = local_service.request("GET", "/is_fraud/1")

    assert stored.status == 201, stored.body
    assert answer.status == 200, answer.body


def test_plain_txguard_local_says_the_generator_is_off_and_how_to_turn_it_on(local_service: LocalService) -> None:
    log = local_service.log()
    # Every scheduled function is named: the generator, and the ingest function's alert drain.
    assert (
        "schedule  scheduled events off (GenerateFunction's Every, IngestFunction's DrainAlerts; the API serves every "
        "route): turn on with --schedule or --schedule-every SECONDS"
    ) in log
    assert "schedule  GenerateFunction every" not in log
    assert "scheduled run of" not in log


def test_the_generate_function_runs_on_the_schedule(e2e_database_url: str, tmp_path: Path) -> None:
    if not (ROOT / "functions" / "generate" / "app.py").exists():
        pytest.skip("functions/generate/app.py is not there yet")
    service = start_local(["--schedule-every", "1", "--no-auth"], e2e_database_url, tmp_path / "local.log")
    try:
        service.wait_for_log("scheduled run of GenerateFunction done", timeout_s=60)
    finally:
        assert stop_local(service) == 0, service.log()
    ((generated, outside),) = admin_query(
        e2e_database_url,
        "SELECT count(*), count(*) FILTER (WHERE t.account_id <= %s) FROM transactions t "
        "JOIN labels l USING (transaction_id)",
        (SYNTHETIC_ACCOUNT_BASE,),
    )
    assert generated > 0 and outside == 0  # labelled as generated, and only on reserved accounts


# --- the runtime on a template of its own -------------------------------------------------------------------


@pytest.fixture
def tiny_service(tiny_template: Path, e2e_database_url: str, tmp_path: Path) -> Iterator[LocalService]:
    """A fresh `txguard local` per test; the test may stop it itself to read the whole log."""
    service = start_local(
        ["--template", str(tiny_template), "--schedule-every", "0.5", "--api-key", "k3y"],
        e2e_database_url,
        tmp_path / "local.log",
    )
    yield service
    assert stop_local(service) == 0, service.log()


def test_a_route_with_a_path_parameter_reaches_the_function(tiny_service: LocalService) -> None:
    response = tiny_service.request("GET", "/hello/ada")

    assert response.status == 200
    assert response.body == {"hello": "ada", "function": "HelloFunction"}


def test_a_function_that_raises_gives_the_gateway_error_and_its_traceback_in_the_log(
    tiny_service: LocalService,
) -> None:
    response = tiny_service.request("GET", "/boom")
    stop_local(tiny_service)

    assert response.status in {500, 502}
    assert response.body == {"message": "Internal server error"}
    assert "RuntimeError: boom on purpose" in tiny_service.log()
    assert "Traceback" in tiny_service.log()


def test_scheduled_functions_run_at_the_given_interval_and_keep_running(tiny_service: LocalService) -> None:
    assert "schedule  TickFunction every 0.5 s" in tiny_service.log()
    deadline = time.monotonic() + 20
    while tiny_service.log().count("scheduled run of TickFunction done") < 3:
        assert time.monotonic() < deadline, tiny_service.log()
        time.sleep(0.1)
    stop_local(tiny_service)

    rule = "arn:aws:events:us-east-1:123456789012:rule/TickFunctionEvery"
    assert f"tick Scheduled Event {rule}" in tiny_service.log()


def test_sigterm_stops_the_server_and_leaves_nothing_running(tiny_service: LocalService) -> None:
    port = int(tiny_service.url.rsplit(":", 1)[1])

    code = stop_local(tiny_service)  # asserts the process and its children are gone

    assert code == 0
    assert tiny_service.log().rstrip().endswith("stopped")
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


# `txguard local` as on a machine with no PostgreSQL: 127.0.0.1:5432 made unreachable, nothing else changed.
NO_LOCAL_SERVER = """
import sys
import txguard_dev.local.postgres as postgres
postgres.LOCAL_SERVER_URL = "postgresql://postgres@127.0.0.1:1/postgres"
from txguard_dev.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_also_stops_the_embedded_postgresql_it_started(tiny_template: Path, tmp_path: Path) -> None:
    pytest.importorskip("pgserver")
    service = start_local(
        ["--template", str(tiny_template), "--no-schedule", "--no-auth"],
        None,
        tmp_path / "local.log",
        launcher=[sys.executable, "-c", NO_LOCAL_SERVER],
    )
    data_dir = re.search(r"host=(\S+)", service.log())
    assert data_dir, service.log()
    embedded = [p for p in psutil.process_iter(["cmdline"]) if data_dir[1] in " ".join(p.info["cmdline"] or [])]
    assert embedded, "an embedded PostgreSQL is serving"
    assert service.request("GET", "/hello/pg").status == 200

    assert stop_local(service) == 0, service.log()

    assert not [p for p in embedded if alive(p)]
    assert not Path(data_dir[1]).exists()


def test_database_url_naming_a_missing_database_gets_it_created_and_migrated(
    tiny_template: Path, pg_server: Server, tmp_path: Path
) -> None:
    missing = f"txguard_new_{uuid.uuid4().hex[:12]}"
    url = pg_server.database_url(missing)
    try:
        service = start_local(["--template", str(tiny_template), "--no-auth"], url, tmp_path / "local.log")
        assert stop_local(service) == 0, service.log()
        assert f"database  {pg_server.database_url(missing, user=service_login_role(missing))}" in service.log()
        assert admin_query(url, "SELECT count(*) FROM schema_migrations")[0][0] > 0
    finally:
        drop_database(pg_server, missing)


# --- txguard invoke ---------------------------------------------------------------------------------------


def _invoke(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [str(TXGUARD), "invoke", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_invoke_prints_only_the_response_on_stdout(tiny_template: Path, e2e_database_url: str, tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"path": "/hello/bob", "pathParameters": {"name": "bob"}}))

    result = _invoke("HelloFunction", "-e", str(event), "--template", str(tiny_template), database_url=e2e_database_url)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["statusCode"] == 200
    assert "hello was called" in result.stderr


def test_invoke_of_a_function_that_raises_prints_the_lambda_error_and_fails(
    tiny_template: Path, e2e_database_url: str, tmp_path: Path
) -> None:
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"path": "/boom"}))

    result = _invoke("HelloFunction", "-e", str(event), "--template", str(tiny_template), database_url=e2e_database_url)

    assert result.returncode == 1
    assert json.loads(result.stdout)["errorType"] == "RuntimeError"


def test_invoke_runs_a_function_of_the_project_with_a_saved_event(e2e_database_url: str) -> None:
    result = _invoke("DetectFunction", "-e", "events/is_fraud.json", database_url=e2e_database_url)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["statusCode"] < 500
