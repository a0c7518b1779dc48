"""One set of parameter names for the CLI, the scheduled function's environment and its event."""

from __future__ import annotations

import argparse

import pytest

from txguard_dev.commands import generate as generate_command
from txguard_generator.params import GenerateParams, ParameterError, params_from_env, parse_params
from txguard_generator.scheduled import scheduled_params
from txguard_generator.sinks import Backoff, HttpSink


def test_the_environment_sets_parameters_by_their_upper_case_names() -> None:
    params = params_from_env(
        {
            "TXGUARD_GENERATE_NUM_TRANSACTIONS": "250",
            "TXGUARD_GENERATE_NUM_ACCOUNTS": "40",
            "TXGUARD_GENERATE_FRAUD_RATE": "0.05",
            "TXGUARD_GENERATE_START": "2026-01-01T00:00:00Z",
            "TXGUARD_GENERATE_MEAN_GAP": "600",
            "TXGUARD_GENERATE_SEED": "9",
            "TXGUARD_GENERATE_BATCH_SIZE": "100",
            "TXGUARD_GENERATE_POST_URL": "https://api.example.com/v1/store_data",
            "TXGUARD_GENERATE_MODE": "api",
        }
    )
    assert params == GenerateParams(
        num_transactions=250,
        num_accounts=40,
        fraud_rate=0.05,
        start=1_767_225_600_000,
        mean_gap=600.0,
        seed=9,
        batch_size=100,
        post_url="https://api.example.com/v1/store_data",
        mode="api",
    )


def test_unset_or_empty_variables_keep_the_defaults() -> None:
    assert params_from_env({"TXGUARD_GENERATE_SEED": ""}) == GenerateParams()


def test_the_scheduled_events_detail_overrides_the_environment() -> None:
    env = {"TXGUARD_GENERATE_NUM_TRANSACTIONS": "100", "TXGUARD_GENERATE_SEED": "1"}
    event = {"detail-type": "Scheduled Event", "detail": {"num_transactions": 7, "fraud_rate": 0.1}}
    params = scheduled_params(event, env)
    assert (params.num_transactions, params.fraud_rate, params.seed) == (7, 0.1, 1)


def test_an_empty_detail_changes_nothing() -> None:
    assert scheduled_params({"detail": {}}, {}) == GenerateParams()


def test_the_scheduled_function_refuses_to_only_write_a_file() -> None:
    with pytest.raises(ParameterError, match="direct or api"):
        scheduled_params({"detail": {"mode": "file"}}, {})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"num_transactions": 0}, "num_transactions"),
        ({"fraud_rate": "lots"}, "fraud_rate"),
        ({"batch_size": 5001}, "batch_size"),
        ({"start": "1999-12-31T23:59:59Z"}, "start"),
        ({"start": "2026-01-01T00:00:00"}, "with a zone"),
        ({"mode": "api"}, "post_url"),
        ({"num_transaction": 5}, "unknown"),
    ],
)
def test_bad_values_are_refused_naming_the_parameter(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_params(raw)


def test_an_events_post_url_is_refused_so_the_key_goes_only_where_the_deployment_says() -> None:
    env = {"TXGUARD_GENERATE_MODE": "api", "TXGUARD_GENERATE_POST_URL": "https://api.example.com/v1/store_data"}
    event = {"detail": {"post_url": "https://collector.example.net/steal"}}
    with pytest.raises(ParameterError, match="post_url comes from the deployment"):
        scheduled_params(event, env)
    assert scheduled_params({"detail": {"num_transactions": 5}}, env).post_url == env["TXGUARD_GENERATE_POST_URL"]


@pytest.mark.parametrize(
    "url",
    [
        "http://api.example.com/v1/store_data",
        "http://10.0.0.5:3000/store_data",
        "http://localhost.example.com/store_data",
        "ftp://api.example.com/store_data",
        "https:///store_data",
        "api.example.com/store_data",
    ],
)
def test_a_url_the_key_would_leak_to_is_refused_with_a_clear_error(url: str) -> None:
    with pytest.raises(ParameterError, match="post_url") as refused:
        parse_params({"post_url": url, "mode": "api"})
    assert "https://" in str(refused.value)
    with pytest.raises(ParameterError, match="post_url"):
        HttpSink(url, "key")


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.com/v1/store_data",
        "http://127.0.0.1:3000/store_data",
        "http://127.8.9.10/store_data",
        "http://localhost:3000/store_data",
        "http://[::1]:3000/store_data",
    ],
)
def test_https_anywhere_and_http_to_this_machine_are_accepted(url: str) -> None:
    assert parse_params({"post_url": url, "mode": "api"}).post_url == url


