"""Where a usable copy of a lost workload's disk is: the one decision an HA restart asks (and the one
place a disaster-recovery replica joins it).

Today a restart uses the workload's own disk where it survives the host: first inside its own provider, when
only a host was lost (not the whole provider) and another host of that provider that is up mounts the storage
the disk is on (a vCenter's shared datastore, as vSphere HA restarts there); else on storage that other
providers reach too. Which hosts mount which storage is the provider's own inventory (``host.storage``, a
vCenter's ``Datastore.host`` mounts, as the last sync wrote it), not configuration: in a host loss the provider
answers, and it knows its mounts better than a file would; a restart inside it needs it to answer anyway.
Which providers share storage is configuration, never guessed from a listing (the lost provider cannot be
asked): libvirt providers with the same ``storage_dir``, and the groups named in
``ha.shared_storage``. A disk on a host's local storage dies with the host: a restart then boots the newest
verified recovery point of the workload's replication policy, at its target (DR, :mod:`.dr_store`), as an
overlay over the point; with neither there is no usable disk (``None``) and :func:`missing` says why.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.models import Host, HostState, Protection, Site, Workload
from metavmm.drivers.registry import create_driver
from metavmm.foundation.config import FederationConfig
from metavmm.services.protection import dr_store

SHARED, RECOVERY_POINT = "shared-storage", "recovery-point"


@dataclass(frozen=True, slots=True)
class DiskSource:
    """A disk a restarted copy can boot from: ``location`` as the target providers' drivers take it, and the
    providers (and, for a point, the sites) that reach it: the only restart candidates. A shared-storage
    disk is adopted (``VmSpec.extra["adopt_disk"]``); a recovery point (``point_id``) is booted as an overlay
    by :func:`metavmm.services.protection.dr.boot_point`, never adopted."""

    location: str
    providers: frozenset[str]
    origin: str = SHARED  # or RECOVERY_POINT
    point_id: str | None = None
    sites: frozenset[str] = frozenset()
    inside: bool = False  # a restart inside the lost host's own provider, on another host mounting the disk
    exclude_hosts: frozenset[int] = frozenset()  # that provider's hosts that do not mount it (or are down)
    fallback: DiskSource | None = None  # where to try when no host inside can take it (other providers)


def _storage_dir(pcfg: Any) -> Path | None:
    path = getattr(pcfg, "storage_dir", None)
    return Path(path).resolve() if path else None


def sharing(config: FederationConfig, provider: str) -> frozenset[str]:
    """The other enabled providers that reach ``provider``'s disks."""
    try:
        own = config.provider(provider)
    except KeyError:
        return frozenset()
    peers = {p for group in config.ha.shared_storage if provider in group for p in group}
    own_dir = _storage_dir(own)
    if own_dir is not None:
        peers |= {p.name for p in config.providers if p.kind == own.kind and _storage_dir(p) == own_dir}
    enabled = {p.name for p in config.providers if p.enabled}
    return frozenset(peers & enabled - {provider})


def disk_location(config: FederationConfig, provider: str, vm_id: str) -> str:
    """Where ``provider`` keeps the disk of its VM ``vm_id``, known from configuration alone (the driver's
    ``ex_disk_location``; a provider without one names the disk by the VM)."""
    driver = create_driver(config.provider(provider))  # no connection: only the driver's convention is read
    locate = getattr(driver, "ex_disk_location", None)
    return str(locate(vm_id)) if locate is not None else f"{provider}:{vm_id}"


def disk_storage(config: FederationConfig, provider: str, location: str) -> str | None:
    """The storage (as ``host.storage`` names it) a disk location of ``provider`` is on; None where its driver
    does not say (``ex_disk_storage``: VMware's datastore)."""
    driver = create_driver(config.provider(provider))  # no connection, as above
    storage = getattr(driver, "ex_disk_storage", None)
    return storage(location) if storage is not None else None


async def _inside(session: AsyncSession, config: FederationConfig, workload: Workload,
                  provider: str) -> DiskSource | None:
    """The workload's disk, adopted on another host of its own provider that is up and mounts the storage every
    disk of it is on (from the provider's inventory); None where there is none, or nothing says where it is."""
    disks = [str(d) for d in (workload.hardware or {}).get("disks") or ()]
    stores = {disk_storage(config, provider, d) for d in disks}
    if not disks or None in stores or workload.site_id is None:
        return None
    hosts = (await session.exec(select(Host).where(Host.site_id == workload.site_id))).all()
    reach = frozenset(h.id for h in hosts if h.id is not None and h.id != workload.host_id
                      and h.state == HostState.UP and stores <= set(h.storage or ()))
    if not reach:
        return None
    site = await session.get(Site, workload.site_id)
    others = (await session.exec(select(Host.id).join(Site, col(Site.id) == Host.site_id)
                                 .where(Site.provider_id == workload.provider_id))).all()
    return DiskSource(disks[0], frozenset({provider}),
                      sites=frozenset({site.name}) if site is not None else frozenset(), inside=True,
                      exclude_hosts=frozenset(h for h in others if h is not None) - reach)


async def usable_disk(session: AsyncSession, config: FederationConfig, workload: Workload,
                      provider: str, cause: str | None = None) -> DiskSource | None:
    """The disk a restart of ``workload``, lost at ``provider`` (``cause``: why), boots from; None when none
    survives.

    The single point where this is decided: the workload's own disk, adopted on another host of ``provider``
    that mounts it when only a host was lost (any cause but ``unreachable``: a provider that does not answer
    can create nothing), with the next answer as its fallback; else where another provider shares its storage;
    else the newest verified recovery point of its replication policy at the policy's target.
    """
    inside = await _inside(session, config, workload, provider) if cause != "unreachable" else None
    outside = await _outside(session, config, workload, provider)
    return replace(inside, fallback=outside) if inside is not None else outside


async def _outside(session: AsyncSession, config: FederationConfig, workload: Workload,
                   provider: str) -> DiskSource | None:
    """The disk at another provider: shared storage by configuration, else a recovery point."""
    peers = sharing(config, provider)
    if workload.provider_resource_id and peers:
        return DiskSource(disk_location(config, provider, workload.provider_resource_id), peers)
    policy = await session.get(Protection, workload.id)
    found = await dr_store.restart_point(session, workload, policy.replica_target if policy else None)
    if found is None:
        return None
    at, point = found
    site = await session.get(Site, point.site_id) if point.site_id is not None else None
    return DiskSource(point.location, frozenset({at}), RECOVERY_POINT, point.id,
                      frozenset({site.name}) if site is not None else frozenset())


async def missing(session: AsyncSession, workload: Workload, provider: str) -> str:
    """Why :func:`usable_disk` found nothing, in words for the protection state's message."""
    policy = await session.get(Protection, workload.id)
    shared = (f"its disk was on {provider}'s own storage, which no other provider reaches (nor another host of "
              f"{provider} that is up)")
    if policy is None or policy.replica_target is None:
        return f"{shared}, and it has no replication policy (no recovery point to restart from)"
    return f"{shared}, and no verified recovery point of it exists at its replication target {policy.replica_target}"
