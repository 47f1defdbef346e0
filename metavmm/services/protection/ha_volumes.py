"""The volumes an HA restart carries over: a compute's storage links go with it to the restarted copy.

A volume lives at one provider and site, like the compute it is attached to (a link stays within one site). When
the compute is restarted elsewhere, each of its attached volumes is either

- **carried**: the restart's provider reaches the volume's storage (:func:`~.ha_disk.sharing`: the same
  configuration that lets it reach the boot disk) and its driver can take over a volume from there
  (``ex_adopt_volume``): the volume is recorded at the new provider and attached to the new copy after the copy
  runs (:func:`carry`, one ``ha.volumes`` step); or
- **left**: it stays where it is (the lost provider's own storage, or a driver that cannot adopt it). The restart
  goes on without it, and says so: in the protection state's message when the restart is planned, in the
  operation's log, and in the link's own state (``inactive``, with the reason). The link is kept: once the volume's
  provider is back, detaching and attaching it again (or a migration) brings it to the compute.

A volume is never silently dropped, and never created anew empty in its place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Provider, Workload, WorkloadKind, WorkloadLink
from metavmm.drivers.registry import create_driver
from metavmm.foundation.config import FederationConfig
from metavmm.foundation.errors import MetavmmError
from metavmm.foundation.records import VolumeSpec
from metavmm.services.operations import resource_actions as res
from metavmm.services.operations.context import StepContext
from metavmm.services.operations.link_actions import set_state
from metavmm.services.protection.ha_disk import sharing

CARRIED, LEFT, RESTORED = "carried", "left", "restored"


@dataclass(frozen=True, slots=True)
class Volume:
    """One attached volume of a restarted compute, and what the restart does with it."""

    link_id: str
    workload_id: str
    name: str
    provider: str | None  # where it is now
    location: str | None  # its id there (what a peer sharing the storage adopts)
    size_gib: int
    fate: str  # CARRIED | LEFT
    why: str = ""  # for a LEFT one: why the new provider cannot reach it

    def args(self) -> dict[str, Any]:
        return {"link_id": self.link_id, "workload_id": self.workload_id, "name": self.name,
                "provider": self.provider, "location": self.location, "size_gib": self.size_gib,
                "fate": self.fate, "why": self.why}


def _adopts(config: FederationConfig, provider: str) -> bool:
    """Whether ``provider``'s driver can take over a volume from shared storage (read from the driver class,
    without a connection: the decision is made while planning)."""
    return hasattr(create_driver(config.provider(provider)), "ex_adopt_volume")


async def linked(session: AsyncSession, compute: Workload, kind: WorkloadKind) -> list[tuple[WorkloadLink, Workload]]:
    """The compute's links to its volumes or networks (``kind``) not being deleted, with them, in a stable order."""
    links = (await session.exec(select(WorkloadLink).where(WorkloadLink.source_id == compute.id))).all()
    out = []
    for link in sorted(links, key=lambda lk: lk.id):
        target = await session.get(Workload, link.target_id)
        if target is not None and target.kind == kind and target.desired_state != "deleted":
            out.append((link, target))
    return out


async def attached(session: AsyncSession, config: FederationConfig, compute: Workload, target: str,
                   restored: frozenset[str] = frozenset()) -> list[Volume]:
    """The volumes attached to ``compute`` and whether a restart at ``target`` carries each one; those in
    ``restored`` are carried by the recovery point the restart boots (made at the target from their own points,
    :func:`~.dr.boot_point`)."""
    out = []
    for link, vol in await linked(session, compute, WorkloadKind.STORAGE):
        prov = await session.get(Provider, vol.provider_id) if vol.provider_id is not None else None
        at = prov.name if prov is not None else None
        size = int((vol.spec or {}).get("size_gib") or (vol.spec or {}).get("disk_gib") or 1)
        why = ""
        if vol.id in restored:
            out.append(Volume(link.id, vol.id, vol.name, at, vol.provider_resource_id, size, RESTORED))
            continue
        if at is None or vol.provider_resource_id is None:
            why = f"volume {vol.name} is not placed at any provider"
        elif at != target and target not in sharing(config, at):
            why = f"volume {vol.name} is on {at}'s own storage, which {target} does not reach"
        elif at != target and not _adopts(config, target):
            why = f"{target} ({config.provider(target).kind}) cannot take over volume {vol.name} from shared storage"
        out.append(Volume(link.id, vol.id, vol.name, at, vol.provider_resource_id, size, LEFT if why else CARRIED,
                          why))
    return out


