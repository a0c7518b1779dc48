"""A transaction's optional attributes and the values lists hold: what each one may be, checked once.

Every path that reads one of these values (a transaction's body, a stream record, a list item from the API or a
CSV file, a rule's constant) calls the function here, so a value that matches a list matches it however it came
in: a country is upper-case ISO 3166-1 alpha-2, a merchant category four ISO 18245 digits ("0742"), an IP address
in its canonical text (`ipaddress`), an identifier as sent.

Each function returns the canonical text or raises ValueError whose message is the reason, in words, without the
value (the caller names the field and echoes the value).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

from txguard import literals

# ISO 3166-1 alpha-2: the 249 officially assigned codes (ISO 3166 Maintenance Agency; the list pycountry 26.2.16
# carries). User-assigned and reserved codes (XK, EU, UK, ...) are not countries and are refused.
COUNTRIES = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ
    CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO
    FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE
    JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO
    MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW
    PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM
    TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
    """.split()  # noqa: SIM905 - 249 codes read better as a block than as a list of quoted strings
)

# How the payment was made. `card_present` (chip, swipe), `contactless` (tap), `ecommerce` (online card not
# present), `in_app` (a wallet or app), `moto` (mail or telephone order), `recurring` (a stored-credential
# subscription charge), `atm` (cash withdrawal), `transfer` (account to account).
CHANNELS = ("card_present", "contactless", "ecommerce", "in_app", "moto", "recurring", "atm", "transfer")

# Card, device and merchant ids: opaque tokens (at most 64 letters, digits, '_', '.', ':' or '-').
IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")
# A card number (PAN) must never be stored: 13-19 digits that pass the Luhn check, written together or grouped by
# single spaces, dots or dashes, anywhere in a token or a metadata value, are refused, and masked where a refused
# value is shown back or logged (errors.echo).
_CARD_NUMBER = re.compile(r"(?<![0-9])[0-9](?:[ .\-]?[0-9]){12,18}(?![0-9])")
_CARD_NUMBER_REFUSED = (
    "holds what looks like a card number (13-19 digits passing the Luhn check); send a token, never the number"
)

MAX_METADATA_KEYS = 20
METADATA_KEY = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MAX_METADATA_VALUE_LENGTH = 256
MAX_METADATA_BYTES = 4096  # the keys and values together, UTF-8

# The kinds of value a list (or a snooze) holds, as the API's schemas declare them; LIST_KINDS has the same keys
# (tests/unit/test_attributes.py checks it).
ListKind = Literal["account", "merchant", "card", "country", "ip", "device", "merchant_category"]

# What each kind of list holds, and the transaction field its values are matched against.
LIST_KINDS: dict[str, str] = {
    "account": "account_id",
    "merchant": "merchant_id",
    "card": "card_id",
    "country": "country",
    "ip": "ip_address",
    "device": "device_id",
    "merchant_category": "merchant_category",
}


def _luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


_GROUP = re.compile(r"[0-9]+")


def _card_number_spans(text: str, thorough: bool = False) -> list[tuple[int, int]]:
    """Where `text` holds card numbers: each run of digits and single separators that passes the Luhn check and,
    when `thorough` (masking, where showing too little is harmless), the first card number within a run that
    fails it."""
    spans = []
    for match in _CARD_NUMBER.finditer(text):
        digits = "".join(char for char in match.group() if char.isdigit())
        if _luhn_valid(digits):
            spans.append(match.span())
            continue
        if not thorough:
            continue
        # The run may hold a card number with more around it, cut off by a separator ("4111111111111111.0", a
        # JSON number with a fraction; "12 4111 1111 1111 1111"): its consecutive groups of 13-19 digits.
        groups = [(group.start(), group.end()) for group in _GROUP.finditer(match.group())]
        if len(groups) < 2:
            continue
        found = next(
            (
                (match.start() + groups[first][0], match.start() + groups[last][1])
                for first in range(len(groups))
                for last in range(len(groups) - 1, first - 1, -1)
                if 13 <= sum(end - start for start, end in groups[first : last + 1]) <= 19
                and _luhn_valid("".join(_GROUP.findall(match.group()[groups[first][0] : groups[last][1]])))
            ),
            None,
        )
        if found is not None:
            spans.append(found)
    return spans


def holds_card_number(text: str) -> bool:
    """Whether `text` holds a card number: 13-19 digits passing the Luhn check, together or grouped by single
    spaces, dots or dashes ("4111 1111 1111 1111", "tok:4111111111111111")."""
    return bool(_card_number_spans(text))


