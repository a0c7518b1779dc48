"""The template as `txguard local` reads it: SAM CLI's own providers, with local code paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import project_template
from tests.template.stack import ROOT, TEMPLATE

# SAM CLI's providers validate with aws-sam-translator, which still uses deprecated jsonschema APIs.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:samtranslator.*")


def _stacks(overrides: dict[str, str] | None = None) -> list[object]:
    from samcli.lib.providers.sam_stack_provider import SamLocalStackProvider

    stacks, _ = SamLocalStackProvider.get_stacks(str(TEMPLATE), parameter_overrides=overrides or {})
    return list(stacks)


def test_the_providers_find_each_function_with_its_code_layer_and_handler() -> None:
    from samcli.lib.providers.sam_function_provider import SamFunctionProvider

    functions = {f.name: f for f in SamFunctionProvider(_stacks()).get_all()}
    assert set(functions) == {
        "IngestFunction",
        "DetectFunction",
        "GenerateFunction",
        "MigrateFunction",
        "StreamIngestFunction",
        "ConsoleFunction",
        "TrainFunction",
        "ListsFunction",
    }
    for name, function in functions.items():
        assert function.handler == "app.lambda_handler"
        assert Path(function.codeuri).parent == ROOT / "functions", name
        assert (Path(function.codeuri) / "app.py").is_file(), name
        assert [Path(layer.codeuri) for layer in function.layers] == [ROOT / "layers" / "common"]


def test_the_providers_find_every_route() -> None:
    from samcli.lib.providers.api_provider import ApiProvider

    routes = ApiProvider(_stacks(), cwd=str(ROOT)).api.routes
    found = {(method, route.path, route.function_name) for route in routes for method in route.methods}
    assert found == {
        ("POST", "/store_data", "IngestFunction"),
        ("GET", "/store_data", "IngestFunction"),
        ("POST", "/labels", "IngestFunction"),
        ("GET", "/labels", "IngestFunction"),
        ("POST", "/rules/{rule_id}/snoozes", "IngestFunction"),
        ("GET", "/rules/{rule_id}/snoozes", "IngestFunction"),
        ("DELETE", "/rules/{rule_id}/snoozes/{kind}/{value}", "IngestFunction"),
        ("GET", "/is_fraud/{account}", "DetectFunction"),
        ("GET", "/models", "DetectFunction"),
        ("GET", "/models/{version}", "DetectFunction"),
        ("GET", "/openapi.json", "DetectFunction"),
        ("POST", "/lists", "ListsFunction"),
        ("GET", "/lists", "ListsFunction"),
        ("GET", "/lists/{name}", "ListsFunction"),
        ("PATCH", "/lists/{name}", "ListsFunction"),
        ("POST", "/lists/{name}/items", "ListsFunction"),
        ("GET", "/lists/{name}/items", "ListsFunction"),
        ("DELETE", "/lists/{name}/items/{value}", "ListsFunction"),
        ("POST", "/lists/{name}/removals", "ListsFunction"),
        ("GET", "/lists/{name}/changes", "ListsFunction"),
        ("GET", "/console", "ConsoleFunction"),
        ("POST", "/console", "ConsoleFunction"),
        ("GET", "/console/{proxy+}", "ConsoleFunction"),
        ("POST", "/console/{proxy+}", "ConsoleFunction"),
    }


def test_parameter_overrides_reach_the_generators_environment_and_schedule() -> None:
    from samcli.lib.providers.sam_function_provider import SamFunctionProvider

    overrides = {"GenerateNumTransactions": "7", "GenerateFraudRate": "0.5", "GenerateSchedule": "rate(1 minute)"}
    generator = SamFunctionProvider(_stacks(overrides)).get("GenerateFunction")
    assert generator is not None
    variables = generator.environment["Variables"]
    assert str(variables["TXGUARD_GENERATE_NUM_TRANSACTIONS"]) == "7"
    assert variables["TXGUARD_GENERATE_FRAUD_RATE"] == "0.5"
    events = generator.events or {}
    assert [(e["Type"], e["Properties"]["Schedule"]) for e in events.values()] == [("Schedule", "rate(1 minute)")]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], []),
        (["--no-schedule"], []),
        # The ingest function's schedule drains the alert outbox.
        (["--schedule"], [("IngestFunction", 60.0), ("GenerateFunction", 300.0)]),
        (["--schedule-every", "5"], [("IngestFunction", 5.0), ("GenerateFunction", 5.0)]),
    ],
)
def test_txguard_local_runs_the_generator_only_when_asked(flags: list[str], expected: list[tuple[str, float]]) -> None:
    # Plain `make run` must not write synthetic transactions into the database it is given.
    from txguard_dev.cli import build_parser
    from txguard_dev.local.command import chosen_jobs
    from txguard_dev.local.runner import Template

    argv = ["local", *flags]
    parser, _ = build_parser(argv)
    jobs = chosen_jobs(parser.parse_args(argv), Template(TEMPLATE))
    assert [(job.function_name, job.every_s) for job in jobs] == expected


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("", True),
        ("https://api.example.com/v1/store_data", True),
        ("http://api.example.com/v1/store_data", False),
        ("http://127.0.0.1:3000/store_data", False),  # no loopback in AWS: nothing listens there
        ("ftp://api.example.com/store_data", False),
        ("https://api.example.com/a b", False),
    ],
)
def test_a_deployment_sends_the_generators_key_over_https_only(url: str, allowed: bool) -> None:
    import re

    from tests.template.stack import load_sam_template

    pattern = load_sam_template()["Parameters"]["GeneratePostUrl"]["AllowedPattern"]
    assert (re.fullmatch(pattern, url) is not None) == allowed


def test_a_disabled_schedule_never_fires_locally_and_train_runs_only_when_enabled() -> None:
    from txguard_dev.local.schedule import scheduled_jobs

    by_default = {job.function_name for job in scheduled_jobs(project_template(), every_s=5)}
    assert "TrainFunction" not in by_default and "GenerateFunction" in by_default
    enabled = project_template(TrainScheduleState="ENABLED")
    assert "TrainFunction" in {job.function_name for job in scheduled_jobs(enabled, every_s=5)}
    # cron(...) has no local rate: without --schedule-every it is not fired at all.
    assert "TrainFunction" not in {job.function_name for job in scheduled_jobs(enabled)}


def test_locally_the_functions_read_model_artifacts_from_a_directory_not_the_bucket(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import os

    from txguard_dev.local.runner import FunctionRunner

    monkeypatch.setenv("TXGUARD_MODEL_DIR", str(tmp_path))
    runner = FunctionRunner(project_template(), database_url=None)
    with runner._runtime(runner.template.function("DetectFunction")):
        assert os.environ["TXGUARD_MODEL_DIR"] == str(tmp_path)
        assert "TXGUARD_MODEL_BUCKET" not in os.environ


def test_locally_the_console_trains_in_the_request_rather_than_invoke_train_function() -> None:
    import os

    from txguard_dev.local.runner import FunctionRunner

    template = project_template()
    assert template.function("ConsoleFunction").environment["TXGUARD_TRAIN_FUNCTION"] == "TrainFunction"
    runner = FunctionRunner(template, database_url=None)
    with runner._runtime(template.function("ConsoleFunction")):
        assert "TXGUARD_TRAIN_FUNCTION" not in os.environ
