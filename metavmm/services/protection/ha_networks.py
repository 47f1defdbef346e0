"""The networks an HA restart carries over: a compute's network interfaces come back on the restarted copy.

A network lives at one provider and site, like the compute whose interfaces are on it (a link stays within one
site). When the compute is restarted elsewhere, each of its interfaces (``networkinterface`` links) is, decided
when the restart is planned and written in its plan and in the protection state's message:

- **same**: the network is at the restart's provider and region already: the interface is attached to it again;
- **twin**: the project has a network of the same name (and CIDR, where both have one) at the restart's site:
  the link is turned to that network, and the interface attached to it (the plan names it, by name and id);
- **follows**: the network is at the lost provider, the restart's provider can make networks, and no compute
  of the network that still answers stays behind on it: the network moves with the compute, as a volume on
  shared storage does. At the target, the network carrying its tag is used where it exists already (an
  earlier attempt, or the same network defined at both sites), else it is created there with its CIDR; the
  catalog records it there, and the step's output says which (``same network`` or ``created``);
- **left**: none of these (the reason is given): the copy runs without that interface, and says so, like a
  volume it cannot reach: in the protection state's message, the operation's log, and the link (``inactive``,
  with the reason; kept, so that detaching and attaching it again brings it back).

The interface keeps its MAC (the link's ``mac``), so a DHCP reservation or a stretched L2 network hands it the
same address where it can.

The same plan serves a DR failover and failback (:func:`metavmm.services.protection.dr.failover`): the source is
the "lost" provider, the DR site the target. A followed network's copy the broker makes at a target is noted on
the network's row (``spec["made_at"]``: provider -> region, written *before* the copy is made, so a step retried
after a kill still counts it as made, not found); when the network leaves that provider again (a failback),
:func:`drop` deletes that copy unless something still uses it. A network found there (carrying its tag, not
made by the broker), a twin and a network that was at the target already are never deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Provider, Site, Workload, WorkloadKind, WorkloadLink
from metavmm.drivers.registry import create_driver
from metavmm.foundation.config import FederationConfig
from metavmm.foundation.errors import MetavmmError, ProviderConflict, ProviderNotFound, ProviderUnavailable
from metavmm.foundation.records import Capability, NetworkSpec
from metavmm.services.operations import resource_actions as res
from metavmm.services.operations.context import StepContext
from metavmm.services.operations.link_actions import set_state
from metavmm.services.protection.ha_volumes import leave, linked

SAME, TWIN, FOLLOWS, LEFT = "same", "twin", "follows", "left"


@dataclass(frozen=True, slots=True)
class Interface:
    """One network interface of a restarted compute, and what the restart does with it."""

    link_id: str
    network_id: str  # the network workload the copy's interface goes on (a twin's, for TWIN)
    name: str
    mac: str | None
    cidr: str | None
    fate: str  # SAME | TWIN | FOLLOWS | LEFT
    why: str = ""  # LEFT: why not; TWIN: which network replaces it

    def args(self) -> dict[str, Any]:
        return {"link_id": self.link_id, "network_id": self.network_id, "name": self.name, "mac": self.mac,
                "cidr": self.cidr, "fate": self.fate, "why": self.why}


def _can(config: FederationConfig, provider: str, *capabilities: Capability) -> bool:
    """Whether ``provider``'s driver declares the capabilities (read from the driver class, no connection:
    the decision is made while planning)."""
    return set(capabilities) <= set(create_driver(config.provider(provider)).capabilities)


async def _site_of(session: AsyncSession, row: Workload) -> tuple[str | None, str | None]:
    prov = await session.get(Provider, row.provider_id) if row.provider_id is not None else None
    site = await session.get(Site, row.site_id) if row.site_id is not None else None
    return (prov.name if prov else None), (site.region if site else None)


async def attached(session: AsyncSession, config: FederationConfig, compute: Workload, old: str, target: str,
                   region: str, *, old_answers: bool) -> list[Interface]:
    """The interfaces of ``compute`` (lost at ``old``) and what a restart at ``target``/``region`` does with
    each; ``old_answers``: the lost provider still answers (its other computes run on), so a network they use
    stays there."""
    out = []
    for link, net in await linked(session, compute, WorkloadKind.NETWORK):
        at, at_region = await _site_of(session, net)
        cidr = (net.spec or {}).get("cidr")
        mac = (link.attributes or {}).get("mac")
        one = {"link_id": link.id, "name": net.name, "mac": mac, "cidr": cidr}
        if not _can(config, target, Capability.ATTACH_NETWORK):
            why = f"{target} ({config.provider(target).kind}) cannot attach a network"
            out.append(Interface(network_id=net.id, fate=LEFT, why=why, **one))
        elif (at, at_region) == (target, region) and net.provider_resource_id:
            out.append(Interface(network_id=net.id, fate=SAME, **one))
        elif (twin := await _twin(session, net, target, region)) is not None:
            out.append(Interface(network_id=twin.id, fate=TWIN, why=f"network {twin.name} ({twin.id}) at {target}/"
                                 f"{region}, the project's network of that name there", **one))
        else:
            why = await _stays(session, config, net, compute, at, old, target, old_answers=old_answers)
            out.append(Interface(network_id=net.id, fate=LEFT if why else FOLLOWS, why=why, **one))
    return out


async def _twin(session: AsyncSession, net: Workload, target: str, region: str) -> Workload | None:
    """The project's network of ``net``'s name (and CIDR, where both have one) placed at ``target``/``region``."""
    rows = (await session.exec(select(Workload).where(Workload.project_id == net.project_id,
                                                      Workload.kind == WorkloadKind.NETWORK,
                                                      Workload.name == net.name, Workload.id != net.id))).all()
    cidr = (net.spec or {}).get("cidr")
    for row in sorted(rows, key=lambda r: r.id):
        other = (row.spec or {}).get("cidr")
        if row.desired_state == "deleted" or not row.provider_resource_id or (cidr and other and cidr != other):
            continue
        if await _site_of(session, row) == (target, region):
            return row
    return None


async def _stays(session: AsyncSession, config: FederationConfig, net: Workload, compute: Workload,
                 at: str | None, old: str, target: str, *, old_answers: bool) -> str:
    """Why ``net`` cannot follow the compute to ``target`` ('' when it can)."""
    if at is None or not net.provider_resource_id:
        return f"network {net.name} is not placed at any provider"
    if at != old:
        return (f"network {net.name} is at {at}, not at {old}, which the compute left, and {target} has no network "
                "of that name")
    if not _can(config, target, Capability.NETWORKS):
        return (f"{target} ({config.provider(target).kind}) cannot make network {net.name}, and has no network "
                "of that name")
    if old_answers:
        others = (await session.exec(select(WorkloadLink.source_id).where(
            WorkloadLink.target_id == net.id, WorkloadLink.source_id != compute.id))).all()
        for other_id in sorted(others):
            other = await session.get(Workload, other_id)
            if other is not None and other.present and other.desired_state != "deleted" \
                    and other.provider_id == net.provider_id:
                return (f"network {net.name} stays at {old} for compute {other.name}, which runs there still, and "
                        f"{target} has no network of that name")
    return ""


def summary(interfaces: list[Interface]) -> str:
    """What the restart does with the interfaces, for the protection state's message ('' without any)."""
    parts = []
    for i in interfaces:
        if i.fate == SAME:
            parts.append(f"network {i.name} re-attached")
        elif i.fate == TWIN:
            parts.append(f"network {i.name} re-attached on {i.why}")
        elif i.fate == FOLLOWS:
            parts.append(f"network {i.name} follows it (the same network where it exists at the target, else "
                         f"created there{' with ' + i.cidr if i.cidr else ''})")
    left = [i.why for i in interfaces if i.fate == LEFT]
    return "; ".join(parts + ([f"interface NOT re-attached: {'; '.join(left)}"] if left else []))


