"""Every input, every kind, through the functions as Lambda runs them: one rule for integers, decimals and
timestamps in the body, the path and the query; media types; nothing ever partly taken; out-of-range values refused
before any costly conversion. Each refused request stores nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DECISION_FIELDS, ROOT, Database, load_event, project_template
from tests.integration.helpers import invoke
from txguard_dev.cli import main
from txguard_dev.local.runner import FunctionRunner

pytestmark = pytest.mark.integration

NOW_MS = int(time.time() * 1000)
HANG_S = 2.0  # generous: a refusal takes milliseconds; this catches a superlinear conversion (it took ~39 s)


@pytest.fixture
def runner(database: Database) -> FunctionRunner:
    return FunctionRunner(project_template(), database_url=database.service_url)


def transaction(tid: int = 1, **fields: Any) -> dict[str, Any]:
    return {"account_id": 1, "transaction_id": tid, "timestamp": NOW_MS - 60_000, "amount": "10.50", **fields}


def post(runner: FunctionRunner, body: str, content_type: str | None = "application/json") -> dict[str, Any]:
    event = load_event("store_data.json")
    event["body"] = body
    for headers in (event["headers"], event["multiValueHeaders"]):
        headers.pop("Content-Type")
        if content_type is not None:
            headers["Content-Type"] = content_type if headers is event["headers"] else [content_type]
    return invoke(runner, "IngestFunction", event)


def get(runner: FunctionRunner, function: str, event_name: str, **changes: Any) -> dict[str, Any]:
    event = load_event(event_name)
    event.update(changes)
    if "queryStringParameters" in changes:
        query = changes["queryStringParameters"] or {}
        event["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()} or None
    return invoke(runner, function, event)


def refused(response: dict[str, Any], status: int, code: str) -> dict[str, Any]:
    assert response["statusCode"] == status, response["body"][:500]
    error = response["json"]["error"]
    assert set(error) == {"code", "message", "details"} and error["code"] == code, error
    return dict(error)


def stored_ids(database: Database) -> list[int]:
    return [row[0] for row in database.query("SELECT transaction_id FROM transactions ORDER BY transaction_id")]


# --- 1. nothing is ever partly taken ------------------------------------------------------------------------------


def test_a_top_level_array_is_refused_whole_and_stores_nothing(runner: FunctionRunner, database: Database) -> None:
    body = json.dumps([transaction(1), transaction(2)])
    error = refused(post(runner, body), 422, "validation_error")
    assert "transactions" in error["details"][0]["reason"]
    assert stored_ids(database) == []


def test_a_key_given_twice_is_refused_not_last_one_wins(runner: FunctionRunner, database: Database) -> None:
    body = f'{{"account_id": 1, "transaction_id": 1, "timestamp": {NOW_MS}, "amount": "1.00", "amount": "9.00"}}'
    error = refused(post(runner, body), 400, "malformed_json")
    assert "amount" in error["message"]
    assert stored_ids(database) == []


def test_an_unknown_query_parameter_is_refused_not_ignored(runner: FunctionRunner) -> None:
    response = get(runner, "IngestFunction", "store_data_list.json", queryStringParameters={"acount_id": "42"})
    error = refused(response, 422, "validation_error")
    assert error["details"][0]["field"] == "acount_id"
    answer = get(runner, "DetectFunction", "is_fraud.json", queryStringParameters={"limt": "5"})
    assert refused(answer, 422, "validation_error")["details"][0]["field"] == "limt"


# --- 2. timestamps: RFC 3339 with a zone, or epoch milliseconds; nothing that merely happens to parse --------------


@pytest.mark.parametrize(
    "timestamp",
    [
        "2024-05-01T12:00:00.0000001Z",  # 100 ns: more precise than a millisecond, once truncated silently
        "2024-05-01T12:00:00.0001Z",
        "2024-05-01T12:00:00.123000001Z",
        "20240501T120000Z",  # ISO 8601 basic format: not RFC 3339
        "2024-05-01T12:00Z",  # no seconds
        "2024-05-01 12:00:00Z",  # a space for the T
        "2024-W18-3T12:00:00Z",  # week date
        "2024-05-01T12:00:00+0200",  # offset without a colon
        "2024-05-01T12:00:00",  # no zone
        "2024-05-01",
        "２０２４-05-01T12:00:00Z",  # full-width digits
        "2024-05-01T12:00:00.Z",
        " 2024-05-01T12:00:00Z",
    ],
)
def test_a_timestamp_outside_rfc_3339_is_422(runner: FunctionRunner, database: Database, timestamp: str) -> None:
    error = refused(post(runner, json.dumps(transaction(timestamp=timestamp))), 422, "validation_error")
    assert [d["field"] for d in error["details"]] == ["timestamp"]
    assert stored_ids(database) == []


@pytest.mark.parametrize(
    ("timestamp", "ms"),
    [
        ("2024-05-01T12:00:00Z", 1_714_564_800_000),
        ("2024-05-01T12:00:00.123Z", 1_714_564_800_123),
        ("2024-05-01t12:00:00.5z", 1_714_564_800_500),
        ("2024-05-01T14:00:00.123000+02:00", 1_714_564_800_123),
        ("2024-05-01T12:00:00.1230000000000000000000000000Z", 1_714_564_800_123),
        (1_714_564_800_123, 1_714_564_800_123),
        ("1714564800123", 1_714_564_800_123),
    ],
)
def test_a_documented_timestamp_is_stored_as_its_exact_millisecond(
    runner: FunctionRunner, database: Database, timestamp: Any, ms: int
) -> None:
    response = post(runner, json.dumps(transaction(timestamp=timestamp)))
    assert response["statusCode"] == 201, response["body"]
    assert response["json"]["results"][0]["transaction"]["timestamp"] == ms
    assert database.query("SELECT txguard_ts_to_ms(ts) FROM transactions") == [(ms,)]


# --- 3. huge magnitudes are refused before anything converts them ---------------------------------------------------


HUGE = ["1e1000000", "-1e1000000", "1e-1000000", "9" * 100_000, "1" + "0" * 100_000 + ".5", "1E+999999999999999999"]


@pytest.mark.parametrize("number", HUGE, ids=lambda n: n[:12] + f"..({len(n)})")
@pytest.mark.parametrize("field", ["account_id", "transaction_id", "timestamp", "amount"])
def test_a_huge_json_number_in_any_field_is_422_in_milliseconds(
    runner: FunctionRunner, database: Database, field: str, number: str
) -> None:
    body = json.dumps(transaction(**{field: "NUMBER"})).replace('"NUMBER"', number)
    started = time.perf_counter()
    response = post(runner, body)
    elapsed = time.perf_counter() - started
    error = refused(response, 422, "validation_error")
    assert [d["field"] for d in error["details"]] == [field]
    assert elapsed < HANG_S, f"{elapsed:.2f} s"
    assert stored_ids(database) == []


@pytest.mark.parametrize("number", HUGE, ids=lambda n: n[:12] + f"..({len(n)})")
def test_a_huge_number_as_text_in_the_amount_and_timestamp_strings_is_422(
    runner: FunctionRunner, database: Database, number: str
) -> None:
    for field in ("amount", "timestamp"):
        error = refused(post(runner, json.dumps(transaction(**{field: number}))), 422, "validation_error")
        assert [d["field"] for d in error["details"]] == [field]
    assert stored_ids(database) == []


@pytest.mark.parametrize("number", ["1e1000000", "9" * 10_000, "42.0", "4_2", "٤٢", " 42", "+42", "042", "4.2e1"])
def test_a_path_or_query_integer_outside_the_rule_is_422(runner: FunctionRunner, number: str) -> None:
    started = time.perf_counter()
    by_path = get(
        runner, "DetectFunction", "is_fraud.json", path=f"/is_fraud/{number}", pathParameters={"account": number}
    )
    assert refused(by_path, 422, "validation_error")["details"][0]["field"] == "account"
    for name in ("account_id", "limit"):
        by_query = get(runner, "IngestFunction", "store_data_list.json", queryStringParameters={name: number})
        assert refused(by_query, 422, "validation_error")["details"][0]["field"] == name
    for name in ("from", "to"):
        by_query = get(runner, "IngestFunction", "store_data_list.json", queryStringParameters={name: number})
        assert refused(by_query, 422, "validation_error")["details"][0]["field"] == name
    limit = get(runner, "DetectFunction", "is_fraud.json", queryStringParameters={"limit": number})
    assert refused(limit, 422, "validation_error")["details"][0]["field"] == "limit"
    assert time.perf_counter() - started < 5 * HANG_S


def test_path_and_query_integers_in_plain_digits_are_taken(runner: FunctionRunner) -> None:
    assert post(runner, json.dumps(transaction(7, account_id=42)))["statusCode"] == 201
    listing = get(runner, "IngestFunction", "store_data_list.json", queryStringParameters={"account_id": "42"})
    assert [t["transaction_id"] for t in listing["json"]["transactions"]] == [7]
    assert get(runner, "DetectFunction", "is_fraud.json", path="/is_fraud/42")["statusCode"] == 200


# --- 4. amounts are checked exactly as sent ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "amount",
    [
        "1.00000000000000000000000000001",  # rounded to 28 digits it would pass the two-decimal EUR check
        "1.0000000000000000000000000000000000000000000000000000000000000001",
        "999999999999.999999999999999999999999999",
        "1000000000000.01",
        "0.001",
        "1e-3",
    ],
)
def test_an_amount_with_more_places_than_its_currency_is_422_however_long(
    runner: FunctionRunner, database: Database, amount: str
) -> None:
    for value in (json.dumps(amount), amount):  # as a string and as a JSON number
        body = json.dumps(transaction(amount="AMOUNT")).replace('"AMOUNT"', value)
        error = refused(post(runner, body), 422, "validation_error")
        assert [d["field"] for d in error["details"]] == ["amount"]
    assert stored_ids(database) == []


@pytest.mark.parametrize(
    ("amount", "currency", "stored"),
    [
        ("10.50", "EUR", "10.5000"),
        ("10.500000000000000000000000000000000", "EUR", "10.5000"),
        ("1E+2", "EUR", "100.0000"),
        ("1000000000000", "JPY", "1000000000000.0000"),
        ("0.0001", "CLF", "0.0001"),
        ("999999999999.999", "BHD", "999999999999.9990"),
    ],
)
def test_an_amount_within_its_currency_is_stored_exactly(
    runner: FunctionRunner, database: Database, amount: str, currency: str, stored: str
) -> None:
    response = post(runner, json.dumps(transaction(amount=amount, currency=currency)))
    assert response["statusCode"] == 201, response["body"]
    assert database.query("SELECT amount::text FROM transactions") == [(stored,)]
    again = post(runner, json.dumps(transaction(amount=amount, currency=currency)))
    assert again["json"]["results"][0]["status"] == "duplicate"


@pytest.mark.parametrize(
    "spelling",
    ["0", "0.0", "0e0", "0E+2", "0.00", '"0"', '"0.00"', '"0e0"', '"0.000000"', "-0", '"-0"', '"-0.00"', "-0.0"],
)
def test_a_zero_amount_card_verification_in_a_batch_is_stored_whole_with_a_decision(
    runner: FunctionRunner, database: Database, spelling: str
) -> None:
    # Written into the body as is, so that JSON numbers (0, 0.0, 0e0, -0) and strings both arrive as sent.
    batch = [transaction(1, amount="12.00"), transaction(2, amount="ZERO"), transaction(3, amount="30.00")]
    batch[1]["timestamp"] = batch[0]["timestamp"] + 1000
    batch[2]["timestamp"] = batch[0]["timestamp"] + 2000
    body = json.dumps({"transactions": batch}).replace('"ZERO"', spelling)
    response = post(runner, body)
    assert response["statusCode"] == 201, response["body"]
    results = response["json"]["results"]
    assert [r["status"] for r in results] == ["stored"] * 3
    assert results[1]["transaction"]["amount"] == "0.00"  # a signed zero is plain 0
    assert set(results[1]["decision"]) == DECISION_FIELDS
    assert database.query("SELECT transaction_id, amount::text FROM transactions ORDER BY transaction_id") == [
        (1, "12.0000"),
        (2, "0.0000"),
        (3, "30.0000"),
    ]


@pytest.mark.parametrize("spelling", ["-0.01", '"-0.01"', "-1", '"-1e0"', "-1000000000000"])
def test_a_negative_amount_is_still_422_naming_the_field_and_stores_nothing(
    runner: FunctionRunner, database: Database, spelling: str
) -> None:
    batch = [transaction(1, amount="0"), transaction(2, amount="NEGATIVE")]
    body = json.dumps({"transactions": batch}).replace('"NEGATIVE"', spelling)
    error = refused(post(runner, body), 422, "validation_error")
    assert [(d["index"], d["field"], d["reason"]) for d in error["details"]] == [
        (1, "amount", "amount must not be negative")
    ]
    assert stored_ids(database) == []


def test_the_table_refuses_a_negative_amount_itself(database: Database) -> None:
    import psycopg2

    with pytest.raises(psycopg2.errors.CheckViolation):
        database.execute(
            "INSERT INTO transactions (transaction_id, account_id, ts, amount, currency, fraud, score, reasons,"
            " rule_set_version) SELECT 1, 1, now(), -0.01, 'EUR', false, 0, '[]', max(version) FROM rule_sets"
        )


# --- 5. one rule for number text ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "amount",
    ["1__0.5_", "1_0.50", "١٠.٥", "１０.５", "10.5\n", " 10.5", "+10.5", "010.5", ".5", "5.", "0x10", "10,5", "1e", ""],
)
def test_amount_text_other_than_plain_ascii_decimal_is_422(
    runner: FunctionRunner, database: Database, amount: str
) -> None:
    error = refused(post(runner, json.dumps(transaction(amount=amount))), 422, "validation_error")
    assert [d["field"] for d in error["details"]] == ["amount"]
    assert stored_ids(database) == []


@pytest.mark.parametrize("value", ["42.0", "4.2e1", "42e0", '"42"', "true"])
@pytest.mark.parametrize("field", ["account_id", "transaction_id"])
def test_a_body_integer_is_a_json_integer_and_nothing_else(
    runner: FunctionRunner, database: Database, field: str, value: str
) -> None:
    body = json.dumps(transaction(**{field: "N"})).replace('"N"', value)
    error = refused(post(runner, body), 422, "validation_error")
    assert [d["field"] for d in error["details"]] == [field]
    assert stored_ids(database) == []


@pytest.mark.parametrize(
    "timestamp", ["1714564800123.0", "1.714564800123e12", '"1714564800123.0"', '"1_714_564_800_123"']
)
def test_a_timestamp_in_milliseconds_is_an_integer_and_nothing_else(
    runner: FunctionRunner, database: Database, timestamp: str
) -> None:
    body = json.dumps(transaction(timestamp="T")).replace('"T"', timestamp)
    error = refused(post(runner, body), 422, "validation_error")
    assert [d["field"] for d in error["details"]] == ["timestamp"]
    assert stored_ids(database) == []


# --- 6. media types ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "APPLICATION/JSON",
        "Application/Json",
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
        'application/json; charset="utf-8"',
        "application/vnd.txguard+json",
    ],
)
def test_json_in_any_spelling_of_its_media_type_is_stored(
    runner: FunctionRunner, database: Database, content_type: str
) -> None:
    response = post(runner, json.dumps(transaction(5)), content_type)
    assert response["statusCode"] == 201, response["body"]
    assert stored_ids(database) == [5]


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "TEXT/PLAIN",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
        "application/jsonx",
        "application/json; charset",
        "json",
        "application/json, text/plain",
    ],
)
def test_anything_but_json_is_415_never_500(runner: FunctionRunner, database: Database, content_type: str) -> None:
    refused(post(runner, json.dumps(transaction(6)), content_type), 415, "unsupported_content_type")
    assert stored_ids(database) == []


def test_a_body_without_a_content_type_is_415_and_an_empty_one_stays_empty_body(
    runner: FunctionRunner, database: Database
) -> None:
    error = refused(post(runner, json.dumps(transaction(7)), None), 415, "unsupported_content_type")
    assert error["message"] == "the request has no Content-Type; send application/json"
    refused(post(runner, "", None), 400, "empty_body")
    assert stored_ids(database) == []


# --- the CLI reads numbers, date-times and rule files by the same rules ------------------------------------------


@pytest.mark.parametrize("when", ["4_2", "42.0", "٤٢", "1e1000000", "2024-05-01T12:00:00.0000001Z", "20240501T120000Z"])
def test_backtest_refuses_a_period_bound_outside_the_rule(
    database: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str], when: str
) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text((ROOT / "rules" / "seed.json").read_text())
    with pytest.raises(SystemExit) as exited:  # argparse refuses it, as every command's --from
        main(["backtest", "--rules", str(rules), "--from", when, "--database-url", database.admin_url])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--from" in err and when[:20] in err, err


@pytest.mark.parametrize(
    "text",
    [
        '{"threshold": "0.5", "threshold": "0.9", "rules": []}',  # a key twice: which one would be applied?
        '{"threshold": NaN, "rules": []}',
        '{"threshold": 1e999999999999999999999, "rules": []}',
    ],
    ids=["key-twice", "nan", "exponent-past-any-range"],
)
@pytest.mark.parametrize("command", ["apply", "backtest"])
def test_a_rule_file_is_read_by_the_one_json_rule(
    database: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, command: str
) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(text)
    before = database.query("SELECT count(*) FROM rule_sets")
    args = ["rules", "apply", str(rules)] if command == "apply" else ["backtest", "--rules", str(rules)]
    assert main([*args, "--database-url", database.admin_url]) == 2
    assert capsys.readouterr().err
    assert database.query("SELECT count(*) FROM rule_sets") == before


@pytest.mark.parametrize("run_id", ["4_2", "42.0", "٤٢", "+42", "9" * 5000])
def test_evaluate_refuses_a_run_id_outside_the_integer_rule(capsys: pytest.CaptureFixture[str], run_id: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["evaluate", "--run-id", run_id])
    assert exited.value.code == 2
    assert "--run-id" in capsys.readouterr().err


# --- messages say what is wrong in the client's terms -------------------------------------------------------------


@pytest.mark.parametrize("offset", ["+24:00", "-24:00", "+23:60"])
def test_a_zone_offset_out_of_range_is_named_as_such(runner: FunctionRunner, database: Database, offset: str) -> None:
    timestamp = f"2024-05-01T12:00:00{offset}"
    error = refused(post(runner, json.dumps(transaction(timestamp=timestamp))), 422, "validation_error")
    (detail,) = error["details"]
    assert detail["field"] == "timestamp"
    assert detail["reason"].endswith("the zone offset must be between -23:59 and +23:59"), detail
    assert stored_ids(database) == []


@pytest.mark.parametrize(
    ("function", "event_name"), [("IngestFunction", "store_data_list.json"), ("DetectFunction", "is_fraud.json")]
)
def test_a_query_parameter_given_twice_is_refused_naming_it(
    runner: FunctionRunner, function: str, event_name: str
) -> None:
    event = load_event(event_name)
    event["queryStringParameters"] = {"limit": "2"}  # API Gateway's single-value map keeps the last
    event["multiValueQueryStringParameters"] = {"limit": ["1", "2"]}
    error = refused(invoke(runner, function, event), 422, "validation_error")
    assert error["details"] == [
        {"index": None, "field": "limit", "value": '["1", "2"]', "reason": "given more than once; give it once"}
    ]


@pytest.mark.parametrize(
    ("function", "event_name"), [("IngestFunction", "store_data_list.json"), ("DetectFunction", "is_fraud.json")]
)
def test_an_invalid_cursor_is_detailed_in_the_one_shape(runner: FunctionRunner, function: str, event_name: str) -> None:
    assert post(runner, json.dumps(transaction(8, account_id=42)))["statusCode"] == 201
    forged = "Zm9yZ2Vk" + "x" * 190
    error = refused(get(runner, function, event_name, queryStringParameters={"cursor": forged}), 400, "invalid_cursor")
    (detail,) = error["details"]
    assert detail == {"index": None, "field": "cursor", "value": forged, "reason": error["message"]}


@pytest.mark.parametrize("value", ["yes", "1", "TRUE", "True", "on", " true"])  # "": test_input_forms.py
def test_recompute_is_exactly_true_or_false(runner: FunctionRunner, value: str) -> None:
    assert post(runner, json.dumps(transaction(9, account_id=42)))["statusCode"] == 201
    answer = get(runner, "DetectFunction", "is_fraud.json", queryStringParameters={"recompute": value})
    (detail,) = refused(answer, 422, "validation_error")["details"]
    assert (detail["field"], detail["value"], detail["reason"]) == ("recompute", value, "must be true or false")
    for taken in ("true", "false"):
        response = get(runner, "DetectFunction", "is_fraud.json", queryStringParameters={"recompute": taken})
        assert (response["statusCode"], response["json"]["recomputed"]) == (200, taken == "true")


def test_a_reversed_time_range_is_refused_naming_both_bounds(runner: FunctionRunner) -> None:
    query = {"from": "2024-05-02T00:00:00Z", "to": "2024-05-01T00:00:00Z"}
    error = refused(
        get(runner, "IngestFunction", "store_data_list.json", queryStringParameters=query), 422, "validation_error"
    )
    assert [(d["field"], d["value"]) for d in error["details"]] == [("from", query["from"]), ("to", query["to"])]
    same = get(
        runner,
        "IngestFunction",
        "store_data_list.json",
        queryStringParameters={"from": "1714564800000", "to": "1714564800000"},
    )
    assert same["statusCode"] == 200


def test_backtest_refuses_a_reversed_period(
    database: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text((ROOT / "rules" / "seed.json").read_text())
    period = ["--from", "2024-05-02T00:00:00Z", "--to", "2024-05-01T00:00:00Z"]
    assert main(["backtest", "--rules", str(rules), *period, "--database-url", database.admin_url]) == 2
    err = capsys.readouterr().err
    assert "--from 2024-05-02T00:00:00.000Z is after --to 2024-05-01T00:00:00.000Z" in err, err


@pytest.mark.parametrize("constant", ["\u0661\u0662", "007", ".5", "1e18"])
def test_rules_apply_stores_nothing_for_a_constant_outside_the_decimal_rule(
    database: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str], constant: str
) -> None:
    rules = tmp_path / "rules.json"
    when = f"amount > {constant}"
    rules.write_text(json.dumps({"rules": [{"id": "r", "description": "d", "when": when, "score": "0.5"}]}))
    before = database.query("SELECT count(*) FROM rule_sets")
    assert main(["rules", "apply", str(rules), "--database-url", database.admin_url]) == 1
    assert f"the constant {constant}" in capsys.readouterr().err.replace("'", "")
    assert database.query("SELECT count(*) FROM rule_sets") == before
