"""Currency conversion from the federation file's dated rate table, never from a live feed.

A comparison must be reproducible and say which rates it used, so rates are configuration
(``currency:`` in the federation file): ``rates[X]`` is what one unit of X costs in ``base``.
Converting X to Y goes through the base: ``amount * rates[X] / rates[Y]``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from metavmm.foundation.currencies import normalise_currency
from metavmm.foundation.errors import ValidationError

Converter = Callable[[Decimal, str], Decimal]


def currency_code(code: str) -> str:
    """The ISO code of ``code`` (``NTD`` -> ``TWD``), or a ValidationError a user can act on."""
    try:
        return normalise_currency(code)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


@dataclass(frozen=True)
class RateTable:
    base: str
    rates: Mapping[str, Decimal] = field(default_factory=dict)
    date: date | None = None
    source: str = ""
    stale_after_days: int = 180

    @classmethod
    def from_config(cls, cfg: Any) -> RateTable:
        """The federation file's table, or an empty one in the federation's currency."""
        cur = getattr(cfg, "currency", None)
        if cur is None:
            return cls(base=normalise_currency(cfg.federation.currency))
        return cls(base=cur.base, rates=dict(cur.rates), date=cur.date, source=cur.source,
                   stale_after_days=cur.stale_after_days)

    def rate(self, code: str) -> Decimal:
        code = currency_code(code)
        if code == self.base:
            return Decimal(1)
        try:
            return self.rates[code]
        except KeyError:
            known = ", ".join(sorted({self.base, *self.rates}))
            raise ValidationError(f"no exchange rate for {code}: the federation file's currency table knows "
                                  f"{known} (add {code} under currency.rates)") from None

    def convert(self, amount: Decimal, from_code: str, to_code: str) -> Decimal:
        if currency_code(from_code) == currency_code(to_code):
            return amount
        return amount * self.rate(from_code) / self.rate(to_code)

    def converter(self, to_code: str) -> Converter:
        """``to_currency(amount, currency) -> Decimal`` in ``to_code``, for the scheduler to inject."""
        target = currency_code(to_code)
        target_rate = self.rate(target)

        def to_currency(amount: Decimal, currency: str) -> Decimal:
            code = currency_code(currency)
            return amount if code == target else amount * self.rate(code) / target_rate

        return to_currency

    def age_days(self, today: date) -> int | None:
        return (today - self.date).days if self.date else None
