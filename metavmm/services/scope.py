"""Project scoping: what a caller may see of project-owned rows, in one place for REST and OCCI.

Workloads, links, operations, quotas and tokens belong to one project; a caller sees its own
project's rows, an admin every project's. Images follow the marketplace's rule (published beyond their
project: ``public``, ``federation``, or ``school`` for the publishing school), which lives in one place,
:class:`metavmm.services.marketplace.entries.Audience`. Shared inventory (providers, sites, hosts, flavors, prices)
is readable by any authenticated caller. A row the caller may not see is answered exactly like a row
that does not exist (404), so ids of other projects leak nothing.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

from sqlalchemy import bindparam, select, true
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.foundation.errors import NotFound
from metavmm.services.identity import Identity

M = TypeVar("M", bound=SQLModel)


def visible(identity: Identity, model: type[SQLModel]) -> Any:
    """A WHERE clause limiting ``model`` (which has ``project_id``) to what ``identity`` may see."""
    if identity.is_admin:
        return true()
    return model.project_id == identity.project_id  # type: ignore[attr-defined]


def can_see(identity: Identity, row: Any) -> bool:
    """``row``: a model object or a dict of its columns."""
    if identity.is_admin:
        return True
    owner = row.get("project_id") if isinstance(row, dict) else getattr(row, "project_id", None)
    return owner == identity.project_id


async def get_visible_row(session: AsyncSession, identity: Identity, model: type[SQLModel], key: Any,
                          what: str) -> dict[str, Any]:
    """:func:`get_visible` for a reader that only renders the row: its columns as a plain dict, read with
    one Core SELECT (built once per table) and no ORM object (identity map, instrumented attributes: a
    third of a REST read's CPU, issue 16 item 13). The same rule."""
    row = (await session.exec(_by_key(model), params={"key": key})).first()  # type: ignore[call-overload]
    found = dict(row._mapping) if row is not None else None
    if found is None or not can_see(identity, found):
        raise NotFound(f"no {what} {key}")
    return found


@functools.cache
def _by_key(model: type[SQLModel]) -> Any:
    table = model.__table__  # type: ignore[attr-defined]
    return select(table).where(table.primary_key.columns.values()[0] == bindparam("key"))


async def get_visible(session: AsyncSession, identity: Identity, model: type[M], key: Any, what: str) -> M:
    """The row, or NotFound when it does not exist or belongs to a project the caller cannot see."""
    row = await session.get(model, key)
    if row is None or not can_see(identity, row):
        raise NotFound(f"no {what} {key}")
    return row
