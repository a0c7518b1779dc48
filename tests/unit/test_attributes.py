"""The canonical forms of a transaction's attributes and of list values (txguard.attributes)."""

from __future__ import annotations

import pytest

from txguard import attributes


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
        ("merchant", "m-5500000000000004"),
    ],
)
def test_a_card_number_is_refused_however_it_is_written_in_any_token(kind: str, raw: str) -> None:
    with pytest.raises(ValueError, match="card number"):
        attributes.list_value(kind, raw)


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
