"""Labels through the real ingest function (POST /labels, GET /labels): validation, exactly once, superseding,
labels before their transactions, and merchant_label_daily kept equal to the view merchant_label_steps."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from tests.conftest import Database, load_event, project_template
from tests.integration.helpers import T0, store, tx
from txguard import db
from txguard.detection import detector_cache
from txguard.domain import FraudLabel
from txguard.ingest import store_transactions
from txguard.labels import LabelInForce, labels_in_force
from txguard.storage.labels import write_labels
from txguard_dev.local.runner import FunctionRunner

pytestmark = pytest.mark.integration
DAY = 86_400_000


def current(cur: Any) -> Any:
    return detector_cache.current(cur, 0)


@pytest.fixture
def runner(database: Database) -> FunctionRunner:
    return FunctionRunner(project_template(), database_url=database.service_url)


def post(runner: FunctionRunner, body: Any) -> tuple[int, dict[str, Any]]:
    event = load_event("labels.json")
    event["body"] = body if isinstance(body, str) else json.dumps(body)
    result = runner.call("IngestFunction", event)
    assert not result.failed, result.output
    response = json.loads(result.output)
    return response["statusCode"], json.loads(response["body"])


def get(runner: FunctionRunner, **query: str) -> tuple[int, dict[str, Any]]:
    event = load_event("labels_list.json")
    event["queryStringParameters"] = query
    event["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()}
    result = runner.call("IngestFunction", event)
    assert not result.failed, result.output
    response = json.loads(result.output)
    return response["statusCode"], json.loads(response["body"])


def rows(database: Database) -> list[tuple[Any, ...]]:
    return database.query(
        "SELECT transaction_id, fraud, source, txguard_ts_to_ms(labelled_at), reason FROM labels ORDER BY label_id"
    )


def steps_match_the_view(database: Database) -> None:
    maintained = database.query(
        "SELECT merchant_id, tx_day, known_day, frauds FROM merchant_label_daily ORDER BY 1, 2, 3"
    )
    defined = database.query("SELECT merchant_id, tx_day, known_day, frauds FROM merchant_label_steps ORDER BY 1, 2, 3")
    assert maintained == defined


def label(
    tid: int, fraud: bool = True, source: str = "chargeback", at: int | None = T0, **extra: Any
) -> dict[str, Any]:
    item: dict[str, Any] = {"transaction_id": tid, "fraud": fraud, "source": source, **extra}
    if at is not None:
        item["labelled_at"] = at
    return item


def test_the_sample_events_store_a_label_and_list_it(runner: FunctionRunner, database: Database) -> None:
    response = json.loads(runner.call("IngestFunction", load_event("labels.json")).output)
    assert response["statusCode"] == 201
    (result,) = json.loads(response["body"])["results"]
    assert result["status"] == "stored" and result["label"]["in_force"] is True
    assert rows(database) == [(9001, True, "chargeback", 1716197400000, "card reported stolen")]
    batch = json.loads(runner.call("IngestFunction", load_event("labels_batch.json")).output)
    assert [r["status"] for r in json.loads(batch["body"])["results"]] == ["stored", "stored"]
    status, body = get(runner, transaction_id="9001")
    assert status == 200 and [item["source"] for item in body["labels"]] == ["chargeback", "chargeback"]
    # Same labelled_at: the later receipt is in force.
    assert [item["in_force"] for item in body["labels"]] == [False, True]


@pytest.mark.parametrize(
    ("item", "field", "reason"),
    [
        (label(1, fraud=1), "fraud", "boolean"),  # type: ignore[arg-type]
        (label(1, fraud="true"), "fraud", "boolean"),  # type: ignore[arg-type]
        (label(1, source="Chargeback"), "source", "lower-case"),
        (label(1, source="analyst:"), "source", "lower-case"),
        (label(1, source="analyst: alice"), "source", "lower-case"),
        (label(1, at="2024-05-01"), "labelled_at", "RFC 3339"),
        (label(1, at=9_999_999_999_999), "labelled_at", "outside the accepted range"),
        (label(1, reason=""), "reason", "1 to 200"),
        (label(1, reason="x" * 201), "reason", "200"),
        (label(1, reason="a\nb"), "reason", "control"),
        (label(1, colour="red"), "colour", "unknown field"),
        ({"fraud": True, "source": "chargeback"}, "transaction_id", "is required"),
        (label(2**63), "transaction_id", "9223372036854775807"),  # type: ignore[arg-type]
        (label("7"), "transaction_id", "integer"),  # type: ignore[arg-type]
    ],
)
def test_a_bad_label_is_refused_by_field_and_nothing_is_stored(
    runner: FunctionRunner, database: Database, item: dict[str, Any], field: str, reason: str
) -> None:
    status, body = post(runner, {"labels": [label(5), item]})
    assert status == 422, body
    details = body["error"]["details"]
    assert any(d["index"] == 1 and d["field"] == field and reason in d["reason"] for d in details), details
    assert rows(database) == []


def test_a_batch_of_10001_labels_is_refused_whole(runner: FunctionRunner, database: Database) -> None:
    status, body = post(runner, {"labels": [label(i) for i in range(10_001)]})
    assert status == 422 and body["error"]["code"] == "batch_too_large"
    assert database.query("SELECT count(*) FROM labels") == [(0,)]
    status, body = post(runner, {"labels": [label(i) for i in range(10_000)]})
    assert status == 201 and database.query("SELECT count(*) FROM labels") == [(10_000,)]


def test_a_label_sent_twice_is_stored_once_and_answered_as_a_duplicate(
    runner: FunctionRunner, database: Database
) -> None:
    first = post(runner, {"labels": [label(1), label(1)]})[1]["results"]
    assert [r["status"] for r in first] == ["stored", "duplicate"]
    again = post(runner, label(1))[1]["results"]
    assert again[0]["status"] == "duplicate" and again[0]["label"]["label_id"] == first[0]["label"]["label_id"]
    # Sent as "now" and retried: the retry repeats the latest label, so it is a duplicate.
    now = post(runner, label(2, at=None, reason="stolen card"))[1]["results"][0]
    retry = post(runner, label(2, at=None, reason="stolen card"))[1]["results"][0]
    assert (now["status"], retry["status"]) == ("stored", "duplicate")
    assert retry["label"] == now["label"]
    assert len(rows(database)) == 2


def test_concurrent_sends_of_one_batch_store_it_once(database: Database) -> None:
    batch = [FraudLabel(i, i % 2 == 0, "chargeback", T0 + i) for i in range(200)]
    statuses: list[list[str]] = []

    def send() -> None:
        holder = db.ConnectionHolder()
        results = db.run_in_transaction(lambda cur: write_labels(cur, batch, T0), holder=holder)
        statuses.append([r.status for r in results])
        holder.reset()

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(s.count("stored") for s in statuses) == [0, 0, 0, 0, 0, 200]
    assert database.query("SELECT count(*) FROM labels") == [(200,)]


def test_a_later_label_supersedes_and_the_history_is_kept(runner: FunctionRunner, database: Database) -> None:
    store([tx(7, T0, "10.00", "m-1", tid=70)])
    post(runner, label(70, fraud=True, at=T0 + DAY))
    post(runner, label(70, fraud=False, source="analyst:alice", at=T0 + 3 * DAY, reason="customer confirmed"))
    post(runner, label(70, fraud=True, at=T0 + 2 * DAY))  # arrives last, but is older news
    status, body = get(runner, account_id="7")
    assert status == 200
    history = [(item["fraud"], item["in_force"]) for item in body["labels"]]
    assert history == [(True, False), (False, True), (True, False)]
    in_force = db.run_in_transaction(lambda cur: labels_in_force(cur))
    assert in_force == {70: LabelInForce(False, "analyst:alice", "customer confirmed", T0 + 3 * DAY)}
    steps_match_the_view(database)


def test_a_label_before_its_transaction_applies_when_it_arrives(runner: FunctionRunner, database: Database) -> None:
    post(runner, label(80, at=T0 + DAY))
    assert database.query("SELECT count(*) FROM merchant_label_daily") == [(0,)]
    assert db.run_in_transaction(lambda cur: labels_in_force(cur)) == {}
    store([tx(8, T0, "10.00", "m-2", tid=80)])
    assert database.query("SELECT merchant_id, frauds FROM merchant_label_daily") == [("m-2", 1)]
    steps_match_the_view(database)
    assert db.run_in_transaction(lambda cur: labels_in_force(cur, from_ms=T0, to_ms=T0 + 1)) == {
        80: LabelInForce(True, "chargeback", None, T0 + DAY)
    }
    assert db.run_in_transaction(lambda cur: labels_in_force(cur, from_ms=T0 + 1)) == {}


def test_listing_pages_with_a_cursor_and_refuses_bad_parameters(runner: FunctionRunner, database: Database) -> None:
    post(runner, {"labels": [label(3, at=T0 + i) for i in range(5)]})
    seen: list[int] = []
    cursor = None
    while True:
        query = {"transaction_id": "3", "limit": "2", **({"cursor": cursor} if cursor else {})}
        status, body = get(runner, **query)
        assert status == 200
        seen += [item["labelled_at"] for item in body["labels"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [T0 + i for i in range(5)]
    assert get(runner)[0] == 422
    assert get(runner, transaction_id="3", account_id="1")[0] == 422
    status, body = get(runner, transaction_id="3", cursor="bm90LW91cnM")
    assert status == 400 and body["error"]["code"] == "invalid_cursor"
    assert get(runner, account_id="0")[0] == 422


def _together(*works: Any) -> None:
    """Run each unit of work on its own connection, all released at once; re-raise the first failure."""
    barrier = threading.Barrier(len(works))
    errors: list[BaseException] = []

    def run(work: Any) -> None:
        holder = db.ConnectionHolder()
        try:
            barrier.wait()
            db.run_in_transaction(work, holder=holder)
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)
        finally:
            holder.reset()

    threads = [threading.Thread(target=run, args=(work,)) for work in works]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


def test_a_label_racing_its_transaction_is_counted_exactly_once(database: Database) -> None:
    # Ingest looks for waiting labels under the shared lock, label writes take it exclusive: whichever commits
    # second sees the other, so the steps are added once, never zero or two times.
    for tid in range(1000, 1015):
        transaction = [tx(9, T0 + tid, "3.00", "m-race", tid=tid)]
        label = [FraudLabel(tid, True, "chargeback", T0 + DAY)]
        _together(
            lambda cur, batch=transaction: store_transactions(cur, batch, current(cur)),
            lambda cur, batch=label: write_labels(cur, batch, T0),
        )
        steps_match_the_view(database)
    assert database.query("SELECT frauds FROM merchant_label_daily WHERE merchant_id = 'm-race'") == [(15,)]


def test_within_a_batch_a_label_sent_as_now_is_compared_with_the_latest_item_before_it(
    runner: FunctionRunner, database: Database
) -> None:
    batch = [label(4, fraud=True), label(4, fraud=False), label(4, fraud=False, at=None), label(4, fraud=True, at=None)]
    results = post(runner, {"labels": batch})[1]["results"]
    # The third repeats the second (the latest before it); the fourth differs from it, so it is new.
    assert [r["status"] for r in results] == ["stored", "stored", "duplicate", "stored"]
    assert results[2]["label"]["label_id"] == results[1]["label"]["label_id"]
    assert [r["label"]["in_force"] for r in results] == [False, False, False, True]
