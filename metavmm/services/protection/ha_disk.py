"""Where a usable copy of a lost workload's disk is: the one decision an HA restart asks (and the one
place a disaster-recovery replica joins it).

Today a restart uses the workload's own disk where it survives the host: on storage that other providers
reach too. Which providers share storage is configuration, never guessed from a listing (the lost
provider cannot be asked): libvirt providers with the same ``storage_dir``, and the groups named in
``ha.shared_storage``. A disk on a host's local storage dies with the host: there is then no usable disk
(``None``) until a recovery point exists at another site (the DR part: see :func:`usable_disk`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metavmm.catalog.models import Workload
from metavmm.drivers.registry import create_driver
from metavmm.foundation.config import FederationConfig

SHARED = "shared-storage"


@dataclass(frozen=True, slots=True)
class DiskSource:
    """A disk a restarted copy can boot from: ``location`` as the target providers' drivers take it
    (``VmSpec.extra["adopt_disk"]``), and the providers that reach it (the only restart candidates)."""

    location: str
    providers: frozenset[str]
    origin: str = SHARED  # shared-storage; a DR recovery point would say recovery-point


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


def usable_disk(config: FederationConfig, workload: Workload, provider: str) -> DiskSource | None:
    """The disk a restart of ``workload``, lost at ``provider``, boots from; None when none survives.

    The single point where this is decided: a DR replica (the workload's latest verified recovery point
    at another site) plugs in here, after the shared-storage case, with ``origin="recovery-point"``.
    """
    if not workload.provider_resource_id:
        return None
    peers = sharing(config, provider)
    if not peers:
        return None
    return DiskSource(disk_location(config, provider, workload.provider_resource_id), peers)