async def carry(ctx: StepContext, *, compute_id: str, provider: str, region: str,
                interfaces: list[dict[str, Any]], after: str = "an HA restart") -> dict[str, str]:
    """Put each interface back on the restarted copy at ``provider``/``region`` (see the module's fates), with
    its MAC; ``after`` names what restarted it (an HA restart, a failover, a failback). One that cannot be is
    reported on its link and in the log; the copy keeps running. Idempotent: a followed network is found by its
    tag, a turned link points at its twin already, an attached interface is attached already."""
    done: dict[str, str] = {}
    for i in interfaces:
        why = i["why"]
        if i["fate"] != LEFT:
            try:
                used = await _place(ctx, provider, region, i)
                out = await res.attach(ctx, res.NETWORK, compute_id, i["network_id"], i["mac"])
            except MetavmmError as exc:
                why = f"network {i['name']} could not be re-attached at {provider}: {exc}"
            else:
                await set_state(ctx, i["link_id"], "active", f"re-attached at {provider} on {used} after {after}",
                                **({"mac": out["mac"]} if out.get("mac") else {}))
                await ctx.log(f"interface on network {i['name']} re-attached at {provider}: {used}")
                done[i["link_id"]] = f"attached: {used}"
                continue
        done[i["link_id"]] = await leave(ctx, i["link_id"], why, "that interface")
    return done


