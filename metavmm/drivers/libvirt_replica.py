"""A consistent view of a libvirt domain's disk while it keeps running, for disaster-recovery replication.

A stopped domain's disk is read as it is. A running one is frozen for the copy with a transient external
disk-only snapshot: the guest writes into a new overlay while the broker reads the disk (and its backing
chain) below it, which no longer changes; afterwards an active block commit merges the overlay back and
pivots the domain onto its own disk again, so the domain's definition ends as it began. The copy is
crash-consistent (what a power cut would leave), not application-consistent: no guest agent is asked to
quiesce.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from xml.sax.saxutils import escape

import libvirt

from metavmm.foundation.errors import DriverError
from metavmm.foundation.records import DiskRef

T = TypeVar("T")
Call = Callable[[str, Callable[[libvirt.virConnect], T]], Awaitable[T]]

COMMIT_TIMEOUT_S = 600.0
_TRANSIENT = re.compile(r"-dr-[0-9a-f]{8}\.qcow2$")  # the overlay name disk_view gives its snapshot


def _disks(doc: ET.Element) -> list[tuple[str, str]]:
    """(target dev, source file) of every disk of the domain, the first data disk first."""
    out = []
    for disk in doc.findall("devices/disk"):
        target, source = disk.find("target"), disk.find("source")
        dev = target.get("dev", "") if target is not None else ""
        out.append((dev, source.get("file", "") if source is not None else "", disk.get("device", "disk")))
    out.sort(key=lambda d: d[2] != "disk")
    return [(dev, src) for dev, src, _ in out]


def _snapshot_xml(disks: list[tuple[str, str]], frozen: dict[str, Path]) -> str:
    """A disk-only snapshot of the disks in ``frozen`` (dev -> its overlay), the others left out."""
    parts = [f"<disk name='{escape(dev)}' snapshot='external'><driver type='qcow2'/>"
             f"<source file='{escape(str(frozen[dev]))}'/></disk>" if dev in frozen
             else f"<disk name='{escape(dev)}' snapshot='no'/>" for dev, _ in disks]
    return f"<domainsnapshot><disks>{''.join(parts)}</disks></domainsnapshot>"


@contextlib.asynccontextmanager
async def disk_view(call: Call[Any], provider: str, vm_id: str) -> AsyncIterator[DiskRef]:
    """The domain's first disk as of now, unchanging while the context lasts (see the module docstring)."""
    async with disks_view(call, provider, vm_id, ()) as views:
        yield views[0]


@contextlib.asynccontextmanager
async def disks_view(call: Call[Any], provider: str, vm_id: str,
                     volumes: tuple[str, ...]) -> AsyncIterator[list[DiskRef]]:
    """The domain's first disk and its attached ``volumes`` (their files) as of one moment, unchanging while
    the context lasts: one atomic snapshot freezes them all, so a recovery point of the disk and its volumes
    is one crash-consistent moment (a power cut's), not one per disk."""
    def freeze(conn: libvirt.virConnect) -> tuple[list[tuple[str, str]], dict[str, Path]]:
        dom = conn.lookupByUUIDString(vm_id)
        disks = _disks(ET.fromstring(dom.XMLDesc()))
        if not disks or not disks[0][1]:
            raise DriverError(f"VM {vm_id} has no file-backed disk", provider=provider, operation="disk_view")
        by_file = {str(Path(src).resolve()): (dev, src) for dev, src in disks[1:] if src}
        missing = [v for v in volumes if str(Path(v).resolve()) not in by_file]
        if missing:
            raise DriverError(f"VM {vm_id} has no disk {', '.join(missing)} attached", provider=provider,
                              operation="disk_view")
        chosen = [disks[0], *(by_file[str(Path(v).resolve())] for v in volumes)]
        if not dom.isActive():
            return chosen, {}
        tag = uuid.uuid4().hex[:8]
        frozen = {dev: Path(src).with_name(f"{Path(src).stem}-dr-{tag}.qcow2") for dev, src in chosen}
        flags = (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
                 | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC)
        dom.snapshotCreateXML(_snapshot_xml(disks, frozen), flags)
        return chosen, frozen

    await _merge_leftover(call, vm_id)
    chosen, frozen = await call("disk_view", freeze)
    try:
        for _, source in chosen:
            if not Path(source).is_file():
                raise DriverError(f"disk {source} is not reachable from the broker", provider=provider,
                                  operation="disk_view")
        yield [DiskRef(source, "qcow2") for _, source in chosen]
    finally:
        for dev, source in chosen:
            if dev in frozen:
                await _merge_back(call, vm_id, dev, source, str(frozen[dev]))


async def _merge_leftover(call: Call[Any], vm_id: str) -> None:
    """A replication interrupted between its snapshot and its merge (a killed broker) left the running domain
    on a transient overlay: merge that back first, so snapshots never pile up under the domain."""
    def leftover(conn: libvirt.virConnect) -> list[tuple[str, str, str]]:
        dom = conn.lookupByUUIDString(vm_id)
        doc = ET.fromstring(dom.XMLDesc())
        out = []
        for disk in doc.findall("devices/disk[@device='disk']"):  # the first disk and the volumes frozen with it
            target, source = disk.find("target"), disk.find("source")
            below = disk.find("backingStore/source")
            top = source.get("file", "") if source is not None else ""
            if dom.isActive() and _TRANSIENT.search(top) and below is not None and target is not None:
                out.append((target.get("dev", ""), below.get("file", ""), top))
        return out

    for dev, below, top in await call("disk_view", leftover):
        await _merge_back(call, vm_id, dev, below, top)


async def _merge_back(call: Call[Any], vm_id: str, dev: str, source: str, overlay: str) -> None:
    """Commit the snapshot's overlay into the disk below it and pivot the domain back onto that disk."""
    def start(conn: libvirt.virConnect) -> None:
        # shallow: into the disk right below the overlay, never further down into a shared base image
        conn.lookupByUUIDString(vm_id).blockCommit(dev, None, None, 0, libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE
                                                   | libvirt.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW)

    def pivot(conn: libvirt.virConnect) -> bool:
        dom = conn.lookupByUUIDString(vm_id)
        info = dom.blockJobInfo(dev, 0)
        if not info:
            return True  # done (an earlier pivot went through)
        if info.get("end", 0) and info.get("cur") == info.get("end"):
            try:
                dom.blockJobAbort(dev, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
            except libvirt.libvirtError as exc:
                if "not ready" in str(exc).lower():
                    return False
                raise
        return False

    def back_on_source(conn: libvirt.virConnect) -> bool:
        return dict(_disks(ET.fromstring(conn.lookupByUUIDString(vm_id).XMLDesc()))).get(dev) == source

    await call("disk_view", start)
    deadline = time.monotonic() + COMMIT_TIMEOUT_S
    while not await call("disk_view", pivot):
        if time.monotonic() > deadline:
            raise DriverError(f"merging the replication overlay {overlay} back did not finish in "
                              f"{COMMIT_TIMEOUT_S:.0f}s", operation="disk_view")
        await asyncio.sleep(0.05)
    if not await call("disk_view", back_on_source):
        raise DriverError(f"VM {vm_id} did not pivot back onto {source}", operation="disk_view")
    Path(overlay).unlink(missing_ok=True)
