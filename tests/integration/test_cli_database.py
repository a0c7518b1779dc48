"""How the CLI meets a database: unmigrated ones refused alike, a missing one created, resets only in development."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg2
import pytest

from tests.conftest import ROOT, Database, admin_query, scratch_database
from txguard import db
from txguard.migrate import available_migrations, migrate, service_login_role
from txguard_dev.cli import main
from txguard_dev.local.postgres import DEVELOPMENT_SETTING, Server, database_in_url, drop_database, service_database

pytestmark = pytest.mark.integration


def txguard(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    db.reset_connection()
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tables(url: str) -> list[str]:
    return [
        row[0] for row in admin_query(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
    ]


@pytest.fixture
def unmigrated(pg_server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An empty database that no migration has touched, as DATABASE_URL."""
    with scratch_database(pg_server, "txguard_bare") as url:
        monkeypatch.setenv("DATABASE_URL", url)
        yield url
        db.reset_connection()


def _rule_file(tmp_path: Path) -> str:
    path = tmp_path / "rules.json"
    path.write_text((ROOT / "rules" / "seed.json").read_text())
    return str(path)


def _labels_file(tmp_path: Path) -> str:
    path = tmp_path / "labels.csv"
    path.write_text("transaction_id,pattern,run_id\n1,genuine,1\n")
    return str(path)