def mask_card_numbers(text: str) -> str:
    """`text` with each card number's digits masked but its first six and last four (as PCI DSS allows a PAN
    to be displayed): "4111111111111111" -> "411111******1111", "4111111111111111.0" -> "411111******1111.0"."""
    spans = _card_number_spans(text, thorough=True)
    for start, end in reversed(spans):
        part = text[start:end]
        positions = [i for i, char in enumerate(part) if char.isdigit()]
        hidden = set(positions[6:-4])
        masked = "".join("*" if i in hidden else char for i, char in enumerate(part))
        text = text[:start] + masked + text[end:]
    return text


_IDENTIFIER_FORM = "1-64 letters, digits, '_', '.', ':' or '-', starting with a letter or digit"


def merchant_id(value: Any) -> str:
    """A merchant's id as sent: 1-64 letters, digits, '_', '.', ':' or '-', from a letter or digit, given as a
    string or as a JSON integer (42 is "42"). Unlike a card or device token, an id of digits that passes the Luhn
    check is a merchant id like any other: merchants are not cards, and their ids are often numbers."""
    if type(value) is str:  # the common case first: a million-item list import checks every value
        text = value
    elif isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"must be a string or an integer of {_IDENTIFIER_FORM}")
    else:
        text = str(value)
    if not IDENTIFIER.match(text):
        raise ValueError(f"must be {_IDENTIFIER_FORM}")
    return text


def identifier(value: Any) -> str:
    """A card or device token as sent: merchant_id's form (a string or a JSON integer of 1-64 letters, digits,
    '_', '.', ':' or '-'), and never a card number (holds_card_number)."""
    text = merchant_id(value)
    # Thirteen digits at least, or it cannot hold a card number (a million-item import checks every value).
    if sum(map(str.isdigit, text)) >= 13 and holds_card_number(text):
        raise ValueError(_CARD_NUMBER_REFUSED)
    return text


def card_id(value: Any) -> str:
    """A card's token (an identifier), never its number, so that no primary account number is ever stored."""
    return identifier(value)


def country(value: Any) -> str:
    """An ISO 3166-1 alpha-2 country code, upper-cased ("fr" -> "FR")."""
    if not isinstance(value, str):
        raise ValueError("must be an ISO 3166-1 alpha-2 country code (a string such as 'FR')")
    code = value.strip().upper()
    if code not in COUNTRIES:
        raise ValueError("is not an ISO 3166-1 alpha-2 country code")
    return code


def merchant_category(value: Any) -> str:
    """An ISO 18245 merchant category code, 0000-9999, as four digits ("742" and 742 -> "0742")."""
    if isinstance(value, bool):
        raise ValueError("must be an ISO 18245 merchant category code (0000-9999)")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"[0-9]{1,4}", value.strip()):
        number = int(value.strip())
    else:
        raise ValueError("must be an ISO 18245 merchant category code: four digits, 0000-9999")
    if not 0 <= number <= 9999:
        raise ValueError("is out of range: an ISO 18245 merchant category code is 0000-9999")
    return f"{number:04d}"


def ip_address(value: Any) -> str:
    """An IPv4 or IPv6 address in its canonical text ("2001:DB8::0001" -> "2001:db8::1"; an IPv4-mapped IPv6
    address as its IPv4 address, "::ffff:192.0.2.7" -> "192.0.2.7"); an address with a zone is refused."""
    if not isinstance(value, str):
        raise ValueError("must be an IPv4 or IPv6 address (a string)")
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        raise ValueError("is not an IPv4 or IPv6 address") from None
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            # A zone (fe80::1%eth0) names an interface of the machine that saw it: it is not part of the address
            # that lists and history match.
            raise ValueError("has a zone (%...); send the address alone")
        if address.ipv4_mapped is not None:
            # ::ffff:192.0.2.7 is how a dual-stack server reports an IPv4 client: the same client as 192.0.2.7.
            return str(address.ipv4_mapped)
    return str(address)


def channel(value: Any) -> str:
    """One of CHANNELS."""
    if not isinstance(value, str) or value not in CHANNELS:
        raise ValueError(f"must be one of {', '.join(CHANNELS)}")
    return value


