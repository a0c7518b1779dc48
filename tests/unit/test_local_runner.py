"""The local runtime's runner and scheduler, on a throwaway template of two tiny functions (no network)."""

from __future__ import annotations

import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
from samcli.lib.utils.stream_writer import StreamWriter
from samcli.local.lambdafn.exceptions import FunctionNotFound
from samcli.local.services.base_local_service import LambdaOutputParser

from txguard_dev.local.command import curl_command, sample_requests
from txguard_dev.local.runner import FunctionRunner, Template, api_key_rejection, lambda_error
from txguard_dev.local.schedule import Job, Scheduler, parse_rate, scheduled_event, scheduled_jobs

ROOT = Path(__file__).resolve().parents[2]

TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Globals:
  Function:
    Runtime: python3.11
    Timeout: 7
    Environment:
      Variables:
        TXGUARD_DB_HOST: somewhere.rds.amazonaws.com
        GREETING: hello
Resources:
  EchoFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: echo/
      Handler: app.lambda_handler
      MemorySize: 256
      Events:
        Echo:
          Type: Api
          Properties:
            Path: /echo/{word}
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
            Schedule: rate(1 minute)
"""

ECHO_APP = """\
import json
import os

def lambda_handler(event, context):
    if event.get("fail"):
        raise RuntimeError("asked to fail")
    seen = {
        "function": "echo",
        "greeting": os.environ.get("GREETING"),
        "database_url": os.environ.get("DATABASE_URL"),
        "db_host": os.environ.get("TXGUARD_DB_HOST"),
        "function_name": context.function_name,
        "memory": context.memory_limit_in_mb,
        "arn": context.invoked_function_arn,
        "request_id": context.aws_request_id,
        "remaining_ms": context.get_remaining_time_in_millis(),
    }
    return {"statusCode": 200, "headers": {}, "body": json.dumps(seen)}
"""

TICK_APP = """\
import json
import os

CALLS = []

def lambda_handler(event, context):
    CALLS.append(event)
    if os.environ.get("TICK_LOG"):
        with open(os.environ["TICK_LOG"], "a") as log:
            log.write(json.dumps(event) + "\\n")
    if event.get("fail"):
        raise ValueError("tick failed")
    return {"function": "tick", "calls": len(CALLS)}
