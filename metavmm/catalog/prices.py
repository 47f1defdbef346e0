"""Prices in the catalog: storing an import in one transaction, and listing with filters and paging.

Storing replaces what came from the same source for the same provider, so importing a newer copy of
a price file updates it and never duplicates it. A price another source already holds (same provider,
region, flavor, unit, OS, GPU model and date) is a duplicate: the import is refused, naming it, unless
the caller asks to replace such rows. Rows are written with one bulk INSERT: Libcloud's pricing.json
alone is ~58,000 prices.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import and_, delete, func, insert, or_
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.models import Price, Provider, utcnow
from metavmm.foundation.errors import Conflict, NotFound
from metavmm.foundation.prices import COMPONENT_UNITS, PriceFileError, PriceRecord, gpu_model_key


async def store_prices(session: AsyncSession, records: Sequence[PriceRecord], provider: Provider | None = None,
                       *, duplicates: Literal["keep", "refuse", "replace"] = "keep") -> int:
    """Write ``records`` (replacing earlier rows of the same provider and source). The caller's
    session is the transaction: on any error nothing is stored.

    ``duplicates``: an import refuses (``"refuse"``) two records of one price in the file (PriceFileError)
    and a price another source already stored (Conflict), or replaces those rows (``"replace"``); a sync
    keeps what the provider reports as it is (``"keep"``).

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
    clashes = {}
    if duplicates != "keep":
        _check_duplicates(records, rows_out)
        clashes = await _stored_elsewhere(session, rows_out)
    if clashes and duplicates == "refuse":
        (key, (_, other)), n = next(iter(clashes.items())), len(clashes)
        raise Conflict(f"{n} price{'s are' if n > 1 else ' is'} already in the catalog from another source "
                       f"(first: {_describe(key)}, from {other!r}); nothing imported. Import with --replace "
                       "(REST: replace=true) to replace them")
    if clashes:
        ids = [row_id for row_id, _ in clashes.values()]
        for start in range(0, len(ids), 5000):
            await conn.execute(delete(Price).where(Price.id.in_(ids[start:start + 5000])))  # type: ignore[union-attr]
    for owner_id, source in replaced:
        cond = Price.provider_id == owner_id if owner_id is not None else Price.provider_id.is_(None)  # type: ignore[union-attr]
        await conn.execute(delete(Price).where(cond, Price.source == source))
    for start in range(0, len(rows_out), 5000):
        await conn.execute(insert(Price), rows_out[start:start + 5000])
    return len(rows_out)


PriceKey = tuple[Any, ...]


def _key(row: Mapping[str, Any]) -> PriceKey:
    """What makes two rows the same price: provider (its kind when unattached), region, flavor, unit,
    OS, GPU model and effective date."""
    return (row["provider_id"], row["provider_kind"] if row["provider_id"] is None else "", row["region"],
            row["flavor_name"], str(row["unit"]), row["os"], row["gpu_model"] or "", row["effective_date"])


def _describe(key: PriceKey) -> str:
    pid, kind, region, flavor, unit, os_name, gpu, when = key
    who = f"provider {pid}" if pid is not None else kind
    return f"{who} {region} {flavor} per {unit} ({os_name}{', ' + gpu if gpu else ''}) of {when}"


def _check_duplicates(records: Sequence[PriceRecord], rows: Sequence[Mapping[str, Any]]) -> None:
    seen: dict[PriceKey, PriceRecord] = {}
    problems = []
    for rec, row in zip(records, rows, strict=True):
        key = _key(row)
        first = seen.setdefault(key, rec)
        if first is not rec:
            problems.append(f"{rec.where or rec.source}: the same price as {first.where or first.source} "
                            f"({_describe(key)}): keep one")
    if problems:
        raise PriceFileError(problems)


async def _stored_elsewhere(session: AsyncSession, rows: Sequence[Mapping[str, Any]],
                            ) -> dict[PriceKey, tuple[int, str]]:
    """Incoming prices that rows from another source already hold: key -> (row id, that source)."""
    incoming = {_key(r): r["source"] for r in rows}
    owners = {r["provider_id"] for r in rows}
    regions = sorted({r["region"] for r in rows})
    cols = (Price.id, Price.provider_id, Price.provider_kind, Price.region, Price.flavor_name, Price.unit, Price.os,
            Price.gpu_model, Price.effective_date, Price.source)
    conds: list[Any] = []
    ids = sorted(o for o in owners if o is not None)
    if ids:
        conds.append(Price.provider_id.in_(ids))  # type: ignore[union-attr]
    if None in owners:
        conds.append(Price.provider_id.is_(None))  # type: ignore[union-attr]
    owner_cond = or_(*conds)
    out: dict[PriceKey, tuple[int, str]] = {}
    for start in range(0, len(regions), 500):
        stmt = select(*cols).where(owner_cond, Price.region.in_(regions[start:start + 500]))  # type: ignore[attr-defined]
        for row_id, pid, kind, region, flavor, unit, os_name, gpu, when, source in (await session.exec(stmt)).all():
            key = _key({"provider_id": pid, "provider_kind": kind, "region": region, "flavor_name": flavor,
                        "unit": unit, "os": os_name, "gpu_model": gpu, "effective_date": when})
            if key in incoming and incoming[key] != source:
                out[key] = (row_id, source)
    return out


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
