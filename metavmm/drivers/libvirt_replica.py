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


def _snapshot_xml(disks: list[tuple[str, str]], overlay: Path) -> str:
    parts = [f"<disk name='{escape(disks[0][0])}' snapshot='external'><driver type='qcow2'/>"
             f"<source file='{escape(str(overlay))}'/></disk>"]
    parts += [f"<disk name='{escape(dev)}' snapshot='no'/>" for dev, _ in disks[1:]]
    return f"<domainsnapshot><disks>{''.join(parts)}</disks></domainsnapshot>"


@contextlib.asynccontextmanager
async def disk_view(call: Call[Any], provider: str, vm_id: str) -> AsyncIterator[DiskRef]:
    """The domain's first disk as of now, unchanging while the context lasts (see the module docstring)."""
    def freeze(conn: libvirt.virConnect) -> tuple[str, str, str | None]:
        dom = conn.lookupByUUIDString(vm_id)
        disks = _disks(ET.fromstring(dom.XMLDesc()))
        if not disks or not disks[0][1]:
            raise DriverError(f"VM {vm_id} has no file-backed disk", provider=provider, operation="disk_view")
        dev, source = disks[0]
        if not dom.isActive():
            return dev, source, None
        overlay = Path(source).with_name(f"{Path(source).stem}-dr-{uuid.uuid4().hex[:8]}.qcow2")
        flags = (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
                 | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC)
        dom.snapshotCreateXML(_snapshot_xml(disks, overlay), flags)
        return dev, source, str(overlay)

    await _merge_leftover(call, vm_id)
    dev, source, overlay = await call("disk_view", freeze)
    if not Path(source).is_file():
        raise DriverError(f"disk {source} is not reachable from the broker", provider=provider, operation="disk_view")
    try:
        yield DiskRef(source, "qcow2")
    finally:
        if overlay is not None:
            await _merge_back(call, vm_id, dev, source, overlay)


async def _merge_leftover(call: Call[Any], vm_id: str) -> None:
    """A replication interrupted between its snapshot and its merge (a killed broker) left the running domain
    on a transient overlay: merge that back first, so snapshots never pile up under the domain."""
    def leftover(conn: libvirt.virConnect) -> tuple[str, str, str] | None:
        dom = conn.lookupByUUIDString(vm_id)
        doc = ET.fromstring(dom.XMLDesc())
        for disk in doc.findall("devices/disk[@device='disk']"):
            target, source = disk.find("target"), disk.find("source")
            below = disk.find("backingStore/source")
            top = source.get("file", "") if source is not None else ""
            if dom.isActive() and _TRANSIENT.search(top) and below is not None and target is not None:
                return target.get("dev", ""), below.get("file", ""), top
            break
        return None

    found = await call("disk_view", leftover)
    if found is not None:
        dev, below, top = found
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
        return _disks(ET.fromstring(conn.lookupByUUIDString(vm_id).XMLDesc()))[0][1] == source

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
