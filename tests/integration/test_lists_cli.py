"""`txguard lists ...` against the real database as the service's role: create, add, remove, import (all or nothing,
problems by line), export (which import reads back), changes."""

from __future__ import annotations

import gzip
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import Database
from txguard import db
from txguard.migrate import service_login_role
from txguard_dev.cli import main

pytestmark = pytest.mark.integration


def txguard(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    db.reset_connection()
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def future(hours: int = 1) -> str:
    ms = int(time.time() * 1000) + hours * 3_600_000
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def state(database: Database) -> tuple[object, ...]:
    (row,) = database.query(
        "SELECT (SELECT coalesce(max(version), 0) FROM lists), (SELECT count(*) FROM list_items), "
        "(SELECT count(*) FROM list_changes)"
    )
    return row


def test_create_add_remove_show_and_changes(database: Database, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = txguard(capsys, "lists", "create", "trusted", "--kind", "account", "--action", "allow")
    assert (code, out.strip()) == (0, "list trusted created (version 1)")
    code, out, _ = txguard(capsys, "lists", "add", "trusted", "0042", "--note", "VIP", "--actor", "alice")
    assert (code, out.strip()) == (0, "list trusted: 1 added; version 2")
    code, out, _ = txguard(capsys, "lists", "add", "trusted", "42", "--note", "VIP", "--actor", "alice")
    assert out.strip() == "list trusted: 1 unchanged; version 2"
    code, out, _ = txguard(capsys, "lists", "set", "trusted", "--action", "none", "--actor", "bob")
    assert out.strip() == "list trusted changed (version 3)"
    code, out, _ = txguard(capsys, "lists", "show", "trusted")
    assert "account list, action none (rules read it), version 3" in out and "42" in out and "VIP" in out
    code, out, _ = txguard(capsys, "lists", "ls")
    assert out.split()[:4] == ["trusted", "account", "-", "v3"]
    code, out, _ = txguard(capsys, "lists", "remove", "trusted", "42", "43", "--actor", "carol")
    assert out.strip() == "list trusted: 1 removed, 1 unchanged; version 4"
    code, out, _ = txguard(capsys, "lists", "changes", "trusted")
    lines = out.strip().splitlines()
    assert [line.split()[2:4] for line in lines] == [
        [lines[0].split()[2], "create"],
        ["cli:alice", "add"],
        ["cli:bob", "update"],
        ["cli:carol", "remove"],
    ]
    assert lines[0].split()[2].startswith("cli:")  # the operating-system user
    assert database.query("SELECT actor FROM list_changes ORDER BY change_id")[1:] == [
        ("cli:alice",),
        ("cli:bob",),
        ("cli:carol",),
    ]


def test_bad_input_is_exit_2_naming_field_value_and_reason_and_stores_nothing(
    database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    assert txguard(capsys, "lists", "create", "countries", "--kind", "country")[0] == 0
    before = state(database)
    for argv, expected in (
        (["lists", "create", "Bad", "--kind", "country"], "name = 'Bad'"),
        (["lists", "show", "Bad-Name"], "name = 'Bad-Name'"),
        (["lists", "create", "other", "--kind", "email"], "kind = 'email'"),
        (["lists", "create", "other", "--kind", "ip", "--action", "review"], "--action 'review'"),
        (["lists", "add", "countries", "XX"], "value = 'XX': is not an ISO 3166-1 alpha-2 country code"),
        (["lists", "add", "countries", "FR", "--expires-at", "2001-01-01T00:00:00Z"], "expires_at"),
        (["lists", "remove", "countries", "France"], "value = 'France'"),
    ):
        code, _, err = txguard(capsys, *argv)
        assert code == 2, (argv, err)
        assert expected in err, err
    for argv in (["lists", "show", "countries", "--limit", "-1"], ["lists", "changes", "countries", "--limit", "0"]):
        with pytest.raises(SystemExit) as usage:
            txguard(capsys, *argv)
        assert usage.value.code == 2
        assert "--limit" in capsys.readouterr().err
    code, _, err = txguard(capsys, "lists", "add", "nope", "FR")
    assert (code, err.strip()) == (1, "txguard lists add: there is no list 'nope'")
    assert state(database) == before


def test_import_is_all_or_nothing_with_problems_by_line(
    database: Database, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    txguard(capsys, "lists", "create", "high_risk_mcc", "--kind", "merchant_category")
    before = state(database)
    bad = tmp_path / "bad.csv"
    bad.write_text(f"value,expires_at,note\n7995,,casino\n99999,,\n5411,yesterday,\n7995,{future()},again\n6011,,\n")
    code, out, err = txguard(capsys, "lists", "import", "high_risk_mcc", str(bad), "--no-progress")
    assert code == 2 and out == ""
    assert "3 problem(s); nothing was stored" in err
    assert "line 3: value = '99999'" in err
    assert "line 4: expires_at = 'yesterday'" in err
    assert "line 5: value = '7995': repeats line 2" in err
    assert state(database) == before
    for header in ("val,note\n1,2\n", "value,value\n1,1\n", ""):
        (tmp_path / "h.csv").write_text(header)
        code, _, err = txguard(capsys, "lists", "import", "high_risk_mcc", str(tmp_path / "h.csv"), "--no-progress")
        assert code == 2 and "header" in err, err
    assert state(database) == before


def test_import_then_export_round_trips_and_a_second_import_changes_nothing(
    database: Database, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    txguard(capsys, "lists", "create", "ips", "--kind", "ip", "--action", "block")
    expiry = future(48)
    source = tmp_path / "ips.csv.gz"
    with gzip.open(source, "wt", encoding="utf-8", newline="") as file:
        file.write("note,value,expires_at\n")
        for i in range(3000):
            note = f'"seen, {i}"' if i % 3 == 0 else ""
            file.write(f"{note},10.1.{i // 200}.{i % 200},{expiry if i % 2 else ''}\n")
        file.write("\n")  # a trailing blank line is no row
    code, out, err = txguard(capsys, "lists", "import", "ips", str(source), "--actor", "loader")
    assert code == 0, err
    assert out.startswith(f"3,000 items from {source}: list ips: 3,000 added; version 2 in ")
    assert out.rstrip().endswith("items/s)")
    assert "3000/3000" in err  # the progress bar
    assert database.query("SELECT count(*), count(expires_at), count(note) FROM list_items") == [(3000, 1500, 1000)]
    assert database.query(
        "SELECT sum(cardinality(item_values)), min(version), max(version) FROM list_changes WHERE operation = 'add'"
    ) == [(3000, 2, 2)]

    exported = tmp_path / "out.csv"
    code, _, _ = txguard(capsys, "lists", "export", "ips", "--out", str(exported))
    lines = exported.read_text().splitlines()
    assert lines[0] == "value,expires_at,note" and len(lines) == 3001
    assert f"10.1.0.5,{expiry}," in lines
    assert '10.1.0.0,,"seen, 0"' in lines
    code, out, _ = txguard(capsys, "lists", "import", "ips", str(exported), "--no-progress")
    assert "3,000 unchanged; version 2" in out
    assert database.query("SELECT version FROM lists") == [(2,)]


def test_a_spreadsheet_csv_with_a_byte_order_mark_and_crlf_line_ends_imports(
    database: Database, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # "CSV UTF-8" as spreadsheets save it: a byte-order mark, then CRLF line ends.
    txguard(capsys, "lists", "create", "vip", "--kind", "account", "--action", "allow")
    source = tmp_path / "vip.csv"
    source.write_bytes(b"\xef\xbb\xbfvalue,note\r\n42,regular\r\n43,\r\n")
    code, out, err = txguard(capsys, "lists", "import", "vip", str(source), "--no-progress")
    assert code == 0, err
    assert "2 added" in out
    assert database.query("SELECT value, note FROM list_items ORDER BY value") == [("42", "regular"), ("43", None)]


def test_an_export_holding_an_expired_item_imports_again_changing_nothing(
    database: Database, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Export writes the expired items too; the file it wrote is one import reads back, unchanged, and an expiry
    # edited into the past (to end an item) is taken as the item's new, past, expiry.
    txguard(capsys, "lists", "create", "cards", "--kind", "card", "--action", "block")
    source = tmp_path / "cards.csv"
    source.write_text(f"value,expires_at,note\ntok_a,{future(1)},stolen\ntok_b,{future(2)},\ntok_c,,\n")
    assert txguard(capsys, "lists", "import", "cards", str(source), "--no-progress")[0] == 0
    database.execute(
        "UPDATE list_items SET expires_at = date_trunc('milliseconds', now()) - interval '1 hour' WHERE value = 'tok_a'"
    )
    exported = tmp_path / "out.csv"
    assert txguard(capsys, "lists", "export", "cards", "--out", str(exported))[0] == 0
    before = state(database)

    code, out, err = txguard(capsys, "lists", "import", "cards", str(exported), "--no-progress")

    assert code == 0, err
    assert "3 unchanged; version 2" in out
    assert state(database) == before
    lines = exported.read_text().splitlines()
    assert lines[2].startswith("tok_b,")
    lines[2] = "tok_b,2020-01-01T00:00:00.000Z,"  # tok_b ended by editing its expiry
    exported.write_text("\n".join(lines) + "\n")
    code, out, err = txguard(capsys, "lists", "import", "cards", str(exported), "--no-progress")
    assert code == 0, err
    assert "1 changed, 2 unchanged; version 3" in out
    assert database.query("SELECT value FROM list_items WHERE expires_at > now() OR expires_at IS NULL") == [("tok_c",)]


def test_an_import_cut_short_inside_a_quoted_note_is_refused_and_stores_nothing(
    database: Database, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    txguard(capsys, "lists", "create", "countries", "--kind", "country")
    before = state(database)
    source = tmp_path / "countries.csv"
    source.write_text('value,note\nFR,fine\nDE,"sanctions list, since\n')

    code, _, err = txguard(capsys, "lists", "import", "countries", str(source), "--no-progress")

    assert code == 2
    assert "line 3: not CSV as written: unexpected end of data" in err and "nothing was stored" in err
    assert state(database) == before


def test_an_import_into_a_stored_list_runs_in_one_session_when_the_database_allows_no_second(
    database: Database, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # The second session only speeds the lookups up: a connection limit that leaves the import one session must
    # not turn a valid import into a refused one.
    txguard(capsys, "lists", "create", "cards", "--kind", "card", "--action", "block")
    assert txguard(capsys, "lists", "add", "cards", "tok_a", "--note", "old")[0] == 0
    source = tmp_path / "cards.csv"
    source.write_text("value,note\ntok_a,new\ntok_b,\n")
    role = service_login_role(database.name)
    database.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT 1')
    try:
        code, out, err = txguard(capsys, "lists", "import", "cards", str(source), "--no-progress")
    finally:
        database.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT -1')
    assert code == 0, err
    assert "1 added, 1 changed; version 3" in out
    assert "in one session" in err
    assert database.query("SELECT value, note FROM list_items ORDER BY value") == [("tok_a", "new"), ("tok_b", None)]
    assert sorted(database.query("SELECT version, operation FROM list_changes WHERE version = 3")) == [
        (3, "add"),
        (3, "change"),
    ]