def summary(volumes: list[Volume]) -> str:
    """What the restart does with the volumes, for the protection state's message ('' without volumes)."""
    carried = [v.name for v in volumes if v.fate == CARRIED]
    restored = [v.name for v in volumes if v.fate == RESTORED]
    left = [v.why for v in volumes if v.fate == LEFT]
    parts = ([f"volumes {', '.join(carried)} re-attached after it runs"] if carried else []) + \
        ([f"volumes {', '.join(restored)} restored from the recovery point"] if restored else []) + \
        ([f"NOT re-attached: {'; '.join(left)}"] if left else [])
    return "; ".join(parts)


async def carry(ctx: StepContext, *, compute_id: str, provider: str, region: str,
                volumes: list[dict[str, Any]]) -> dict[str, str]:
    """Bring each volume to the restarted copy at ``provider``/``region``: adopt it there (found carrying its
    tag, or taken over from shared storage), record it there, attach it. A volume that cannot be carried is
    reported on its link and in the log; the copy keeps running (its disk is its own). Idempotent: an adopted
    volume is found again, an attached one is attached already."""
    done: dict[str, str] = {}
    restored = ctx.outputs.get("restored_volumes") or {}
    for v in volumes:
        why = v["why"]
        if v["fate"] == RESTORED:  # made, attached and recorded by the boot of the point
            if v["workload_id"] in restored:
                done[v["workload_id"]] = "attached"
                continue
            why = f"volume {v['name']} was not restored from the recovery point"
        if v["fate"] == CARRIED:
            try:
                found = await _adopt(ctx, provider, region, v)
                async with session_scope(ctx.sessions) as session:
                    await res.place_at(session, provider, v["workload_id"], res.resource_id(found), region)
                await res.attach(ctx, res.VOLUME, compute_id, v["workload_id"])
            except MetavmmError as exc:
                why = f"volume {v['name']} could not be carried to {provider}: {exc}"
            else:
                await set_state(ctx, v["link_id"], "active", f"re-attached at {provider} after an HA restart")
                done[v["workload_id"]] = "attached"
                continue
        done[v["workload_id"]] = await leave(ctx, v["link_id"], why, "it")
    return done


async def leave(ctx: StepContext, link_id: str, why: str, what: str) -> str:
    """A link the restarted copy runs without (``what``: "it", or "that interface"): said in the log and on the
    link (``inactive``, kept: detaching and attaching it again brings it back). Returns ``why``."""
    await ctx.log(f"{why}: the restarted copy runs without {what}")
    await set_state(ctx, link_id, "inactive", f"{why}; not attached to the restarted copy (detach it, and attach "
                    "it again once it can be reached)")
    return why


async def _adopt(ctx: StepContext, provider: str, region: str, v: dict[str, Any]) -> Any:
    """The volume as ``provider`` sees it: carrying its tag there already (adopted by an earlier attempt, or a
    pool over the same directory), else taken over by the driver from the shared storage."""
    found = await res.find(ctx, res.VOLUME, provider, v["workload_id"])
    if found is not None:
        return found
    spec = VolumeSpec(name=v["name"], region=region, size_gib=int(v["size_gib"]), workload_id=v["workload_id"])
    adopted = await ctx.driver(provider).ex_adopt_volume(v["location"], spec)  # type: ignore[attr-defined]
    await ctx.log(f"volume {v['name']} taken over at {provider} from {v['provider']}'s shared storage")
    return adopted
