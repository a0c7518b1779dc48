"""ISO 4217 currency codes in use, with their minor units (decimal places)."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

_ZERO = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX VND VUV XAF XOF XPF"
_THREE = "BHD IQD JOD KWD LYD OMR TND"
_FOUR = "CLF UYW"
_TWO = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN BWP BYN BZD CAD CDF CHF "
    "CNY COP CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF "
    "IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR "
    "MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD "
    "SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD UYU UZS VES WST XCD XCG YER "
    "ZAR ZMW ZWG"
)

MINOR_UNITS: dict[str, int] = {
    **dict.fromkeys(_TWO.split(), 2),
    **dict.fromkeys(_ZERO.split(), 0),
    **dict.fromkeys(_THREE.split(), 3),
    **dict.fromkeys(_FOUR.split(), 4),
}

_QUANTUM = {currency: Decimal(1).scaleb(-places) for currency, places in MINOR_UNITS.items()}
_FOUR_PLACES = Decimal("0.0001")  # the most any currency has


def money(amount: Decimal, currency: str) -> str:
    """An amount (major units) as text with the currency's number of decimal places, rounded half up:
    BHD "0.125", JPY "129", EUR "41.20".

    Every amount the service shows (responses, explanations, events) is written through this function.
    A currency not in MINOR_UNITS gets four places.
    """
    return str(amount.quantize(_QUANTUM.get(currency, _FOUR_PLACES), rounding=ROUND_HALF_UP))
