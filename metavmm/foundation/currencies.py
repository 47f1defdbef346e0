"""Currency codes: which three-letter codes a price may carry, and the local aliases people use.

A price in an unknown currency cannot be compared with anything, so importers reject it with its
line rather than storing it. Codes are ISO 4217 (active codes); ``NTD``, the name Taiwan's centres
use for the New Taiwan dollar, is accepted as an alias of ``TWD`` and stored as ``TWD``.
"""

from __future__ import annotations

_CODES = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN BZD CAD "
    "CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ "
    "GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR "
    "LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN "
    "PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SYP SZL THB TJS "
    "TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VES VND VUV WST XAF XCD XOF XPF YER ZAR ZMW ZWL "
)
ISO_4217 = frozenset(_CODES.split())

ALIASES = {"NTD": "TWD", "RMB": "CNY"}


def normalise_currency(code: str) -> str:
    """The ISO code for ``code`` (upper-cased, aliases resolved); ValueError when it is not one."""
    upper = code.strip().upper()
    upper = ALIASES.get(upper, upper)
    if upper not in ISO_4217:
        raise ValueError(f"unknown currency {code!r} (expected an ISO 4217 code such as USD, EUR, TWD)")
    return upper