# Every command that reads or writes the service's tables, as a user would type it.
COMMANDS = {
    "rules list": lambda tmp: ["rules", "list"],
    "rules history": lambda tmp: ["rules", "history"],
    "rules apply": lambda tmp: ["rules", "apply", _rule_file(tmp)],
    "rules disable": lambda tmp: ["rules", "disable", "spike"],
    "backtest": lambda tmp: ["backtest", "--rules", _rule_file(tmp)],
    "generate --direct": lambda tmp: ["generate", "--direct", "--num-transactions", "20", "--no-progress"],
    "generate --post-url": lambda tmp: [
        "generate",
        "--post-url",
        "http://127.0.0.1:9/store_data",
        "--num-transactions",
        "20",
        "--no-progress",
    ],
    "evaluate": lambda tmp: ["evaluate"],
    "evaluate --labels": lambda tmp: ["evaluate", "--labels", _labels_file(tmp)],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_on_an_unmigrated_database_says_to_migrate_and_changes_nothing(
    command: str, unmigrated: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = txguard(capsys, *COMMANDS[command](tmp_path))

    name = command if command.startswith("rules") else command.split()[0]
    pending = len(available_migrations())
    assert code == 1, (out, err)
    assert err.startswith(f"txguard {name}: the database {unmigrated} is not migrated ({pending} pending: 0001_")
    assert err.rstrip().endswith("run `txguard db migrate` first")
    assert "Traceback" not in err and "relation" not in err
    assert tables(unmigrated) == []


def test_a_partly_migrated_database_is_refused_the_same_way(
    unmigrated: str, capsys: pytest.CaptureFixture[str]
) -> None:
    migrate(unmigrated)
    last = available_migrations()[-1]
    admin_query(unmigrated, "DELETE FROM schema_migrations WHERE version = %s", (last.version,))

    code, _, err = txguard(capsys, "rules", "list")

    assert code == 1
    assert f"not migrated (1 pending: {last.version:04d}_{last.name})" in err


def test_db_status_lists_the_pending_migrations_of_an_unmigrated_database(
    unmigrated: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = txguard(capsys, "db", "status")

    assert code == 0
    assert out.count("pending") == len(available_migrations())
    assert "run `txguard db migrate`" in err


def test_an_unreachable_database_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = txguard(capsys, "rules", "list", "--database-url", "postgresql://nobody@127.0.0.1:9/none")

    assert code == 1
    assert err.startswith("txguard rules list: cannot connect to postgresql://nobody@127.0.0.1:9/none: ")
    assert "Traceback" not in err


# --- the database `make run` uses ----------------------------------------------------------------------------


def test_make_run_creates_migrates_and_marks_the_database_database_url_names_when_it_is_missing(
    pg_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = f"txguard_missing_{uuid.uuid4().hex[:12]}"
    url = pg_server.database_url(missing)
    monkeypatch.setenv("DATABASE_URL", url)
    try:
        with service_database() as service_url:
            assert database_in_url(service_url) == missing
            conn = psycopg2.connect(service_url)  # the service role can use it at once
            try:
                with conn, conn.cursor() as cur:
                    cur.execute("SELECT count(*) FROM transactions")
                    assert cur.fetchone() == (0,)
            finally:
                conn.close()
        assert len(admin_query(url, "SELECT version FROM schema_migrations")) == len(available_migrations())
        assert _marked(url)
    finally:
        drop_database(pg_server, missing)


def test_make_run_uses_an_existing_database_as_it_is_and_does_not_mark_it(unmigrated: str, pg_server: Server) -> None:
    _unmark(unmigrated)
    with service_database():
        pass
    assert "transactions" in tables(unmigrated)
    assert not _marked(unmigrated)


# --- txguard db reset ----------------------------------------------------------------------------------------


def _marked(url: str) -> bool:
    setting = f"{DEVELOPMENT_SETTING}=development"
    rows = admin_query(
        url,
        """SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
           WHERE d.datname = current_database() AND s.setrole = 0""",
    )
    return any(setting in (row[0] or []) for row in rows)


def _unmark(url: str) -> None:
    name = database_in_url(url)
    admin_query(url, f'ALTER DATABASE "{name}" RESET {DEVELOPMENT_SETTING}')


@pytest.fixture
def with_data(pg_server: Server) -> Iterator[str]:
    """A migrated development database (as the tests and txguard local create them) holding one transaction."""
    with scratch_database(pg_server, "txguard_reset") as url:
        migrate(url)
        admin_query(
            url,
            "INSERT INTO labels (transaction_id, fraud, source, labelled_at) "
            "VALUES (42, false, 'generator', '2026-01-01T00:00:00Z')",
        )
        yield url
        db.reset_connection()


def _snapshot(url: str) -> tuple[object, ...]:
    return (
        tables(url),
        admin_query(url, "SELECT transaction_id, fraud, source FROM labels"),
        admin_query(url, "SELECT version, applied_at FROM schema_migrations ORDER BY 1"),
        admin_query(url, "SELECT count(*) FROM rule_sets"),
    )


def test_reset_without_yes_refuses_with_a_usage_error_and_changes_nothing(
    with_data: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(with_data)

    code, out, err = txguard(capsys, "db", "reset", "--database-url", with_data)

    assert code == 2
    assert err.strip() == f"txguard db reset: this drops every table and row of {with_data}; add --yes to confirm"
    assert out == ""
    assert _snapshot(with_data) == before


def test_reset_refuses_a_database_not_marked_for_development_and_changes_nothing(
    with_data: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _unmark(with_data)
    before = _snapshot(with_data)

    code, _, err = txguard(capsys, "db", "reset", "--yes", "--database-url", with_data)

    assert code == 1
    assert err.startswith(f"txguard db reset: refusing to reset {with_data}: it is not marked as a development")
    assert _snapshot(with_data) == before


def test_a_session_setting_does_not_pass_for_the_development_mark(
    with_data: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _unmark(with_data)
    before = _snapshot(with_data)
    options = quote(f"-c {DEVELOPMENT_SETTING}=development")

    code, _, err = txguard(capsys, "db", "reset", "--yes", "--database-url", f"{with_data}?options={options}")

    assert code == 1 and "not marked as a development database" in err
    assert _snapshot(with_data) == before


def test_reset_empties_a_development_database_and_leaves_it_migrated_and_usable(
    with_data: str, pg_server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = txguard(capsys, "db", "reset", "--yes", "--database-url", with_data)

    assert code == 0, err
    assert out.strip() == f"reset {with_data}: schema recreated, {len(available_migrations())} migrations applied"
    assert admin_query(with_data, "SELECT count(*) FROM labels") == [(0,)]
    assert len(admin_query(with_data, "SELECT version FROM schema_migrations")) == len(available_migrations())
    assert _marked(with_data)  # still a development database
    # The service role has its grants again: generated traffic is stored through it and evaluated.
    name = database_in_url(with_data)
    assert name is not None
    monkeypatch.setenv("DATABASE_URL", pg_server.database_url(name, user=service_login_role(name)))
    assert txguard(capsys, "generate", "--direct", "--num-transactions", "50", "--seed", "1", "--no-progress")[0] == 0
    code, out, _ = txguard(capsys, "evaluate", "--format", "json")
    assert code == 0 and json.loads(out)["evaluated"] == 50


def test_reset_of_a_database_in_use_waits_then_refuses_and_changes_nothing(
    with_data: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from txguard_dev.commands import db as db_command

    monkeypatch.setattr(db_command, "RESET_LOCK_TIMEOUT_S", 1)
    holder = psycopg2.connect(with_data)
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE labels IN ACCESS SHARE MODE")  # an open transaction reading it
        before = _snapshot(with_data)

        code, _, err = txguard(capsys, "db", "reset", "--yes", "--database-url", with_data)

        assert code == 1
        assert "is in use (stop txguard local and other clients first); nothing was changed" in err
        assert _snapshot(with_data) == before
    finally:
        holder.close()


def test_the_databases_tests_create_are_development_ones(database: Database) -> None:
    assert _marked(database.admin_url)
