"""What a refusal shows back, on every transport (HTTP answers, the log, the CLI): a card number masked however it
was sent, the route's own words, the real lengths and names; and a merchant id taken alike by every path."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Database, load_event, project_template
from txguard_dev.local.runner import FunctionRunner

pytestmark = pytest.mark.integration

PAN = 4111111111111111
MASKED = "411111******1111"
TRANSACTION = {"account_id": 50, "transaction_id": 6002, "timestamp": 1714700000000, "amount": "1.00"}


@pytest.fixture
def runner(database: Database) -> FunctionRunner:
    return FunctionRunner(project_template(), database_url=database.service_url)


def call(
    runner: FunctionRunner,
    function: str,
    event_name: str,
    body: Any = None,
    path: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    event = load_event(event_name)
    if body is not None:
        event["body"] = json.dumps(body)
    if path is not None:
        event["pathParameters"] = path
        event["path"] = event["resource"]
        for name, value in path.items():
            event["path"] = event["path"].replace("{" + name + "}", value)
    if query is not None:
        event["queryStringParameters"] = query
        event["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()}
    result = runner.call(function, event)
    assert not result.failed, result.output
    response = json.loads(result.output)
    return response["statusCode"], json.loads(response["body"])


def txguard(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from txguard_dev.cli import main

    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_a_card_number_sent_as_a_json_integer_is_masked_in_the_answer_and_the_log(
    runner: FunctionRunner, database: Database, log_lines: io.StringIO
) -> None:
    for body in (
        {**TRANSACTION, "card_id": PAN},
        {"transactions": [{**TRANSACTION, "card_id": PAN}]},
        {**TRANSACTION, "currency": PAN},  # a reason that quotes the value
    ):
        status, answer = call(runner, "IngestFunction", "store_data.json", body)
        assert status == 422, answer
        assert MASKED in json.dumps(answer)
    call(runner, "ListsFunction", "lists_create.json", {"name": "bl_cards", "kind": "card", "action": "block"})
    status, answer = call(runner, "ListsFunction", "list_items_add.json", {"value": PAN}, path={"name": "bl_cards"})
    assert status == 422 and answer["error"]["details"][0]["value"] == MASKED, answer
    status, answer = call(runner, "ListsFunction", "list_items_add.json", {"items": [{"value": PAN}]}, {"name": "x"})
    logged = log_lines.getvalue()
    assert "invalid request" in logged and MASKED in logged
    assert str(PAN) not in logged
    assert database.query("SELECT count(*) FROM transactions") == [(0,)]


def test_the_cli_masks_a_card_number_in_every_refusal(
    database: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert txguard(capsys, "lists", "create", "bl_cards", "--kind", "card", "--action", "block")[0] == 0
    items = tmp_path / "cards.csv"
    items.write_text(f"value\ntok_1\n{PAN}\n")
    candidates = tmp_path / "lists.json"
    candidates.write_text(json.dumps({"lists": [{"name": "bl_cards", "items": [{"value": PAN}]}]}))
    rules = tmp_path / "rules.json"
    rules.write_text(
        json.dumps(
            {"threshold": "0.5", "rules": [{"id": "r", "when": f"card_id = '{PAN}'", "score": 1, "description": "d"}]}
        )
    )
    for argv in (
        ("lists", "import", "--no-progress", "bl_cards", str(items)),
        ("lists", "add", "bl_cards", str(PAN)),
        ("lists", "remove", "bl_cards", str(PAN)),
        ("lists", "changes", "bl_cards", "--value", str(PAN)),
        ("backtest", "--lists", str(candidates), "--database-url", database.admin_url),
        ("rules", "apply", str(rules), "--database-url", database.admin_url),
    ):
        status, out, err = txguard(capsys, *argv)
        assert status != 0, (argv, out, err)
        assert MASKED in err and str(PAN) not in out + err, (argv, err)
    assert database.query("SELECT count(*) FROM list_items") == [(0,)]


def test_a_merchant_id_that_passes_the_luhn_check_is_taken_by_lists_and_rules_as_by_transactions(
    runner: FunctionRunner, database: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    merchant = str(PAN)
    status, _ = call(runner, "IngestFunction", "store_data.json", {**TRANSACTION, "merchant_id": merchant})
    assert status == 201
    call(runner, "ListsFunction", "lists_create.json", {"name": "merch", "kind": "merchant", "action": None})
    status, added = call(runner, "ListsFunction", "list_items_add.json", {"value": merchant}, {"name": "merch"})
    assert (status, added["added"]) == (200, 1), added
    assert txguard(capsys, "lists", "add", "merch", "m-5500000000000004")[0] == 0
    rules = tmp_path / "rules.json"
    when = f"merchant_id = '{merchant}' OR merchant_id IN LIST merch"
    rules.write_text(
        json.dumps({"threshold": "0.5", "rules": [{"id": "m", "when": when, "score": 1, "description": "d"}]})
    )
    status, _, err = txguard(capsys, "rules", "apply", str(rules), "--database-url", database.admin_url)
    assert status == 0, err
    assert database.query("SELECT value FROM list_items ORDER BY value") == [
        ("4111111111111111",),
        ("m-5500000000000004",),
    ]


def test_labels_are_refused_in_the_words_of_labels(runner: FunctionRunner, database: Database) -> None:
    good = {"transaction_id": 1, "fraud": True, "source": "chargeback"}
    status, answer = call(runner, "IngestFunction", "labels.json", [good])
    assert status == 422
    assert (
        answer["error"]["message"]
        == 'the body is an array; send one label as an object, or a batch as {"labels": [...]}'
    )
    assert answer["error"]["details"][0]["reason"] == 'must be a JSON object: a label, or {"labels": [...]} for a batch'
    status, answer = call(runner, "IngestFunction", "labels.json", {"labels": [good, 5]})
    assert status == 422
    assert answer["error"]["message"] == "1 of the labels are invalid; nothing was stored"
    assert answer["error"]["details"] == [{"index": 1, "field": None, "value": 5, "reason": "must be a JSON object"}]
    status, answer = call(runner, "IngestFunction", "labels.json", {"labels": []})
    assert answer["error"]["details"][0]["reason"] == "must hold at least 1 item; it holds 0"
    status, answer = call(runner, "IngestFunction", "store_data.json", [TRANSACTION])
    assert answer["error"]["message"].startswith("the body is an array; send one transaction as an object")
    assert database.query("SELECT count(*) FROM labels") == [(0,)]


def test_a_read_of_a_list_says_nothing_of_storing_or_removing(
    runner: FunctionRunner, database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    call(runner, "ListsFunction", "lists_create.json", {"name": "ips", "kind": "ip", "action": "allow"})
    call(runner, "ListsFunction", "lists_create.json", {"name": "bl_cards", "kind": "card", "action": "block"})
    for event, value in (("list_items.json", "zzz"), ("list_changes.json", "notip")):
        status, answer = call(runner, "ListsFunction", event, path={"name": "ips"}, query={"value": value})
        assert status == 422, answer
        message = answer["error"]["message"]
        assert "nothing was" not in message and "ip list" in message, message
        assert answer["error"]["details"][0]["field"] == "value" and answer["error"]["details"][0]["value"] == value
    status, _, err = txguard(capsys, "lists", "changes", "bl_cards", "--value", "a b")
    assert status == 2 and "nothing was" not in err and "value = 'a b'" in err, err


def test_a_list_defined_otherwise_is_a_conflict_naming_the_list_and_its_definition(runner: FunctionRunner) -> None:
    call(runner, "ListsFunction", "lists_create.json", {"name": "ips", "kind": "ip", "action": "allow"})
    status, answer = call(
        runner, "ListsFunction", "lists_create.json", {"name": "ips", "kind": "ip", "action": "block"}
    )
    assert status == 409
    assert answer["error"]["details"] == [
        {"index": None, "field": "action", "value": "block", "reason": "list 'ips' has action 'allow'"}
    ]


def test_labels_import_refuses_a_repeated_column_and_reports_every_bad_json_line_with_the_file(
    database: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repeated = tmp_path / "labels.csv"
    repeated.write_text("transaction_id,fraud,source,fraud\n1,true,chargeback,false\n")
    status, _, err = txguard(capsys, "labels", "import", "--no-progress", str(repeated))
    assert status == 2 and str(repeated) in err and "'fraud' named more than once" in err, err
    lines = tmp_path / "labels.jsonl"
    good = json.dumps({"transaction_id": 1, "fraud": True, "source": "chargeback"})
    lines.write_text(f"{good}\n{{bad\n{good[:-1]}\n" + json.dumps({"transaction_id": 2, "fraud": True}) + "\n")
    status, _, err = txguard(capsys, "labels", "import", "--no-progress", str(lines))
    assert status == 2, err
    assert f"{lines}: 3 problem(s); nothing was stored" in err
    assert "line 2: malformed JSON" in err and "line 3: malformed JSON" in err
    assert "line 4: source: is required" in err and "None" not in err
    assert database.query("SELECT count(*) FROM labels") == [(0,)]


def test_candidate_lists_name_a_missing_kind_without_python_words(
    database: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    candidates = tmp_path / "lists.json"
    candidates.write_text(json.dumps({"lists": [{"name": "new_list"}]}))
    status, _, err = txguard(capsys, "backtest", "--lists", str(candidates), "--database-url", database.admin_url)
    assert status == 2 and "lists[0].kind: must be one of" in err and "None" not in err, err
