"""Where a usable copy of a lost workload's disk is: the one decision an HA restart asks (and the one
place a disaster-recovery replica joins it).

Today a restart uses the workload's own disk where it survives the host: on storage that other providers
reach too. Which providers share storage is configuration, never guessed from a listing (the lost
provider cannot be asked): libvirt providers with the same ``storage_dir``, and the groups named in
``ha.shared_storage``. A disk on a host's local storage dies with the host: a restart then boots the newest
verified recovery point of the workload's replication policy, at its target (DR, :mod:`.dr_store`), as an
overlay over the point; with neither there is no usable disk (``None``) and :func:`missing` says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.models import Protection, Site, Workload
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


async def usable_disk(session: AsyncSession, config: FederationConfig, workload: Workload,
                      provider: str) -> DiskSource | None:
    """The disk a restart of ``workload``, lost at ``provider``, boots from; None when none survives.

    The single point where this is decided: the workload's own disk where another provider shares its
    storage, else the newest verified recovery point of its replication policy at the policy's target.
    """
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
    shared = f"its disk was on {provider}'s own storage, which no other provider reaches"
    if policy is None or policy.replica_target is None:
        return f"{shared}, and it has no replication policy (no recovery point to restart from)"
    return f"{shared}, and no verified recovery point of it exists at its replication target {policy.replica_target}"
