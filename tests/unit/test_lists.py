"""txguard.lists: what a list definition and a batch of items may be, refused whole with every problem named."""

from __future__ import annotations

from typing import Any

import pytest

from txguard import lists
from txguard.lists import InvalidList, ListItem

NOW = 1_800_000_000_000  # 2027-01-15T08:00:00Z


def problems(kind: str, items: list[Any]) -> list[tuple[Any, ...]]:
    with pytest.raises(InvalidList) as refused:
        lists.check_items(kind, items, NOW)
    assert "nothing was stored" in refused.value.message
    return [(p.index, p.field, p.value) for p in refused.value.problems]


def test_items_come_out_in_canonical_form_with_expiry_in_ms_and_trimmed_notes() -> None:
    assert lists.check_items(
        "country",
        [
            {"value": "fr"},
            {"value": " de ", "expires_at": "2027-01-15T10:00:00+01:00", "note": "  sanctions  "},
            {"value": "IT", "expires_at": NOW + 1},
            {"value": "FR"},  # the same item again is kept once
        ],
        NOW,
    ) == [ListItem("FR"), ListItem("DE", NOW + 3_600_000, "sanctions"), ListItem("IT", NOW + 1)]


def test_every_bad_item_is_named_by_index_field_and_value() -> None:
    assert problems(
        "merchant_category",
        [
            {"value": "742"},
            {"value": "12345"},
            {"value": "0742", "note": "other note"},
            {"valeu": "1234"},
            "5411",
            {"value": "5411", "expires_at": NOW},
            {"value": "5412", "expires_at": "yesterday"},
            {"value": "5413", "note": "\x07bell"},
            {"value": "5414", "expires_at": "10000-01-01T00:00:00Z"},
        ],
    ) == [
        (1, "value", "12345"),
        (2, "value", "0742"),
        (3, "valeu", "1234"),
        (3, "value", None),
        (4, None, "5411"),
        (5, "expires_at", NOW),
        (6, "expires_at", "yesterday"),
        (7, "note", "\x07bell"),
        (8, "expires_at", "10000-01-01T00:00:00Z"),
    ]


def test_a_value_of_another_kind_is_refused_with_the_kinds_reason() -> None:
    with pytest.raises(InvalidList) as refused:
        lists.check_items("card", [{"value": "4111111111111111"}], NOW)
    assert "card number" in refused.value.problems[0].reason
    with pytest.raises(InvalidList) as refused:
        lists.check_items("ip", [{"value": "300.1.1.1"}], NOW)
    assert refused.value.details == [
        {"index": 0, "field": "value", "value": "300.1.1.1", "reason": "is not an IPv4 or IPv6 address"}
    ]


def test_an_expiry_later_than_the_last_representable_day_or_not_in_the_future_is_refused() -> None:
    assert lists.expires_at_ms(None, NOW) is None
    assert lists.expires_at_ms(str(lists.LATEST_EXPIRY_MS), NOW) == lists.LATEST_EXPIRY_MS
    for bad in (NOW - 1, lists.LATEST_EXPIRY_MS + 1, True, 1.5, "2020-01-01"):
        with pytest.raises(ValueError):
            lists.expires_at_ms(bad, NOW)


@pytest.mark.parametrize("name", ["a", "high_risk_mcc", "x" * 63, "l2"])
def test_list_names_are_lower_case_identifiers(name: str) -> None:
    assert lists.list_name(name) == name


@pytest.mark.parametrize("name", ["", "High", "1abc", "a-b", "x" * 64, None, "a b", "é"])
def test_other_list_names_are_refused(name: Any) -> None:
    with pytest.raises(ValueError, match="lower-case"):
        lists.list_name(name)


def test_kinds_and_actions() -> None:
    assert [lists.list_kind(k) for k in ("account", "ip")] == ["account", "ip"]
    assert [lists.list_action(a) for a in (None, "allow", "block")] == [None, "allow", "block"]
    for bad_kind in ("accounts", "", None, "email"):
        with pytest.raises(ValueError, match="must be one of account, merchant"):
            lists.list_kind(bad_kind)
    for bad_action in ("review", "ALLOW", ""):
        with pytest.raises(ValueError, match="allow, block or null"):
            lists.list_action(bad_action)


def test_values_to_remove_are_canonical_and_checked() -> None:
    assert lists.check_values("ip", ["2001:DB8::0001", "2001:db8::1", "10.0.0.1"]) == ["2001:db8::1", "10.0.0.1"]
    with pytest.raises(InvalidList) as refused:
        lists.check_values("account", ["12", "-3", "abc"])
    assert [(p.index, p.value) for p in refused.value.problems] == [(1, "-3"), (2, "abc")]


def test_csv_rows_with_notes_and_expiries_are_checked_as_items_are() -> None:
    rows = [
        (2, "fr", None, None),
        (3, " de ", "2027-01-15T10:00:00+01:00", "  sanctions  "),
        (4, "IT", str(NOW + 1), None),
        (5, "FR", None, None),  # the same item again: kept once
        (6, "DE", None, "other note"),
        (7, "ES", None, "\x07bell"),
        (8, "PT", "yesterday", None),
        (9, lists.MISSING, None, "a note"),
        (10, "XX", str(NOW + 1), "a note"),
    ]
    found: list[lists.ListProblem] = []

    items = list(lists.ItemChecker("country", NOW, position="line").check_rows(rows, found, 100))

    assert items == [ListItem("FR"), ListItem("DE", NOW + 3_600_000, "sanctions"), ListItem("IT", NOW + 1)]
    assert [(p.index, p.field, p.value) for p in found] == [
        (6, "value", "DE"),
        (7, "note", "\x07bell"),
        (8, "expires_at", "yesterday"),
        (9, "value", None),
        (10, "value", "XX"),
    ]
    assert found[0].reason == "repeats line 3 with another expires_at or note"


def test_csv_rows_refuse_text_that_is_not_csv_as_written() -> None:
    for text, line in (('value,note\nFR,"cut short', 2), ('value,note\nFR,ok\nDE,"a"b\n', 3)):
        found: list[lists.ListProblem] = []
        rows = list(lists.csv_rows(text.splitlines(keepends=True), found))
        assert [(p.index, p.field) for p in found] == [(line, None)], text
        assert found[0].reason.startswith("not CSV as written: "), found[0].reason
        assert len(rows) == line - 2, text
