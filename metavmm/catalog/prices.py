"""Prices in the catalog: storing an import in one transaction, and listing with filters and paging.

Storing replaces what came from the same source for the same provider, so importing a newer copy of
a price file updates it and never duplicates it. Rows are written with one bulk INSERT: Libcloud's
pricing.json alone is ~58,000 prices.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.models import Price, Provider, utcnow
from metavmm.foundation.errors import NotFound
from metavmm.foundation.prices import COMPONENT_UNITS, PriceRecord, gpu_model_key


async def store_prices(session: AsyncSession, records: Sequence[PriceRecord], provider: Provider | None = None,
                       ) -> int:
    """Write ``records`` (replacing earlier rows of the same provider and source). The caller's
    session is the transaction: on any error nothing is stored.

    A record naming its provider (an on-prem table) goes to that provider; otherwise to
    ``provider``, or to no provider (a public price list kept for comparison only).
    """
    names = {r.provider for r in records if r.provider}
    by_name: dict[str, Provider] = {}
    if names:
        rows = (await session.exec(select(Provider).where(Provider.name.in_(names)))).all()  # type: ignore[attr-defined]
        by_name = {p.name: p for p in rows}
        missing = sorted(names - set(by_name))
        if missing:
            raise NotFound(f"price tables name providers not in the catalog: {', '.join(missing)} "
                           "(add them to the federation file and run `metavmm catalog sync`)")
    now = utcnow()
    rows_out: list[dict[str, Any]] = []
    replaced: set[tuple[int | None, str]] = set()
    for rec in records:
        owner = by_name[rec.provider] if rec.provider else provider
        owner_id = owner.id if owner else None
        replaced.add((owner_id, rec.source))
        shape = rec.shape
        rows_out.append({
            "provider_id": owner_id, "provider_kind": owner.kind if owner else rec.provider_kind,
            "region": rec.region[:128], "flavor_name": rec.flavor[:128], "os": rec.os[:32], "unit": str(rec.unit),
            "amount": rec.amount, "currency": rec.currency, "source": rec.source,
            "effective_date": rec.effective_date, "imported_at": now, "source_ref": rec.where[:255] or None,
            "family": rec.family, "vcpus": shape.vcpus if shape else None,
            "ram_mib": shape.ram_mib if shape else None,
            "gpu_model": gpu_model_key(shape.gpu_model if shape else rec.gpu_model),  # one spelling per model
            "gpu_count": shape.gpu_count if shape else None, "arch": shape.arch if shape else None,
        })
    conn = await session.connection()  # Core statements, same transaction as the session
    for owner_id, source in replaced:
        cond = Price.provider_id == owner_id if owner_id is not None else Price.provider_id.is_(None)  # type: ignore[union-attr]
        await conn.execute(delete(Price).where(cond, Price.source == source))
    for start in range(0, len(rows_out), 5000):
        await conn.execute(insert(Price), rows_out[start:start + 5000])
    return len(rows_out)


@dataclass(frozen=True)
class PriceFilter:
    provider: str | None = None
    kind: str | None = None
    region: str | None = None
    flavor: str | None = None
    unit: str | None = None
    os: str | None = None


async def list_prices(session: AsyncSession, flt: PriceFilter, *, limit: int = 100, offset: int = 0,
                      ) -> tuple[list[tuple[Price, str | None]], int]:
    """Prices matching ``flt`` with their provider's name (None when unattached), and the total."""
    conds: list[Any] = []
    if flt.provider:
        conds.append(Provider.name == flt.provider)
    if flt.kind:
        conds.append(or_(Price.provider_kind == flt.kind, Provider.kind == flt.kind))
    for column, value in ((Price.region, flt.region), (Price.flavor_name, flt.flavor), (Price.unit, flt.unit),
                          (Price.os, flt.os)):
        if value:
            conds.append(column == value)
    where = and_(True, *conds)
    join = Provider, Price.provider_id == Provider.id
    total = (await session.exec(select(func.count()).select_from(Price).outerjoin(*join).where(where))).one()
    stmt = (select(Price, Provider.name).outerjoin(*join).where(where)
            .order_by(Price.provider_kind, Price.region, Price.flavor_name, Price.id).offset(offset).limit(limit))
    return [(row, name) for row, name in (await session.exec(stmt)).all()], total


def records_from_infos(infos: Iterable[Any], source_kind: str) -> list[PriceRecord]:
    """Driver-reported prices (:class:`metavmm.drivers.base.PriceInfo`) as records."""
    return [PriceRecord(provider_kind=source_kind, region=p.region, flavor=p.flavor, amount=p.amount,
                        currency=p.currency, source=p.source, effective_date=p.effective_date, unit=p.unit,
                        os=p.os, family=p.flavor if p.unit in COMPONENT_UNITS else None,
                        gpu_model=p.gpu_model, where=p.source) for p in infos]