"""


@pytest.fixture
def template(tmp_path: Path) -> Template:
    (tmp_path / "template.yaml").write_text(TEMPLATE)
    for name, source in (("echo", ECHO_APP), ("tick", TICK_APP)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "app.py").write_text(source)
    return Template(tmp_path / "template.yaml")


@pytest.fixture
def runner(template: Template) -> FunctionRunner:
    return FunctionRunner(template, database_url="postgresql://txguard_app@db.invalid/txguard")


# --- schedule expressions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "seconds"),
    [
        ("rate(1 minute)", 60),
        ("rate(5 minutes)", 300),
        ("rate(1 hour)", 3600),
        ("rate(12 hours)", 43200),
        ("rate(1 day)", 86400),
        ("rate(2 days)", 172800),
    ],
)
def test_a_rate_expression_gives_the_seconds_between_runs(expression: str, seconds: float) -> None:
    assert parse_rate(expression) == seconds


def test_a_cron_expression_has_no_fixed_rate() -> None:
    assert parse_rate("cron(0 12 * * ? *)") is None


@pytest.mark.parametrize(
    "expression",
    ["rate(1 minutes)", "rate(5 minute)", "rate(0 minutes)", "rate(5 weeks)", "every 5 minutes", ""],
)
def test_an_expression_eventbridge_would_refuse_is_an_error(expression: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(expression)


def test_the_scheduled_event_has_the_shape_of_the_saved_sample() -> None:
    sample = json.loads((ROOT / "events" / "scheduled.json").read_text())

    event = scheduled_event("TickFunctionEvery")

    assert event.keys() == sample.keys()
    assert event["detail-type"] == "Scheduled Event" and event["source"] == "aws.events"
    assert event["resources"] == ["arn:aws:events:us-east-1:123456789012:rule/TickFunctionEvery"]


# --- Lambda error payload and API key ---------------------------------------------------------------------


def test_a_handler_exception_becomes_the_payload_the_api_emulator_treats_as_a_lambda_error() -> None:
    try:
        raise KeyError("account_id")
    except KeyError as exc:
        payload = lambda_error(exc)

    assert set(payload) == {"errorMessage", "errorType", "stackTrace"}
    assert payload["errorType"] == "KeyError"
    assert payload["stackTrace"] and all(isinstance(line, str) for line in payload["stackTrace"])
    assert LambdaOutputParser.is_lambda_error_response(json.dumps(payload))


def _event_with_headers(headers: dict[str, str]) -> dict[str, Any]:
    return {"httpMethod": "GET", "path": "/echo/hi", "headers": headers}


def _error_of(response: dict[str, Any] | None) -> tuple[int, str]:
    assert response is not None
    body = json.loads(response["body"])
    assert set(body["error"]) == {"code", "message", "details"}
    return response["statusCode"], body["error"]["code"]


def test_without_a_configured_key_every_request_passes() -> None:
    assert api_key_rejection(_event_with_headers({}), None) is None


def test_a_request_without_the_key_is_refused_with_401() -> None:
    assert _error_of(api_key_rejection(_event_with_headers({}), "s3cret")) == (401, "missing_api_key")


def test_a_request_with_a_wrong_key_is_refused_with_403() -> None:
    rejection = api_key_rejection(_event_with_headers({"X-Api-Key": "guess"}), "s3cret")
    assert _error_of(rejection) == (403, "invalid_api_key")


def test_the_right_key_passes_whatever_the_header_case() -> None:
    assert api_key_rejection(_event_with_headers({"X-Api-Key": "s3cret"}), "s3cret") is None
    assert api_key_rejection(_event_with_headers({"x-api-key": "s3cret"}), "s3cret") is None


# --- template reading and invocation ----------------------------------------------------------------------


def test_the_template_is_read_with_globals_layers_and_schedules(template: Template) -> None:
    echo, tick = template.function("EchoFunction"), template.function("TickFunction")

    assert echo.handler_file == template.path.parent / "echo" / "app.py"
    assert (echo.memory_mb, echo.timeout_s) == (256, 7)
    assert echo.environment["GREETING"] == "hello"
    assert tick.schedules == (("Every", "rate(1 minute)"),)
    assert [(r.path, r.methods) for r in template.api().routes] == [("/echo/{word}", ["GET"])]


def test_functions_whose_modules_share_the_name_app_are_loaded_apart(runner: FunctionRunner) -> None:
    echo = runner.call("EchoFunction", {}).payload
    tick = runner.call("TickFunction", {}).payload

    assert json.loads(echo["body"])["function"] == "echo"
    assert tick == {"function": "tick", "calls": 1}
    assert runner.call("TickFunction", {}).payload["calls"] == 2  # loaded once, kept warm


def test_a_function_sees_its_template_environment_the_local_database_and_a_context(
    runner: FunctionRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GREETING", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)

    seen = json.loads(runner.call("EchoFunction", {}).payload["body"])

    assert seen["greeting"] == "hello"
    assert seen["database_url"] == "postgresql://txguard_app@db.invalid/txguard"
    assert seen["db_host"] is None  # the template's AWS database host is not used locally
    assert seen["function_name"] == "EchoFunction" and seen["memory"] == 256
    assert seen["arn"].endswith(":function:EchoFunction") and seen["request_id"]
    assert 0 < seen["remaining_ms"] <= 7000


def test_the_shell_environment_overrides_the_template_and_is_left_as_it_was(
    runner: FunctionRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GREETING", "from the shell")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    before = dict(os.environ)

    seen = json.loads(runner.call("EchoFunction", {}).payload["body"])

    assert seen["greeting"] == "from the shell"
    assert dict(os.environ) == before


def test_a_failing_handler_gives_the_lambda_error_payload_and_is_logged(
    runner: FunctionRunner, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger("txguard-local"), "propagate", True)  # caplog listens at the root
    with caplog.at_level(logging.ERROR, logger="txguard-local"):
        result = runner.call("EchoFunction", {"fail": True})

    assert result.failed
    assert result.payload["errorType"] == "RuntimeError"
    assert result.payload["errorMessage"] == "asked to fail"
    assert "asked to fail" in caplog.text and "Traceback" in caplog.text


def test_an_unknown_function_is_not_found(runner: FunctionRunner) -> None:
    with pytest.raises(FunctionNotFound):
        runner.call("NoSuchFunction", {})


def test_the_emulator_entry_point_writes_the_result_to_stdout(template: Template) -> None:
    runner = FunctionRunner(template, database_url=None, api_key="s3cret")
    event = _event_with_headers({"X-Api-Key": "s3cret"})
    out = io.StringIO()

    runner.invoke("EchoFunction", json.dumps(event), stdout=StreamWriter(out), stderr=None, tenant_id=None)

    assert json.loads(out.getvalue())["statusCode"] == 200


def test_the_emulator_entry_point_refuses_a_request_without_the_key_before_invoking(
    template: Template,
) -> None:
    runner = FunctionRunner(template, database_url=None, api_key="s3cret")
    out = io.StringIO()

    runner.invoke("TickFunction", json.dumps(_event_with_headers({})), stdout=StreamWriter(out))

    assert _error_of(json.loads(out.getvalue())) == (401, "missing_api_key")
    assert runner.call("TickFunction", {}).payload["calls"] == 1  # the refused request never ran it


# --- scheduler ----------------------------------------------------------------------------------------------


def test_each_schedule_event_becomes_a_job_at_its_rate_or_at_the_override(runner: FunctionRunner) -> None:
    assert scheduled_jobs(runner.template) == [Job("TickFunction", 60.0, "TickFunctionEvery")]
    assert scheduled_jobs(runner.template, every_s=0.5) == [Job("TickFunction", 0.5, "TickFunctionEvery")]


def test_a_cron_schedule_runs_only_at_the_override_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger("txguard-local"), "propagate", True)
    (tmp_path / "template.yaml").write_text(TEMPLATE.replace("rate(1 minute)", "cron(0 12 * * ? *)"))
    template = Template(tmp_path / "template.yaml")

    with caplog.at_level(logging.WARNING, logger="txguard-local"):
        assert scheduled_jobs(template) == []
        assert scheduled_jobs(template, every_s=5) == [Job("TickFunction", 5, "TickFunctionEvery")]

    assert "pass --schedule-every" in caplog.text
    assert "fires every 5 s locally" in caplog.text


def test_a_failing_scheduled_run_is_logged_and_the_next_one_still_runs(
    runner: FunctionRunner, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger("txguard-local"), "propagate", True)
    events = iter([{"fail": True}, {}])
    monkeypatch.setattr("txguard_dev.local.schedule.scheduled_event", lambda rule: next(events))
    scheduler = Scheduler(runner, scheduled_jobs(runner.template, every_s=0.01))

    with caplog.at_level(logging.INFO, logger="txguard-local"):
        scheduler.run_once(scheduler.jobs[0])
        scheduler.run_once(scheduler.jobs[0])

    assert "scheduled run of TickFunction failed: tick failed" in caplog.text
    assert "scheduled run of TickFunction done" in caplog.text


def test_the_scheduler_thread_invokes_with_scheduled_events_until_stopped(
    runner: FunctionRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticks = tmp_path / "ticks.jsonl"
    monkeypatch.setenv("TICK_LOG", str(ticks))
    scheduler = Scheduler(runner, scheduled_jobs(runner.template, every_s=0.05))

    scheduler.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(_lines(ticks)) < 3:
        time.sleep(0.02)
    scheduler.stop()
    runs = len(_lines(ticks))
    time.sleep(0.2)

    assert runs >= 3
    assert len(_lines(ticks)) == runs  # nothing fires after stop()
    assert all(json.loads(line)["detail-type"] == "Scheduled Event" for line in _lines(ticks))


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# --- the curls printed at start ---------------------------------------------------------------------------


def test_the_printed_curl_carries_the_key_and_a_path_parameter() -> None:
    curl = curl_command("http://127.0.0.1:3000", "GET", "/is_fraud/{account}", "k3y", {})
    assert curl == "curl -i http://127.0.0.1:3000/is_fraud/1 -H 'x-api-key: k3y'"


def test_the_printed_curl_takes_its_body_from_a_saved_api_event(tmp_path: Path) -> None:
    event = {
        "resource": "/store_data",
        "path": "/store_data",
        "httpMethod": "POST",
        "body": '{"amount": "1"}',
    }
    (tmp_path / "store_data.json").write_text(json.dumps(event))
    (tmp_path / "scheduled.json").write_text(json.dumps(scheduled_event("x")))

    curl = curl_command("http://h", "POST", "/store_data", None, sample_requests(tmp_path))

    assert curl == ("curl -i -X POST http://h/store_data -H 'content-type: application/json' -d '{\"amount\": \"1\"}'")


def local_arguments(*argv: str) -> Any:
    import argparse

    from txguard_dev.local.command import register

    parser = argparse.ArgumentParser(prog="txguard local")
    register(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize("port", ["abc", "3_055", "\u0663\u0660\u0660\u0660", "70000"])
def test_port_from_the_environment_follows_the_integer_rule_with_a_usage_error(
    port: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PORT", port)
    with pytest.raises(SystemExit) as exited:
        local_arguments()
    assert exited.value.code == 2
    assert f"argument --port: {port!r} must be an integer from 0 to 65535" in capsys.readouterr().err
    monkeypatch.setenv("PORT", "3055")
    assert local_arguments().port == 3055


@pytest.mark.parametrize("seconds", ["1e-9", "0.05", "0"])
def test_schedule_every_has_a_floor(seconds: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        local_arguments("--schedule-every", seconds)
    assert "argument --schedule-every" in capsys.readouterr().err
    assert local_arguments("--schedule-every", "0.1").schedule_every == 0.1
