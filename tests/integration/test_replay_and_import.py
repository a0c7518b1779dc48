"""`txguard replay` and `txguard labels import` against a real database, through the service's own code."""

from __future__ import annotations

import gzip
import json
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import ROOT, Database

pytestmark = pytest.mark.integration

SAMPLE = ROOT / "tests" / "fixtures" / "handbook-sample.csv.gz"
DAY = 86_400_000


def txguard(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from txguard_dev.cli import main

    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def sample_rows() -> list[list[str]]:
    with gzip.open(SAMPLE, "rt") as file:
        return [line.strip().split(",") for line in file][1:]


def steps_match_the_view(database: Database) -> None:
    query = "SELECT merchant_id, tx_day, known_day, frauds FROM {} ORDER BY 1, 2, 3"
    assert database.query(query.format("merchant_label_daily")) == database.query(query.format("merchant_label_steps"))


def test_replay_of_the_handbook_preset_stores_every_transaction_and_its_label_a_delay_later(
    database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ("replay", "--preset", "handbook", "--batch-size", "1", "--no-progress", str(SAMPLE))
    status, out, err = txguard(capsys, *argv)
    assert status == 0, err
    assert "30 stored, 0 duplicates" in out and "labels (delay 7 days): 30 stored, 0 duplicates, 0 not due" in out
    assert "tx/s" in out
    rows = {int(r[0]): r for r in sample_rows()}
    stored = database.query(
        "SELECT transaction_id, account_id, merchant_id, amount::text, currency, txguard_ts_to_ms(ts) FROM transactions"
    )
    for tid, account, merchant, amount, currency, ts in stored:
        row = rows[tid]
        assert (account, merchant, currency) == (int(row[2]) + 1, f"t{row[3]}", "EUR")
        assert float(amount) == float(row[4])
        assert ts == int(datetime.fromisoformat(row[1] + "+00:00").timestamp() * 1000)
    labels = database.query(
        """SELECT l.transaction_id, l.fraud, l.source, l.reason,
                  txguard_ts_to_ms(l.labelled_at) - txguard_ts_to_ms(t.ts)
           FROM labels l JOIN transactions t USING (transaction_id)"""
    )
    names = {"0": None, "1": "amount_above_220", "2": "compromised_terminal", "3": "compromised_card"}
    assert sorted(labels) == sorted((tid, r[5] == "1", "chargeback", names[r[6]], 7 * DAY) for tid, r in rows.items())
    # Released in event time: a label is sent after every transaction before its labelled_at and before the rest.
    order = database.query(
        """SELECT bool_and(CASE WHEN t.ts >= l.labelled_at THEN l.received_at < t.stored_at
                                ELSE l.received_at > t.stored_at END)
           FROM labels l CROSS JOIN transactions t"""
    )
    assert order == [(True,)]
    steps_match_the_view(database)

    again = txguard(capsys, "replay", "--preset", "handbook", "--no-progress", str(SAMPLE))
    assert again[0] == 0 and "0 stored, 30 duplicates" in again[1]
    assert "labels (delay 7 days): 0 stored, 30 duplicates" in again[1]
    assert database.query("SELECT count(*) FROM labels") == [(30,)]


def test_a_direct_replay_leaves_the_service_s_log_level_as_it_found_it(
    database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the service's logger at INFO in a process that goes on serving after a direct replay (a test run, a
    # notebook),
    import logging

    from txguard.observability import logger

    level = logger.log_level
    logger.setLevel(logging.INFO)
    try:
        status, _, err = txguard(capsys, "replay", "--preset", "handbook", "--no-progress", str(SAMPLE))
        assert status == 0, err
        # then its INFO lines still come afterwards (the replay quiets it only while it stores).
        assert logger.log_level == logging.INFO
    finally:
        logger.setLevel(level)


def test_replay_with_frauds_only_and_a_window_sends_only_those(
    database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = txguard(
        capsys, "replay", "--preset", "handbook", "--frauds-only", "--until", "2018-04-08T00:00:00Z",
        "--label-delay-days", "1", "--no-progress", str(SAMPLE),
    )  # fmt: skip
    assert status == 0, err
    rows = [r for r in sample_rows() if r[1] < "2018-04-08"]
    frauds = [r for r in rows if r[5] == "1"]
    assert database.query("SELECT count(*) FROM transactions") == [(len(rows),)]
    assert database.query("SELECT count(*), bool_and(fraud) FROM labels") == [(len(frauds), True)]


def test_replay_takes_a_date_for_its_window_as_evaluate_and_train_do(
    database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:  # argparse's usage error
        txguard(capsys, "replay", "--preset", "handbook", "--until", "2018-13-01", "--no-progress", str(SAMPLE))
    assert refused.value.code == 2
    assert "argument --until: '2018-13-01': month must be in 1..12" in capsys.readouterr().err
    assert database.query("SELECT count(*) FROM transactions") == [(0,)]
    status, _, err = txguard(
        capsys, "replay", "--preset", "handbook", "--from", "2018-04-08", "--no-progress", str(SAMPLE)
    )
    assert status == 0, err
    later = [r for r in sample_rows() if r[1] >= "2018-04-08"]
    assert 0 < len(later) < len(sample_rows())
    assert database.query("SELECT count(*), min(ts) >= '2018-04-08T00:00:00Z' FROM transactions") == [
        (len(later), True)
    ]


def test_replay_with_a_column_map_reads_json_lines(
    database: Database, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "tx.jsonl"
    path.write_text(
        '{"id": 2, "acct": 5, "when": "2024-05-02T00:00:00Z", "amount": "3.10", "bad": true}\n'
        '{"id": 1, "acct": 5, "when": 1714521600000, "amount": 7, "bad": false}\n'
    )
    status, _, err = txguard(
        capsys, "replay", "--map", "transaction_id=id", "--map", "account_id=acct", "--map", "timestamp=when",
        "--map", "fraud=bad", "--source", "analyst:bob", "--no-progress", str(path),
    )  # fmt: skip
    assert status == 0, err
    assert database.query("SELECT transaction_id FROM transactions ORDER BY ts") == [(1,), (2,)]
    assert database.query("SELECT transaction_id, fraud, source FROM labels ORDER BY label_id") == [
        (1, False, "analyst:bob"),
        (2, True, "analyst:bob"),
    ]


def test_replay_refuses_a_map_naming_a_column_the_file_does_not_have_and_sends_nothing(
    database: Database, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # A misspelt column would otherwise read as empty cells: a fraud column nobody reads sends no label at all.
    csv_path = tmp_path / "tx.csv"
    csv_path.write_text("transaction_id,account_id,timestamp,amount,is_fraud\n1,5,2024-05-01T00:00:00Z,7.00,1\n")
    jsonl_path = tmp_path / "tx.jsonl"
    jsonl_path.write_text('{"transaction_id": 1, "account_id": 5, "timestamp": 1714521600000, "amount": 7, "bad": 1}\n')
    for path, maps in ((csv_path, ["fraud=isfraud"]), (jsonl_path, ["fraud=bad", "country=cc"])):
        status, _, err = txguard(capsys, "replay", *[a for m in maps for a in ("--map", m)], "--no-progress", str(path))
        assert status == 2, err
        missing = maps[-1]
        assert f"--map {missing!r}: no row of {path} has a column {missing.split('=')[1]!r}" in err
    assert database.query("SELECT count(*) FROM transactions") == [(0,)]
    assert database.query("SELECT count(*) FROM labels") == [(0,)]


def test_replay_reports_every_unreadable_json_line_and_masks_a_card_number(
    database: Database, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "tx.jsonl"
    good = '{"transaction_id": 1, "account_id": 5, "timestamp": 1714521600000, "amount": "1.00"'
    path.write_text(f'{good}}}\n{{bad\n{good}\n{good}, "card_id": 4111111111111111}}\n')
    status, _, err = txguard(capsys, "replay", "--no-progress", str(path))
    assert status == 2, err
    assert "line 2: malformed JSON" in err and "line 3: malformed JSON" in err
    assert "line 4: card_id = '411111******1111'" in err and "4111111111111111" not in err
    assert database.query("SELECT count(*) FROM transactions") == [(0,)]


def test_replay_refuses_a_bad_row_by_line_and_sends_nothing(
    database: Database, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "bad.csv"
    with gzip.open(SAMPLE, "rt") as file:
        lines = file.read().splitlines()
    lines[3] = lines[3].replace(lines[3].split(",")[4], "-4.00")
    path.write_text("\n".join(lines) + "\n")
    status, _, err = txguard(capsys, "replay", "--preset", "handbook", "--no-progress", str(path))
    assert status == 2
    assert "line 4: amount = '-4.00': amount must not be negative" in err
    assert database.query("SELECT count(*) FROM transactions") == [(0,)]
    assert database.query("SELECT count(*) FROM labels") == [(0,)]


def test_labels_import_stores_a_csv_and_a_json_lines_file_exactly_once(
    database: Database, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(
        "transaction_id,fraud,source,labelled_at,reason\n"
        "11,true,chargeback,1714521600000,stolen card\n"
        "12,false,analyst:alice,2024-05-01T00:00:00Z,\n"
    )
    status, out, err = txguard(capsys, "labels", "import", "--no-progress", str(csv_path))
    assert status == 0, err
    assert "2 labels" in out and "2 stored, 0 duplicates" in out and "labels/s" in out
    jsonl = tmp_path / "labels.jsonl"
    jsonl.write_text(
        json.dumps({"transaction_id": 11, "fraud": True, "source": "chargeback", "labelled_at": 1714521600000,
                    "reason": "stolen card"}) + "\n"
        + json.dumps({"transaction_id": 13, "fraud": True, "source": "customer_report"}) + "\n"
    )  # fmt: skip
    status, out, _ = txguard(capsys, "labels", "import", "--no-progress", str(jsonl))
    assert status == 0 and "1 stored, 1 duplicates" in out
    assert database.query("SELECT transaction_id, fraud, source, reason FROM labels ORDER BY label_id") == [
        (11, True, "chargeback", "stolen card"),
        (12, False, "analyst:alice", None),
        (13, True, "customer_report", None),
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("14,yes,chargeback,,", "line 3: fraud = 'yes': must be a JSON boolean: true or false"),
        ("14,true,Chargeback,,", "line 3: source = 'Chargeback'"),
        ("14,true,chargeback,2024-13-01T00:00:00Z,", "line 3: labelled_at = '2024-13-01T00:00:00Z'"),
        ("x14,true,chargeback,,", "line 3: transaction_id = 'x14'"),
        ("14,true,chargeback,,,extra", "line 3: (extra cells)"),
        # a file cut short inside a quoted cell, or text after a closing quote: not CSV as written
        ('14,true,chargeback,,"card reported', "line 3: not CSV as written: unexpected end of data"),
        ('14,true,chargeback,,"stolen"card', "line 3: not CSV as written: ',' expected after '\"'"),
    ],
)
def test_labels_import_refuses_a_bad_row_by_line_and_stores_nothing(
    database: Database, capsys: pytest.CaptureFixture[str], tmp_path: Path, line: str, expected: str
) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("transaction_id,fraud,source,labelled_at,reason\n13,true,chargeback,,\n" + line + "\n")
    status, _, err = txguard(capsys, "labels", "import", "--no-progress", str(path))
    assert status == 2
    assert expected in err and "nothing was stored" in err
    assert database.query("SELECT count(*) FROM labels") == [(0,)]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('6,2,2024-05-01T00:00:00Z,7.00,"1', "line 3: not CSV as written: unexpected end of data"),
        ("6,2,2024-05-01T00:00:00Z,7.00,1,m-1", "line 3: (extra cells) = '[\"m-1\"]': the row has more cells than"),
    ],
)
def test_replay_refuses_a_csv_row_that_is_not_csv_as_written_and_sends_nothing(
    database: Database, capsys: pytest.CaptureFixture[str], tmp_path: Path, line: str, expected: str
) -> None:
    path = tmp_path / "tx.csv"
    path.write_text("account_id,transaction_id,timestamp,amount,fraud\n6,1,2024-05-01T00:00:00Z,7.00,0\n" + line + "\n")
    status, _, err = txguard(capsys, "replay", "--no-progress", str(path))
    assert status == 2, err
    assert expected in err and "nothing was sent" in err
    assert database.query("SELECT count(*) FROM transactions") == [(0,)]
    assert database.query("SELECT count(*) FROM labels") == [(0,)]
