"""Plausible attributes for generated transactions: where, how and with what each account pays.

Each account has a home country, one or two devices and a card (a profile of its own, drawn from the account's
number alone, apart from its spending, so adding attributes changed no amount or time). Genuine payments are
mostly at home, on the account's own devices and card; a merchant has one category (MCC) and a usual channel.
Fraud looks like fraud where it would in life: card testing and account takeover come from a device the account
never used, abroad; a burst uses the card abroad; a compromised merchant's victims pay as they always do.

Attributes are drawn from their own random stream (seeded by the run's seed), never from the one that draws
amounts, times and incidents: the same seed gives the same traffic with or without them.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from functools import lru_cache

HOME_COUNTRIES = ("FR", "FR", "FR", "DE", "ES", "IT", "BE", "NL")
ABROAD = ("US", "GB", "BR", "NG", "RU", "CN", "TH", "MA")
HOME_SHARE = 0.97
# (MCC, usual channel) of a merchant, by its id's hash: groceries, restaurants, fuel, clothing, online retail,
# telecom, travel, digital goods.
MERCHANT_KINDS = (
    ("5411", "card_present"),
    ("5812", "contactless"),
    ("5541", "card_present"),
    ("5651", "card_present"),
    ("5999", "ecommerce"),
    ("4814", "recurring"),
    ("4722", "ecommerce"),
    ("5818", "in_app"),
)
# The fraud patterns from a device the account never used, abroad; and those abroad on the account's own card.
NEW_DEVICE_ABROAD = frozenset({"card_testing", "account_takeover"})
CARD_ABROAD = frozenset({"burst"})


@dataclass(frozen=True)
class Habits:
    """An account's home country, devices and card token."""

    country: str
    devices: tuple[str, ...]
    card_id: str


@lru_cache(maxsize=65_536)
def habits(account_id: int) -> Habits:
    rng = random.Random(f"txguard-account-habits-{account_id}")
    devices = tuple(f"dev-{account_id % 10**9}-{n}" for n in range(rng.choice((1, 1, 2))))
    return Habits(rng.choice(HOME_COUNTRIES), devices, f"card-{account_id % 10**9}")


def merchant_kind(merchant_id: str | None) -> tuple[str | None, str]:
    """(MCC, channel) of a merchant; a payment without one is a transfer."""
    if merchant_id is None:
        return None, "transfer"
    return MERCHANT_KINDS[zlib.crc32(merchant_id.encode()) % len(MERCHANT_KINDS)]


# channel, country, merchant_category, card_id, ip_address, device_id, metadata (domain.ATTRIBUTES' order).
Attributes = tuple[str | None, str | None, str | None, str | None, str | None, str | None, None]


class AttributeDraw:
    """Draws each generated transaction's attributes in turn from the run's own stream."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(f"txguard-attributes-{seed}")

    def attributes(self, account_id: int, merchant_id: str | None, pattern: str) -> Attributes:
        """(channel, country, merchant_category, card_id, ip_address, device_id, metadata) of one transaction."""
        rng, own = self._rng, habits(account_id)
        category, channel = merchant_kind(merchant_id)
        country, device = own.country, own.devices[int(rng.random() * len(own.devices))]
        if pattern in NEW_DEVICE_ABROAD:
            channel, country = "ecommerce", ABROAD[int(rng.random() * len(ABROAD))]
            device = f"dev-unknown-{int(rng.random() * 10**6)}"
        elif pattern in CARD_ABROAD or rng.random() > HOME_SHARE:
            country = ABROAD[int(rng.random() * len(ABROAD))]
        return channel, country, category, own.card_id, None, device, None
