"""Committed-use and reserved discounts: a dated factor per provider (``discounts:`` in the federation file).

A provider's list prices stay in the catalog as they were imported; a discount multiplies its compute
prices (instance-hour, vCPU/GiB/GPU-hour) on the days it is valid, in the comparison and in the
scheduler alike, so a commitment an admin signed shows in what a placement costs and every quote says
which discount it used. Disks and egress keep their list prices.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any


@dataclass(frozen=True, slots=True)
class DatedFactor:
    provider: str
    factor: Decimal
    valid_from: date
    valid_until: date | None = None
    source: str = ""

    def valid_on(self, day: date) -> bool:
        return self.valid_from <= day and (self.valid_until is None or day < self.valid_until)

    def describe(self) -> str:
        until = f" until {self.valid_until}" if self.valid_until else ""
        return f"x {self.factor} from {self.valid_from}{until}" + (f" ({self.source})" if self.source else "")


class Discounts:
    """The discounts of a federation, asked by provider and day."""

    def __init__(self, factors: Iterable[DatedFactor] = ()) -> None:
        self.by_provider: dict[str, list[DatedFactor]] = {}
        for f in factors:
            self.by_provider.setdefault(f.provider, []).append(f)

    @classmethod
    def from_config(cls, cfg: Any) -> Discounts:
        return cls(DatedFactor(d.provider, d.factor, d.valid_from, d.valid_until, d.source)
                   for d in getattr(cfg, "discounts", ()) or ())

    def on(self, provider: str, day: date) -> DatedFactor | None:
        """The discount valid for ``provider`` on ``day`` (the configuration allows one a day)."""
        return next((f for f in self.by_provider.get(provider, ()) if f.valid_on(day)), None)

    def factors(self, day: date) -> dict[str, Decimal]:
        """Provider name -> factor valid on ``day``: what the scheduler's snapshot multiplies by."""
        out = {}
        for provider in self.by_provider:
            found = self.on(provider, day)
            if found is not None:
                out[provider] = found.factor
        return out
