"""Read queries over the catalog shared by the CLI, REST and OCCI views."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.models import Host, ImageReplica, Provider, Site


def provider_join(model: type[SQLModel]) -> tuple[Any, list[Any]] | None:
    """How rows of ``model`` reach their provider: (provider name column, joins), or None."""
    if model is Provider:
        return Provider.name, []
    if model in (Host, ImageReplica):
        return Provider.name, [(Site, model.site_id == Site.id), (Provider, Site.provider_id == Provider.id)]
    if hasattr(model, "provider_id"):
        return Provider.name, [(Provider, model.provider_id == Provider.id)]  # type: ignore[attr-defined]
    return None


async def list_rows(maker: async_sessionmaker[AsyncSession], model: type[SQLModel], *,
                    provider: str | None = None, limit: int = 200, offset: int = 0
                    ) -> tuple[list[tuple[Any, str]], int]:
    """Rows of ``model`` with their provider's name ("-" where none), and the total count."""
    join = provider_join(model)
    pk = model.__table__.primary_key.columns.values()[0]  # type: ignore[attr-defined]
    if join is None:
        stmt = select(model)
        count = select(func.count()).select_from(model)
        if provider:
            return [], 0
    else:
        name_col, joins = join
        stmt = select(model, name_col)
        count = select(func.count()).select_from(model)
        for target, cond in joins:
            stmt = stmt.outerjoin(target, cond)
            count = count.outerjoin(target, cond)
        if provider:
            stmt = stmt.where(name_col == provider)
            count = count.where(name_col == provider)
    async with maker() as session:
        total = (await session.exec(count)).one()
        result = (await session.exec(stmt.order_by(pk).offset(offset).limit(limit))).all()
    if join is None:
        return [(row, "-") for row in result], total
    return [(row, name or "-") for row, name in result], total
