"""The one rule for numbers, date-times and JSON from outside (txguard.literals), on its own."""

from __future__ import annotations

from decimal import Decimal

import pytest

from txguard import literals
from txguard.settings import reload_settings, service_settings


@pytest.mark.parametrize("text", ["0", "7", "-7", "9223372036854775807", "-9223372036854775808"])
def test_integer_text_in_plain_digits_is_read(text: str) -> None:
    assert literals.integer_from_text(text, -(2**63), 2**63 - 1) == int(text)


@pytest.mark.parametrize(
    "text",
    [
        "42.0",
        "4.2e1",
        "4_2",
        "+42",
        "042",
        " 42",
        "42 ",
        "42\n",
        "٤٢",
        "４２",
        "",
        "-",
        "9223372036854775808",
        "9" * 10**6,
    ],
)
def test_integer_text_outside_the_rule_is_refused_naming_the_range(text: str) -> None:
    with pytest.raises(ValueError, match="an integer from -9223372036854775808 to 9223372036854775807"):
        literals.integer_from_text(text, -(2**63), 2**63 - 1)


@pytest.mark.parametrize("value", [True, 42.0, Decimal("42"), Decimal("4.2E+1"), "42", None])
def test_a_json_integer_is_an_int_and_nothing_else(value: object) -> None:
    with pytest.raises(ValueError):
        literals.integer_from_json(value, 0, 100)


@pytest.mark.parametrize(
    ("value", "places"),
    [
        ("1.50", 1),
        ("1.00000000000000000000000000001", 29),
        ("1." + "0" * 100_000, 0),
        ("1E+2", 0),
        ("1e-1000000", 1_000_000),
        ("12.5" + "0" * 40, 1),
        ("0.0001", 4),
        ("0.00000", 0),
        ("0e-9", 0),
        ("-0.000", 0),
    ],
)
def test_decimal_places_are_counted_exactly_whatever_the_length(value: str, places: int) -> None:
    assert literals.decimal_places(literals.decimal(value)) == places


@pytest.mark.parametrize("text", ["1__0.5_", "1_0", "١٠.٥", ".5", "5.", "+1", "01", "1e", "0x10", "NaN", "Infinity"])
def test_decimal_text_outside_the_rule_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        literals.decimal(text)


def test_a_decimal_is_kept_exact_never_rounded_to_the_context() -> None:
    text = "1.00000000000000000000000000000000000000001"
    assert str(literals.decimal(text)) == text
    assert literals.decimal(10**30) == Decimal(10**30)
    with pytest.raises(ValueError):
        literals.decimal(1.5)  # a float is not the number the client wrote


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("2024-05-01T12:00:00.123Z", 1_714_564_800_123),
        ("2024-05-01T13:30:00.1+01:30", 1_714_564_800_100),
        ("2024-05-01T12:00:00.123000000000Z", 1_714_564_800_123),
        ("2024-05-01T12:00:00-00:00", 1_714_564_800_000),
    ],
)
def test_rfc3339_date_times_are_read_to_the_millisecond(text: str, ms: int) -> None:
    assert literals.rfc3339_ms(text) == ms


@pytest.mark.parametrize(
    "text",
    [
        "2024-05-01T12:00:00.0000001Z",
        "2024-02-30T12:00:00Z",
        "2024-05-01T24:00:00Z",
        "2024-05-01T12:00:60Z",
        "2024-05-01T12:00:00+24:00",
        "2024-05-01T12:00:00+01:60",
        "2024-05-01T12:00:00",
        "2024-05-01T12:00Z",
        "20240501T120000Z",
    ],
)
def test_anything_else_is_not_a_date_time(text: str) -> None:
    with pytest.raises(ValueError):
        literals.rfc3339_ms(text)


def test_json_numbers_are_exact_and_long_integers_stay_unconverted() -> None:
    document = literals.loads('{"a": 0.1, "b": 12, "c": ' + "9" * 5000 + ', "d": 1e1000000}')
    assert document == {"a": Decimal("0.1"), "b": 12, "c": Decimal("9" * 5000), "d": Decimal("1e1000000")}
    assert type(document["b"]) is int and type(document["c"]) is Decimal


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('{"a": 1, "a": 2}', "appears twice"),
        ('{"a": NaN}', "NaN"),
        ('{"a": -Infinity}', "Infinity"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"a": 1e9999999999999999999999}', "out of any range"),
        ('{"a": 1,}', "malformed JSON"),
    ],
)
def test_json_the_rule_refuses_says_why(text: str, says: str) -> None:
    with pytest.raises(literals.JsonRefused, match=says):
        literals.loads(text)


@pytest.mark.parametrize("raw", ["5_000", "٥٠٠٠", "5000.0", " 5000"])
def test_integer_settings_follow_the_same_rule(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("TXGUARD_MAX_BATCH_SIZE", raw)
    reload_settings()
    try:
        with pytest.raises(ValueError, match="TXGUARD_MAX_BATCH_SIZE"):
            service_settings()
    finally:
        monkeypatch.delenv("TXGUARD_MAX_BATCH_SIZE")
        reload_settings()
