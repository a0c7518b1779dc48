"""The README's words on the future-skew setting agree with the setting itself."""

from __future__ import annotations

import re

import pytest

from tests.conftest import ROOT
from txguard.settings import ServiceSettings


def test_every_mention_of_the_future_skew_states_its_real_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TXGUARD_MAX_FUTURE_SKEW_SECONDS", raising=False)
    default = ServiceSettings.from_env().max_future_skew_s
    text = " ".join((ROOT / "README.md").read_text().split())
    mentions = [m.end() for m in re.finditer(r"`TXGUARD_MAX_FUTURE_SKEW_SECONDS`", text)]
    assert mentions
    for end in mentions:
        # The default follows the name: in the settings table's column, or in words within the sentence.
        stated = re.search(r"[0-9][0-9,]*|\bnow\b", text[end : end + 40])
        assert stated is not None and stated.group() != "now", text[end - 100 : end + 40]
        assert int(stated.group().replace(",", "")) == default, text[end - 100 : end + 40]
