"""Ctrl-C during any `txguard` command: a line that says so, exit status 130, no traceback."""

from __future__ import annotations

import argparse

import pytest

from txguard_dev import cli
from txguard_dev.commands import lists


def test_an_interrupted_command_says_so_and_exits_130_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(lists, "run", interrupted)
    assert cli.main(["lists", "ls"]) == 130
    assert capsys.readouterr().err == (
        "txguard lists ls: interrupted (an open database transaction was rolled back; what was committed stays)\n"
    )
