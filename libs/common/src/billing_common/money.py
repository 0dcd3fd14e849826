"""Money as integer minor units of an ISO 4217 currency; exact decimals for sub-cent prices."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

# Active ISO 4217 codes by number of minor-unit digits.
_ZERO = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_THREE = "BHD IQD JOD KWD LYD OMR TND"
_FOUR = "CLF UYW"
_TWO = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP BYN BZD "
    "CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS "
    "GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL "
    "MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK "
    "PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS "
    "TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VED VES WST XCD XCG YER ZAR ZMW ZWG"
)
MINOR_DIGITS: dict[str, int] = {
    **{code: 0 for code in _ZERO.split()},
    **{code: 2 for code in _TWO.split()},
    **{code: 3 for code in _THREE.split()},
    **{code: 4 for code in _FOUR.split()},
}


class CurrencyError(ValueError):
    pass


def check_currency(code: str) -> str:
    if code not in MINOR_DIGITS:
        raise CurrencyError(f"unknown ISO 4217 currency {code!r}")
    return code


@dataclass(frozen=True, order=True)
class Money:
    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        if isinstance(self.amount_minor, bool) or not isinstance(self.amount_minor, int):
            raise TypeError("money amounts are integers of minor units")
        check_currency(self.currency)

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(0, currency)

    def _same(self, other: Money) -> None:
        if other.currency != self.currency:
            raise CurrencyError(f"cannot combine {self.currency} with {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount_minor + other.amount_minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount_minor - other.amount_minor, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount_minor, self.currency)

    def is_zero(self) -> bool:
        return self.amount_minor == 0

    def is_negative(self) -> bool:
        return self.amount_minor < 0

    def to_decimal(self) -> Decimal:
        """Major units, exact (e.g. 1999 USD -> Decimal('19.99'))."""
        return Decimal(self.amount_minor).scaleb(-MINOR_DIGITS[self.currency])

    def __str__(self) -> str:
        return f"{self.to_decimal()} {self.currency}"


def parse_decimal(text: str) -> Decimal:
    """An exact, finite decimal from its string form; never from a float."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a decimal number") from None
    if not value.is_finite():
        raise ValueError(f"{text!r} is not a finite number")
    return value


def round_to_minor(major_units: Decimal, currency: str) -> Money:
    """Round an exact amount in major units to whole minor units, half to even (banker's rounding)."""
    digits = MINOR_DIGITS[check_currency(currency)]
    minor = (major_units.scaleb(digits)).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
    return Money(int(minor), currency)
