"""tools/handbook_block_policy.py against the database: a window with no stored decision, and a database it
cannot reach, are said plainly (exit 1), never judged as if every source of blocks held."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import ROOT, Database

pytestmark = pytest.mark.integration

spec = importlib.util.spec_from_file_location("handbook_block_policy", ROOT / "tools" / "handbook_block_policy.py")
assert spec is not None and spec.loader is not None
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)

ARGV = [
    "--rules",
    str(ROOT / "rules" / "handbook-outcomes-lower-bound.json"),
    "--from",
    "2018-04-01",
    "--to",
    "2018-06-24",
    "--cutoff",
    "2018-07-01",
]


def test_a_window_without_decisions_is_said_and_nothing_is_judged(
    database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        tool.main(ARGV)
    assert exited.value.code == "no decision is stored in the window: nothing to judge"
    assert "reach" not in capsys.readouterr().out


def test_a_database_it_cannot_reach_is_named(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", database.service_url.rsplit("/", 1)[0] + "/txguard_no_such_database")
    with pytest.raises(SystemExit) as exited:
        tool.main(ARGV)
    assert str(exited.value.code).startswith("cannot connect to ")
    assert "txguard_no_such_database" in str(exited.value.code)
