"""An immutable, in-memory view of every price, read once from the catalog.

The comparison, the CLI, the REST endpoint and the scheduler all read prices through a
:class:`PriceBook`, so they agree. Prices without a stated shape take it from the catalog's flavor
of the same provider and name when there is one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.importers.base import COMPONENT_UNITS, PriceUnit, Shape
from metavmm.catalog.models import Flavor, Price, Provider


@dataclass(frozen=True, slots=True)
class PricePoint:
    provider: str  # the provider's name, or the provider kind for prices attached to no provider
    provider_kind: str
    on_prem: bool
    region: str
    flavor: str
    os: str
    unit: str
    amount: Decimal
    currency: str
    effective_date: date
    source: str
    source_ref: str | None = None
    shape: Shape | None = None
    family: str | None = None
    gpu_model: str | None = None

    @property
    def is_component(self) -> bool:
        return self.unit in COMPONENT_UNITS


class PriceBook:
    """Prices grouped by (provider, region), for comparison and for the scheduler's costs."""

    def __init__(self, points: Iterable[PricePoint]) -> None:
        self.groups: dict[tuple[str, str], list[PricePoint]] = {}
        self.size = 0
        for p in points:
            self.groups.setdefault((p.provider, p.region), []).append(p)
            self.size += 1

    @classmethod
    async def load(cls, session: AsyncSession) -> PriceBook:
        """Read every price once (plain rows, not ORM objects: the catalog may hold ~100k prices)."""
        flavors = {
            (pid, name): Shape(v, r, g or None, c or 0, a)
            for pid, name, v, r, g, c, a in (await session.exec(select(
                Flavor.provider_id, Flavor.name, Flavor.vcpus, Flavor.ram_mib, Flavor.gpu_model, Flavor.gpu_count,
                Flavor.arch))).all()
        }
        rows = (await session.exec(
            select(Price.provider_id, Provider.name, Provider.on_prem, Price.provider_kind, Price.region,
                   Price.flavor_name, Price.os, Price.unit, Price.amount, Price.currency, Price.effective_date,
                   Price.source, Price.source_ref, Price.family, Price.vcpus, Price.ram_mib, Price.gpu_model,
                   Price.gpu_count, Price.arch)
            .outerjoin(Provider, Price.provider_id == Provider.id))).all()
        points = []
        for (pid, pname, on_prem, kind, region, flavor, os_name, unit, amount, currency, eff, source, ref, family,
             vcpus, ram_mib, gpu_model, gpu_count, arch) in rows:
            shape = None
            if vcpus and ram_mib and unit == PriceUnit.HOUR:
                shape = Shape(vcpus, ram_mib, gpu_model, gpu_count or 0, arch)
            elif unit == PriceUnit.HOUR:
                shape = flavors.get((pid, flavor))
            points.append(PricePoint(
                provider=pname or kind, provider_kind=kind, on_prem=bool(on_prem) if pname else kind == "onprem",
                region=region, flavor=flavor, os=os_name, unit=unit, amount=Decimal(amount), currency=currency,
                effective_date=eff, source=source, source_ref=ref, shape=shape, family=family,
                gpu_model=gpu_model if unit == PriceUnit.GPU_HOUR else None))
        return cls(points)

    def hourly_price(self, provider: str, region: str, flavor: str, os: str = "linux") -> PricePoint | None:
        """The instance-hour price of one flavor at one provider and region (None when unknown)."""
        for p in self.groups.get((provider, region), ()):
            if p.flavor == flavor and p.unit == PriceUnit.HOUR and p.os == os:
                return p
        return None