def account(value: Any) -> str:
    """An account id (a positive 64-bit integer) as list values hold it: its decimal digits."""
    if isinstance(value, bool):
        raise ValueError("must be a positive 64-bit integer")
    text = value.strip() if isinstance(value, str) else value
    try:
        number = int(text) if isinstance(text, str) and text.isascii() and text.isdigit() else text
    except ValueError:
        number = None
    if not isinstance(number, int) or not 0 < number <= 2**63 - 1:
        raise ValueError("must be a positive 64-bit integer")
    return str(number)


def metadata(value: Any) -> dict[str, str]:
    """A free object of string values: at most MAX_METADATA_KEYS keys (lower-case letters, digits and '_', starting
    with a letter, at most 40), each value a string of at most MAX_METADATA_VALUE_LENGTH characters, at most
    MAX_METADATA_BYTES bytes of UTF-8 in all, no control character (NUL, tab, line breaks ...) in a value."""
    if not isinstance(value, Mapping):
        raise ValueError("must be an object of string values")
    if len(value) > MAX_METADATA_KEYS:
        raise ValueError(f"has {len(value)} keys, at most {MAX_METADATA_KEYS}")
    size = 0
    for key, item in value.items():
        if not isinstance(key, str) or not METADATA_KEY.match(key):
            text = str(key)
            shown = repr(text) if len(text) <= 40 else f"{text[:40]!r}… ({len(text)} characters)"
            raise ValueError(f"key {shown} must be 1-40 lower-case letters, digits or '_', from a letter")
        if not isinstance(item, str):
            raise ValueError(f"value of {key!r} must be a string")
        if len(item) > MAX_METADATA_VALUE_LENGTH:
            raise ValueError(f"value of {key!r} is longer than {MAX_METADATA_VALUE_LENGTH} characters")
        if not literals.storable_text(item):
            raise ValueError(f"value of {key!r} must not hold control characters or lone surrogates")
        if holds_card_number(item):
            raise ValueError(f"value of {key!r} {_CARD_NUMBER_REFUSED}")
        size += len(key.encode()) + len(item.encode())
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"is {size} bytes of keys and values, at most {MAX_METADATA_BYTES}")
    return dict(value)


_LIST_VALUE = {
    "account": account,
    "merchant": merchant_id,
    "card": card_id,
    "country": country,
    "ip": ip_address,
    "device": identifier,
    "merchant_category": merchant_category,
}


def list_value_check(kind: str) -> Callable[[Any], str]:
    """The function list_value(kind, ...) applies: for a caller that checks many values of one kind."""
    try:
        return _LIST_VALUE[kind]
    except KeyError:
        raise ValueError(f"unknown list kind; known: {', '.join(LIST_KINDS)}") from None


def list_value(kind: str, value: Any) -> str:
    """A value of a list of `kind` (a key of LIST_KINDS) in canonical text; ValueError says why it is not one."""
    try:
        check = _LIST_VALUE[kind]
    except KeyError:
        raise ValueError(f"unknown list kind; known: {', '.join(LIST_KINDS)}") from None
    return check(value)


# The transaction fields rules compare with text constants and lists, each read the way the field itself is read,
# so that a rule's constant means the value a transaction carries (`country = 'fr'` is `country = 'FR'`).
# `metadata.KEY` (METADATA_FIELD) reads one metadata value.
TEXT_FIELDS: dict[str, Callable[[Any], str]] = {
    "account_id": account,
    "merchant_id": merchant_id,
    "channel": channel,
    "country": country,
    "merchant_category": merchant_category,
    "card_id": card_id,
    "ip_address": ip_address,
    "device_id": identifier,
}
METADATA_FIELD = "metadata."


def is_text_field(name: str) -> bool:
    """Whether rules compare `name` as text: a key of TEXT_FIELDS, or `metadata.KEY` with a valid KEY."""
    if name.startswith(METADATA_FIELD):
        return bool(METADATA_KEY.match(name.removeprefix(METADATA_FIELD)))
    return name in TEXT_FIELDS


def field_value(name: str, value: Any) -> str:
    """A constant compared with the text field `name` (is_text_field), in the field's canonical text; ValueError
    says why it is not one of its values."""
    if name.startswith(METADATA_FIELD):
        if not isinstance(value, str):
            raise ValueError("must be a string")
        if len(value) > MAX_METADATA_VALUE_LENGTH:
            raise ValueError(f"is longer than {MAX_METADATA_VALUE_LENGTH} characters, which no metadata value is")
        return value
    return TEXT_FIELDS[name](value)


def list_kinds_for(name: str) -> list[str]:
    """The kinds of list whose values a text field is compared with (empty: no list holds its values)."""
    return [kind for kind, field in LIST_KINDS.items() if field == name]