def test_cli_refuses_http_to_another_host(capsys: pytest.CaptureFixture[str]) -> None:
    from txguard_dev.cli import main

    code = main(["generate", "--post-url", "http://api.example.com/store_data", "--api-key", "k"])
    assert code == 2
    assert "http:// is accepted only for this machine" in capsys.readouterr().err


def test_start_takes_epoch_milliseconds_or_an_rfc3339_date_time() -> None:
    assert parse_params({"start": "1767225600000"}).start == 1_767_225_600_000
    assert parse_params({"start": 1_767_225_600_000}).start == 1_767_225_600_000
    assert parse_params({"start": "2026-01-01T01:00:00+01:00"}).start == 1_767_225_600_000


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"num_transactions": "4_2"}, "num_transactions: expected an integer in ASCII digits"),
        ({"num_transactions": "\u0661\u0662"}, "num_transactions: expected an integer in ASCII digits"),
        ({"num_transactions": " 42"}, "num_transactions: expected an integer in ASCII digits"),
        ({"num_transactions": "042"}, "num_transactions: expected an integer in ASCII digits"),
        ({"num_transactions": 42.0}, "num_transactions: expected an integer"),
        ({"seed": "\u0661"}, "seed: expected an integer in ASCII digits"),
        ({"batch_size": "+5"}, "batch_size: expected an integer in ASCII digits"),
        ({"fraud_rate": "0_1"}, "fraud_rate: is not a decimal number"),
        ({"mean_gap": "\u0666\u0660"}, "mean_gap: is not a decimal number"),
        ({"mean_gap": "Infinity"}, "mean_gap: is not a decimal number"),
        ({"start": "2024-05-01T12:00Z"}, "start: '2024-05-01T12:00Z' is not an RFC 3339 date-time"),
        ({"start": "2026-01-01"}, "start: '2026-01-01' is not an RFC 3339 date-time"),
        ({"start": "\u0661767225600000"}, "start: .* is not an RFC 3339 date-time"),
    ],
)
def test_numbers_and_date_times_follow_the_one_rule_of_literals(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_params(raw)
    with pytest.raises(ParameterError, match=message):
        params_from_env({f"TXGUARD_GENERATE_{name.upper()}": str(value) for name, value in raw.items()})


@pytest.mark.parametrize(
    "argv",
    [
        ("--num-transactions", "4_2"),
        ("--num-transactions", "\u0661\u0662"),
        ("--seed", "\u0661"),
        ("--start", "2024-05-01T12:00Z"),
        ("--mean-gap", "1_0"),
    ],
)
def test_the_cli_reads_numbers_and_date_times_by_the_same_rule(argv: tuple[str, ...]) -> None:
    with pytest.raises(ParameterError, match=argv[0].removeprefix("--").replace("-", "_")):
        generate_command.params_from_args(cli(*argv, "--direct"))


def test_a_scheduled_events_numbers_follow_the_same_rule() -> None:
    with pytest.raises(ParameterError, match="num_transactions: expected an integer in ASCII digits"):
        scheduled_params({"detail": {"num_transactions": "4_2"}}, {})
    with pytest.raises(ParameterError, match=r"start: .* is not an RFC 3339 date-time"):
        scheduled_params({"detail": {"start": "2024-05-01T12:00Z"}}, {})


def cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    generate_command.register(parser)
    return parser.parse_args(argv)


def test_cli_flags_use_the_same_names() -> None:
    args = cli("--num-transactions", "12", "--mean-gap", "60", "--post-url", "http://127.0.0.1:3000/store_data")
    params = generate_command.params_from_args(args)
    assert (params.num_transactions, params.mean_gap, params.mode) == (12, 60.0, "api")


@pytest.mark.parametrize(
    ("argv", "mode"),
    [(("--direct",), "direct"), (("--out", "x.jsonl"), "file"), (("--direct", "--out", "x.csv"), "direct")],
)
def test_the_sink_flags_imply_the_mode(argv: tuple[str, ...], mode: str) -> None:
    assert generate_command.params_from_args(cli(*argv)).mode == mode


def test_the_cli_needs_a_destination_and_only_one_store() -> None:
    with pytest.raises(ParameterError, match="where the transactions go"):
        generate_command.params_from_args(cli())
    with pytest.raises(ParameterError, match="one of"):
        generate_command.params_from_args(cli("--direct", "--post-url", "http://x/store_data"))


def test_backoff_grows_is_capped_and_follows_retry_after() -> None:
    backoff = Backoff(attempts=8, base_s=0.5, cap_s=4.0)
    assert [backoff.delay(n, None, jitter=1.0) for n in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert backoff.delay(0, None, jitter=0.0) == 0.25
    assert backoff.delay(3, 1.5, jitter=1.0) == 1.5
    assert backoff.delay(3, 120.0, jitter=1.0) == 4.0