async def _place(ctx: StepContext, provider: str, region: str, i: dict[str, Any]) -> str:
    """Make the interface's network ready at ``provider`` and say which network it is."""
    if i["fate"] == TWIN:
        async with session_scope(ctx.sessions) as session:
            link = await session.get(WorkloadLink, i["link_id"])
            if link is not None and link.target_id != i["network_id"]:
                link.target_id = i["network_id"]
                session.add(link)
        return i["why"]
    if i["fate"] == SAME:
        return f"network {i['name']}, where it is"
    found = await res.find(ctx, res.NETWORK, provider, i["network_id"], region)
    how = "the same network, there already"
    if found is None:
        await _made_at(ctx, i["network_id"], provider, region)  # before the copy: a retry still knows it made it
        found = await ctx.driver(provider).create_network(NetworkSpec(name=i["name"], region=region, cidr=i["cidr"],
                                                                      workload_id=i["network_id"]))
        how = f"created there{' with ' + i['cidr'] if i['cidr'] else ''}"
    async with session_scope(ctx.sessions) as session:
        await res.place_at(session, provider, i["network_id"], res.resource_id(found), region)
    return f"network {i['name']} ({res.resource_id(found)}): {how}"


async def _made_at(ctx: StepContext, network_id: str, provider: str, region: str | None) -> None:
    """Note on the network's row that the broker makes (``region``) or no longer has (None) a copy of it at
    ``provider`` for a carried interface."""
    async with session_scope(ctx.sessions) as session:
        row = await session.get(Workload, network_id)
        if row is None:
            return
        made = {k: v for k, v in ((row.spec or {}).get("made_at") or {}).items() if k != provider}
        if region is not None:
            made[provider] = region
        row.spec = {**(row.spec or {}), "made_at": made}
        session.add(row)


async def drop(ctx: StepContext, *, provider: str, interfaces: list[dict[str, Any]],
               fenced: bool = False) -> dict[str, str]:
    """The followed networks left ``provider`` (the site a failover or failback came from): delete the copy the
    broker made there for an earlier carry, unless a domain still uses it (kept, and said). A copy it did not
    make (found there), a twin and a network that stayed are never deleted. ``fenced``: ``provider`` may not
    answer (an unplanned failover): its copy stays, said in the log. Idempotent: a copy gone is done."""
    done: dict[str, str] = {}
    for i in interfaces:
        if i["fate"] != FOLLOWS:
            continue
        async with ctx.sessions() as session:
            row = await session.get(Workload, i["network_id"])
            here = (await _site_of(session, row))[0] if row is not None else provider
        made = ((row.spec or {}).get("made_at") or {}) if row is not None else {}
        if here == provider or provider not in made:
            continue  # it did not leave, or the broker did not make that copy
        try:
            found = await res.find(ctx, res.NETWORK, provider, i["network_id"], made[provider])
            if found is not None:
                await ctx.driver(provider).delete_network(res.resource_id(found))
                await ctx.log(f"network {i['name']} ({res.resource_id(found)}) made at {provider} for the interface "
                              "removed: the network left")
        except ProviderNotFound:
            pass  # gone meanwhile
        except ProviderConflict as exc:
            await ctx.log(f"network {i['name']} made at {provider} kept: {exc}")
            done[i["network_id"]] = "kept: in use"
            continue
        except (ProviderUnavailable, MetavmmError) as exc:
            if not fenced:
                raise
            await ctx.log(f"{provider} is unreachable ({exc}); its copy of network {i['name']} stays (the "
                          "reconciliation removes it once it is back and unused)")
            done[i["network_id"]] = "kept: unreachable"
            continue
        await _made_at(ctx, i["network_id"], provider, None)
        done[i["network_id"]] = "removed"
    return done
