"""One form for one meaning, on every path: empty metadata is no metadata (by item and by column), a time window's
bound is read by one parser (every CLI command, every HTTP query), an empty query value is refused on every
route by one check."""

from __future__ import annotations

import argparse
import importlib
import json
import time
from typing import Any

import pytest

from tests.conftest import ROOT, Database, load_event, project_template
from tests.integration.helpers import invoke
from txguard.intake import batch_transactions, check_items
from txguard_dev.cli import COMMANDS
from txguard_dev.commands.common import period_argument
from txguard_dev.local.runner import FunctionRunner

pytestmark = pytest.mark.integration

NOW_MS = int(time.time() * 1000)
MAY_1_2024_MS = 1_714_521_600_000  # 2024-05-01T00:00:00Z


@pytest.fixture
def runner(database: Database) -> FunctionRunner:
    return FunctionRunner(project_template(), database_url=database.service_url)


def with_query(event: dict[str, Any], query: dict[str, str]) -> dict[str, Any]:
    event["queryStringParameters"] = query or None
    event["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()} or None
    return event


def post(runner: FunctionRunner, body: Any, query: dict[str, str] | None = None) -> dict[str, Any]:
    event = load_event("store_data.json")
    event["body"] = json.dumps(body)
    return invoke(runner, "IngestFunction", with_query(event, query or {}))


def transaction(tid: int, **fields: Any) -> dict[str, Any]:
    return {"account_id": 1, "transaction_id": tid, "timestamp": NOW_MS - 60_000, "amount": "10.50", **fields}


# --- 1. empty metadata is no metadata -----------------------------------------------------------------------------


def test_empty_metadata_reads_as_absent_by_item_and_by_column() -> None:
    empty, absent = transaction(1, metadata={}), transaction(1)
    (by_item,) = check_items([empty])
    assert by_item.transaction is not None and by_item.transaction.metadata is None
    assert by_item.transaction == check_items([absent])[0].transaction
    assert batch_transactions(empty) == batch_transactions(absent) == [by_item.transaction]
    mixed = batch_transactions({"transactions": [empty | {"transaction_id": 2}, transaction(3, metadata={"k": "v"})]})
    assert mixed is not None and [t.metadata for t in mixed] == [None, {"k": "v"}]


@pytest.mark.parametrize("atomic", ["true", "false"], ids=["columns", "per-item"])
@pytest.mark.parametrize("first_empty", [True, False], ids=["empty-then-absent", "absent-then-empty"])
def test_a_retry_with_or_without_empty_metadata_is_a_duplicate_stored_once(
    runner: FunctionRunner, database: Database, atomic: str, first_empty: bool
) -> None:
    empty, absent = transaction(5, metadata={}), transaction(5)
    first, retry = (empty, absent) if first_empty else (absent, empty)
    assert post(runner, first, {"atomic": atomic})["statusCode"] == 201
    answer = post(runner, retry, {"atomic": atomic})
    assert answer["statusCode"] in (200, 201), answer["body"][:500]
    assert [r["status"] for r in answer["json"]["results"]] == ["duplicate"]
    assert database.query("SELECT transaction_id, metadata FROM transactions") == [(5, None)]


def test_a_row_stored_with_empty_metadata_before_is_a_duplicate_of_its_retry(
    runner: FunctionRunner, database: Database
) -> None:
    assert post(runner, transaction(6))["statusCode"] == 201
    database.execute("UPDATE transactions SET metadata = '{}'::jsonb WHERE transaction_id = 6")  # as stored before
    for retry in (transaction(6), transaction(6, metadata={})):
        answer = post(runner, retry)
        assert [r["status"] for r in answer["json"]["results"]] == ["duplicate"], answer["body"][:500]
    assert database.query("SELECT count(*) FROM transactions") == [(1,)]


@pytest.mark.parametrize("field", ["channel", "country", "merchant_category", "card_id", "ip_address", "device_id"])
def test_an_empty_string_attribute_stays_refused_not_read_as_absent(runner: FunctionRunner, field: str) -> None:
    answer = post(runner, transaction(7, **{field: ""}))
    assert answer["statusCode"] == 422 and [d["field"] for d in answer["json"]["error"]["details"]] == [field]


# --- 2. one parser for every time window's bound ------------------------------------------------------------------

# --until of `rules snooze` is when a snooze ends (an instant, in the future), not a window's bound.
NOT_A_WINDOW = {("rules", "snooze", "--until")}


def _bound_actions() -> list[tuple[tuple[str, ...], argparse.Action]]:
    found = []

    def walk(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk((*path, name), child)
            for option in {"--from", "--to", "--until"} & set(action.option_strings):
                if (*path, option) not in NOT_A_WINDOW:
                    found.append(((*path, option), action))

    for name, (module_name, _) in COMMANDS.items():
        parser = argparse.ArgumentParser(prog=name)
        importlib.import_module(module_name).register(parser)
        walk((name,), parser)
    return found


def test_every_cli_window_bound_is_read_by_the_one_parser() -> None:
    actions = _bound_actions()
    commands = {path[0] for path, _ in actions}
    assert {"backtest", "evaluate", "models", "replay", "train"} <= commands, commands
    assert [path for path, action in actions if action.type is not period_argument] == []
    assert period_argument("2024-05-01") == period_argument("2024-05-01T00:00:00Z") == MAY_1_2024_MS
    with pytest.raises(argparse.ArgumentTypeError, match=r"month must be in 1\.\.12"):
        period_argument("2024-13-01")


def test_backtest_takes_a_bare_date_as_evaluate_does(database: Database, capsys: pytest.CaptureFixture[str]) -> None:
    from txguard_dev.cli import main

    rules = str(ROOT / "rules" / "seed.json")
    period = ["--from", "2024-05-02", "--to", "2024-05-01"]
    # Both dates are read (as their midnights): the period is refused as reversed, naming both.
    assert main(["backtest", "--rules", rules, *period, "--database-url", database.admin_url]) == 2
    assert "--from 2024-05-02T00:00:00.000Z is after --to 2024-05-01T00:00:00.000Z" in capsys.readouterr().err


def test_store_data_reads_a_bare_date_bound_as_its_midnight_utc(runner: FunctionRunner) -> None:
    before, after = MAY_1_2024_MS - 1, MAY_1_2024_MS
    stored = post(runner, {"transactions": [transaction(1, timestamp=before), transaction(2, timestamp=after)]})
    assert stored["statusCode"] == 201
    event = with_query(load_event("store_data_list.json"), {"from": "2024-05-01", "to": "2024-05-02"})
    answer = invoke(runner, "IngestFunction", event)
    assert answer["statusCode"] == 200, answer["body"][:500]
    assert [t["transaction_id"] for t in answer["json"]["transactions"]] == [2]
    event = with_query(load_event("store_data_list.json"), {"to": "2024-05-01"})
    assert [t["transaction_id"] for t in invoke(runner, "IngestFunction", event)["json"]["transactions"]] == [1]
    event = with_query(load_event("store_data_list.json"), {"from": "2024-02-30"})
    answer = invoke(runner, "IngestFunction", event)
    assert answer["statusCode"] == 422 and answer["json"]["error"]["details"][0]["field"] == "from"


# --- 3. an empty query value is refused on every route ------------------------------------------------------------

FUNCTION_OF = {"/store_data": "IngestFunction", "/labels": "IngestFunction", "/rules": "IngestFunction"}
FUNCTION_OF |= {"/is_fraud": "DetectFunction", "/models": "DetectFunction", "/lists": "ListsFunction"}


def _query_parameters() -> list[tuple[str, str, str]]:
    document = json.loads((ROOT / "docs" / "openapi.json").read_text())
    return [
        (method.upper(), path, parameter["name"])
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
        for parameter in operation.get("parameters", [])
        if parameter["in"] == "query"
    ]


@pytest.mark.parametrize(("method", "path", "name"), _query_parameters())
def test_an_empty_query_value_is_422_naming_the_parameter_on_every_route(
    runner: FunctionRunner, database: Database, method: str, path: str, name: str
) -> None:
    event = with_query(load_event("store_data_list.json"), {name: ""})
    event["httpMethod"], event["resource"] = method, path
    event["pathParameters"] = {segment[1:-1]: "x1" for segment in path.split("/") if segment.startswith("{")} or None
    event["path"] = path.replace("{", "").replace("}", "")
    if method != "GET":
        event["body"] = json.dumps(transaction(9))
        event["headers"] = {**event["headers"], "Content-Type": "application/json"}
    function = next(f for prefix, f in FUNCTION_OF.items() if path.startswith(prefix))
    answer = invoke(runner, function, event)
    assert answer["statusCode"] == 422, answer["body"][:500]
    assert answer["json"]["error"]["details"] == [
        {"index": None, "field": name, "value": "", "reason": "is empty; give a value or leave the parameter out"}
    ]
    assert database.query("SELECT count(*) FROM transactions") == [(0,)]
