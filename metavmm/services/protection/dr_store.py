"""The catalog side of disaster recovery: recovery points, their chains, and what removing a workload takes.

A point is ``complete`` once verified; the points a running replica boots from are ``in-use`` (retention
never touches them; they are released when the workload leaves that site again).
"""

from __future__ import annotations

from sqlalchemy import delete as sa_delete
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.models import Protection, Provider, RecoveryPoint, Workload

COMPLETE = "complete"
IN_USE = "in-use"
AWAY = ("failover", "ha_restart")
"""The operations that leave a workload running on a replica away from home (a failback brings it back)."""


async def provider_id(session: AsyncSession, name: str) -> int | None:
    row = (await session.exec(select(Provider).where(Provider.name == name))).first()
    return row.id if row is not None else None


async def points(session: AsyncSession, workload_id: str, *, provider: int | None = None,
                 states: tuple[str, ...] = (COMPLETE, IN_USE)) -> list[RecoveryPoint]:
    """The workload's points (at ``provider`` when given), oldest first."""
    query = select(RecoveryPoint).where(RecoveryPoint.workload_id == workload_id, col(RecoveryPoint.state).in_(states))
    if provider is not None:
        query = query.where(RecoveryPoint.provider_id == provider)
    return list((await session.exec(query.order_by(col(RecoveryPoint.taken_at), col(RecoveryPoint.created_at)))).all())


async def latest(session: AsyncSession, workload_id: str, provider: int | None = None) -> RecoveryPoint | None:
    """The newest complete point of the workload (at ``provider``): what an unplanned failover boots."""
    found = await points(session, workload_id, provider=provider, states=(COMPLETE,))
    return found[-1] if found else None


async def chain_of(session: AsyncSession, point: RecoveryPoint) -> list[RecoveryPoint]:
    """``point`` and every base it needs, newest first."""
    out, at = [point], point
    while at.base_id is not None:
        base = await session.get(RecoveryPoint, at.base_id)
        if base is None or base in out:
            break
        out.append(base)
        at = base
    return out


async def provider_names(session: AsyncSession, ids: set[int]) -> dict[int, str]:
    rows = (await session.exec(select(Provider).where(col(Provider.id).in_(ids)))).all() if ids else []
    return {row.id: row.name for row in rows if row.id is not None}


async def forget_workload(session: AsyncSession, workload_id: str) -> list[RecoveryPoint]:
    """Remove the workload's protection and its points' rows (before its row is purged); the points are
    returned for their data to be removed at their targets once this commits (``dr_actions.drop_points``)."""
    gone = await points(session, workload_id, states=(COMPLETE, IN_USE, "failed"))
    await session.exec(sa_delete(RecoveryPoint).where(col(RecoveryPoint.workload_id) == workload_id))
    await session.exec(sa_delete(Protection).where(col(Protection.workload_id) == workload_id))
    return gone


async def restart_point(session: AsyncSession, workload: Workload, target: str | None
                        ) -> tuple[str, RecoveryPoint] | None:
    """For an HA restart of a workload whose disk died with its host: (provider name, point) of its newest
    verified recovery point at its replication ``target`` (``provider`` or ``provider/region``), or None.
    It is booted through :func:`metavmm.services.protection.dr.boot_point` (an overlay over the point, as a
    failover does), never in place: the point is a base of later ones and of later failovers."""
    if target is None:
        return None
    name = target.partition("/")[0]
    query = select(RecoveryPoint, Provider).join(Provider, col(RecoveryPoint.provider_id) == Provider.id).where(
        RecoveryPoint.workload_id == workload.id, RecoveryPoint.state == COMPLETE, Provider.name == name)
    if workload.provider_id is not None:
        query = query.where(RecoveryPoint.provider_id != workload.provider_id)
    row = (await session.exec(query.order_by(col(RecoveryPoint.taken_at).desc()))).first()
    return (row[1].name, row[0]) if row is not None else None


async def failed_over(session: AsyncSession, workload: Workload) -> bool:
    """The workload runs on a replica a failover started (not yet failed back). Read from its points, not from
    ``Protection.state``, which HA restart owns: the replica a failover (or an HA restart from a recovery
    point, an unplanned failover the broker made) booted is pinned ``in-use`` at the workload's provider with
    that operation's record, and a failback releases it."""
    if workload.provider_id is None:
        return False
    pinned = await points(session, workload.id, provider=workload.provider_id, states=(IN_USE,))
    return any(kind in p.details for p in pinned for kind in AWAY)
