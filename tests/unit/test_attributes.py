"""The canonical forms of a transaction's attributes and of list values (txguard.attributes)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest

from txguard import attributes
from txguard.intake import TransactionIn


@pytest.mark.parametrize(
    ("kind", "raw", "canonical"),
    [
        ("country", "fr", "FR"),
        ("country", " DE ", "DE"),
        ("merchant_category", 742, "0742"),
        ("merchant_category", "5411", "5411"),
        ("merchant_category", "0", "0000"),
        ("ip", "2001:DB8::0001", "2001:db8::1"),
        ("ip", "192.0.2.7", "192.0.2.7"),
        ("ip", "::ffff:192.0.2.7", "192.0.2.7"),
        ("ip", "::FFFF:C000:0207", "192.0.2.7"),
        ("account", "42", "42"),
        ("account", 42, "42"),
        ("card", "tok_9f3a", "tok_9f3a"),
        ("device", "dev-1", "dev-1"),
        ("merchant", "t123", "t123"),
    ],
)
def test_a_list_value_is_held_in_the_same_form_a_transaction_gives(kind: str, raw: object, canonical: str) -> None:
    assert attributes.list_value(kind, raw) == canonical


@pytest.mark.parametrize(
    ("kind", "raw", "reason"),
    [
        ("country", "XK", "not an ISO 3166-1"),
        ("country", "FRA", "not an ISO 3166-1"),
        ("country", 33, "must be an ISO 3166-1"),
        ("merchant_category", 10000, "out of range"),
        ("merchant_category", -1, "out of range"),
        ("merchant_category", "54a1", "four digits"),
        ("merchant_category", True, "merchant category"),
        ("ip", "300.1.1.1", "not an IPv4 or IPv6"),
        ("ip", "fe80::1%eth0", "has a zone"),
        ("account", 0, "positive 64-bit"),
        ("account", "-3", "positive 64-bit"),
        ("account", 2**63, "positive 64-bit"),
        ("card", "4111111111111111", "card number"),
        ("card", "has space", "letters, digits"),
        ("device", "", "letters, digits"),
        ("colour", "red", "unknown list kind"),
    ],
)
def test_a_value_of_the_wrong_kind_is_refused_with_its_reason(kind: str, raw: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        attributes.list_value(kind, raw)


def test_a_token_of_digits_that_fails_the_luhn_check_is_a_card_id() -> None:
    assert attributes.card_id("4111111111111112") == "4111111111111112"


def test_metadata_is_bounded_in_keys_value_length_and_bytes() -> None:
    assert attributes.metadata({"campaign": "x"}) == {"campaign": "x"}
    with pytest.raises(ValueError, match="at most 20"):
        attributes.metadata({f"k{i}": "v" for i in range(21)})
    with pytest.raises(ValueError, match="longer than 256"):
        attributes.metadata({"k": "v" * 257})
    with pytest.raises(ValueError, match="must be a string"):
        attributes.metadata({"k": 1})
    with pytest.raises(ValueError, match="lower-case"):
        attributes.metadata({"Bad Key": "v"})
    with pytest.raises(ValueError, match="bytes"):
        attributes.metadata({f"k{i}": "é" * 120 for i in range(20)})


def test_every_channel_is_accepted_and_nothing_else() -> None:
    for name in attributes.CHANNELS:
        assert attributes.channel(name) == name
    with pytest.raises(ValueError, match="must be one of"):
        attributes.channel("pigeon")


def test_there_are_249_countries() -> None:
    assert len(attributes.COUNTRIES) == 249 and "GB" in attributes.COUNTRIES and "UK" not in attributes.COUNTRIES


@pytest.mark.parametrize("value", ["a\x00b", "line\nbreak", "\ud800"])
def test_a_metadata_value_the_database_could_not_store_is_refused(value: str) -> None:
    # NUL is refused by jsonb and a lone surrogate cannot be encoded: either would fail at the database, after
    # validation, so they are refused with the rest of the item.
    with pytest.raises(ValueError, match="control characters or lone surrogates"):
        attributes.metadata({"campaign": value})


@pytest.mark.parametrize(
    ("kind", "raw"),
    [
        ("card", "4111-1111-1111-1111"),
        ("card", "4111.1111.1111.1111"),
        ("card", "tok:4111111111111111"),
        ("card", "4111111111111111x"),
        ("device", "4111111111111111"),
        ("device", 4111111111111111),
        ("card", 4111111111111111),
    ],
)
def test_a_card_number_is_refused_however_it_is_written_in_any_token(kind: str, raw: object) -> None:
    with pytest.raises(ValueError, match="card number"):
        attributes.list_value(kind, raw)


@pytest.mark.parametrize(
    "raw", ["4111111111111111", 4111111111111111, "m-5500000000000004", "m1", 42, "x" * 65, "a b", 1.5, True]
)
def test_a_merchant_list_value_and_a_rule_constant_accept_what_a_transaction_accepts_as_merchant_id(
    raw: object,
) -> None:
    # One validator for one field: a merchant id that looks like a card number (a tenth of random numeric ids
    # of 16 digits pass the Luhn check) is stored with its transaction, so a list and a rule must take it too.
    def outcome(read: Callable[[], object]) -> object:
        try:
            return read()
        except ValueError:  # pydantic's ValidationError is one
            return "refused"

    body = {"account_id": 1, "transaction_id": 1, "timestamp": 1714700000000, "amount": "1.00", "merchant_id": raw}
    stored = outcome(lambda: TransactionIn.model_validate(body).merchant_id)
    assert stored == outcome(lambda: attributes.list_value("merchant", raw))
    assert stored == outcome(lambda: attributes.field_value("merchant_id", raw))
    if isinstance(raw, str) and raw.isdigit():
        assert stored == raw


@pytest.mark.parametrize("raw", [1.5, Decimal("1.5"), True, {"a": 1}])
def test_a_token_of_the_wrong_type_is_told_what_is_accepted(raw: object) -> None:
    for kind in ("merchant", "card", "device"):
        with pytest.raises(ValueError, match="must be a string or an integer of 1-64 letters"):
            attributes.list_value(kind, raw)


def test_a_long_metadata_key_is_reported_with_its_real_length() -> None:
    with pytest.raises(ValueError, match=r"\(41 characters\) must be 1-40"):
        attributes.metadata({"a" * 41: "v"})


def test_a_card_number_in_a_metadata_value_is_refused() -> None:
    with pytest.raises(ValueError, match="card number"):
        attributes.metadata({"note": "paid with 4111 1111 1111 1111"})


def test_a_refused_value_is_shown_back_with_its_card_number_masked() -> None:
    from txguard.errors import echo

    assert echo("tok:4111111111111111") == "tok:411111******1111"
    assert echo("4111-1111-1111-1111") == "4111-11**-****-1111"
    assert "1111111" not in echo({"note": "4111 1111 1111 1111"})
    assert echo("order 12345678901234") == "order 12345678901234"  # fails the Luhn check: not a card number


def test_the_list_kind_the_schemas_declare_is_every_list_kind() -> None:
    from typing import get_args

    assert list(get_args(attributes.ListKind)) == list(attributes.LIST_KINDS)
