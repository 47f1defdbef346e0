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
from typing import Any

from sqlalchemy import and_, func, or_
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.models import Flavor, Price, Provider
from metavmm.foundation.prices import COMPONENT_UNITS, SIDE_UNITS, PriceUnit, Shape

# GPUs a provider kind sells only as parts attached to machines of some families, not as a family of their
# own: GCP attaches T4, V100, P100, P4 and K80 GPUs to N1 machines (its A2, A3 and G2 types come with
# their GPUs and are listed shapes). A kind not named here attaches a gpu-hour price to any family.
ATTACHABLE_GPU_FAMILIES: dict[str, tuple[str, ...]] = {"gcp": ("n1",)}


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


@dataclass(frozen=True)
class PriceScope:
    """What a comparison can use, so the database filters before Python does."""

    os: str = "linux"
    min_vcpus: int = 0
    min_ram_mib: int = 0
    gpu_model: str | None = None
    gpu_count: int = 0

    def conditions(self) -> list[Any]:
        hour = Price.unit == PriceUnit.HOUR
        # the model is compared in Python (gpu_model_key: "NVIDIA H100 80GB" is H100), the count here
        no_gpus = or_(Price.gpu_count.is_(None), Price.gpu_count == 0)  # type: ignore[union-attr]
        # a GPU request: shapes with enough GPUs, and where GPUs are attached parts, machines without any
        gpus = (or_(Price.gpu_count >= self.gpu_count,  # type: ignore[operator]
                    and_(no_gpus, Price.provider_kind.in_(list(ATTACHABLE_GPU_FAMILIES))))  # type: ignore[attr-defined]
                if self.gpu_count else no_gpus)
        fits = and_(Price.vcpus >= self.min_vcpus, Price.ram_mib >= self.min_ram_mib, gpus)  # type: ignore[operator]
        # storage (gib-month) and egress (gib-egress) prices come too: the comparison shows them beside the shape
        return [
            Price.unit.in_([PriceUnit.HOUR, *COMPONENT_UNITS, *SIDE_UNITS]),  # type: ignore[attr-defined]
            or_(Price.os == self.os, Price.unit.in_([PriceUnit.GPU_HOUR, *SIDE_UNITS])),  # type: ignore[attr-defined]
            or_(Price.vcpus.is_(None), ~hour, fits),  # type: ignore[union-attr]
        ]


class PriceBook:
    """Prices grouped by (provider, region), for comparison and for the scheduler's costs."""

    def __init__(self, points: Iterable[PricePoint], shaped_families: set[tuple[str, str, str]] | None = None,
                 shaped_counts: dict[tuple[str, str], int] | None = None) -> None:
        self.groups: dict[tuple[str, str], list[PricePoint]] = {}
        self.size = 0
        # (provider, region) -> families sold as listed machine types only: never composed to a custom shape
        self.shaped_families: dict[tuple[str, str], set[str]] = {}
        # (provider, region) -> how many shaped instance prices it has, loaded or not (for "why not here")
        self.shaped_counts: dict[tuple[str, str], int] = dict(shaped_counts or {})
        for p in points:
            self.groups.setdefault((p.provider, p.region), []).append(p)
            self.size += 1
            if p.family and p.unit == PriceUnit.HOUR:
                self.shaped_families.setdefault((p.provider, p.region), set()).add(p.family)
            if shaped_counts is None and p.shape is not None and p.unit == PriceUnit.HOUR:
                self.shaped_counts[(p.provider, p.region)] = self.shaped_counts.get((p.provider, p.region), 0) + 1
        for provider, region, family in shaped_families or ():
            self.shaped_families.setdefault((provider, region), set()).add(family)

    @classmethod
    async def load(cls, session: AsyncSession, scope: PriceScope | None = None) -> PriceBook:
        """Read the prices once (plain rows, not ORM objects: the catalog may hold ~100k prices).

        With a ``scope``, the database leaves out what cannot serve it: other operating systems and shapes
        too small or with the wrong GPUs (storage and egress prices stay: the comparison shows them).
        """
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
            .outerjoin(Provider, Price.provider_id == Provider.id)
            .where(*(scope.conditions() if scope else ())))).all()
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
        if scope is None:
            return cls(points)
        shaped = (await session.exec(
            select(Provider.name, Price.provider_kind, Price.region, Price.family).distinct()
            .outerjoin(Provider, Price.provider_id == Provider.id)
            .where(Price.unit == PriceUnit.HOUR, Price.family.is_not(None)))).all()  # type: ignore[union-attr]
        counts = (await session.exec(
            select(Provider.name, Price.provider_kind, Price.region, func.count())
            .outerjoin(Provider, Price.provider_id == Provider.id)
            .where(Price.unit == PriceUnit.HOUR, Price.os == scope.os, Price.vcpus.is_not(None))  # type: ignore[union-attr]
            .group_by(Provider.name, Price.provider_kind, Price.region))).all()
        return cls(points, {(name or kind, region, family) for name, kind, region, family in shaped},
                   {(name or kind, region): n for name, kind, region, n in counts})

    def hourly_price(self, provider: str, region: str, flavor: str, os: str = "linux") -> PricePoint | None:
        """The instance-hour price of one flavor at one provider and region (None when unknown)."""
        for p in self.groups.get((provider, region), ()):
            if p.flavor == flavor and p.unit == PriceUnit.HOUR and p.os == os:
                return p
        return None
