"""Recovery points at an OpenStack region, as private glance images that nova boots a failed-over server from.

A point is built as a full qcow2 file in a staging directory of the broker, uploaded through the driver's
``import_image`` (idempotent by name: a retried step reuses the image), and checked against glance's own
digest of what it stored (``os_hash_algo``/``os_hash_value``, SHA-512 by default; the MD5 ``checksum`` of
an older glance): only then is the staging file removed and the point recorded. Points never chain here:
glance keeps whole images and nova boots an image, not an overlay whose backing file is a path, so each
point is a full (sparse, compressed by qcow2's zero clusters) copy.

A failover's verification reads the image back from glance and compares its SHA-256 with the one the
broker recorded when it built the point: what boots is what was replicated, and the point stays as it
was (nova copies the image to the server's disk; the image itself is never written).
Cinder volume snapshots are not used: the test clouds have no cinder, and glance is what every region has.

The other way, a server at OpenStack is replicated (a failback home, or DR from OpenStack) through
:func:`disk_view`: a nova server snapshot (``createImage``), which the hypervisor uploads to glance, read back
into a staging file of the broker, then deleted. What a snapshot holds is the hypervisor's business: a
libvirt compute node uploads the server's disk; nova's fake virt driver (the tests') uploads nothing, and
its snapshot image stays ``queued`` after nova finished the snapshot, and the view fails saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metavmm.drivers.base import StoredPoint, region_id, split_region_id
from metavmm.drivers.replica_files import UploadedPoints
from metavmm.foundation.errors import DriverError, TranslationError
from metavmm.foundation.paths import state_dir
from metavmm.foundation.records import DiskRef
from metavmm.translators.digest import file_digests

if TYPE_CHECKING:
    import openstack

    from metavmm.drivers.openstack import OpenStackDriver

NAME_PREFIX = "metavmm-dr-"
SNAPSHOT_PREFIX = "metavmm-snap-"
SNAPSHOT_FORMATS = ("qcow2", "raw")
SNAPSHOT_GRACE_S = 10.0
"""How long a snapshot image may stay without data after nova finished the snapshot (glance's own lag)."""
READ_CHUNK = 1 << 20


class GlanceReplicas(UploadedPoints):
    """A :class:`~metavmm.drivers.base.ReplicaStore` of glance images named ``metavmm-dr-<point id>``."""

    driver: OpenStackDriver

    async def keep(self, built: Path, *, workload_id: str, point_id: str, region: str,
                   sha256: str) -> StoredPoint:
        """Upload the point to ``region``'s glance and prove glance stored exactly that file."""
        image = await self.driver.import_image(DiskRef(str(built), "qcow2"), NAME_PREFIX + point_id, region)
        algo, value = await self.driver._sdk(region, "replica_keep",
                                             lambda c: _stored_digest(c, image.provider_image_id))
        local = (await asyncio.to_thread(file_digests, built, [algo]))[0][algo]
        if local != value:
            await self.remove(region_id(region, image.provider_image_id))
            raise DriverError(f"glance stored recovery point {point_id[:8]} with {algo} {value[:16]}, not the "
                              f"{local[:16]} of the file sent: upload removed", provider=self.driver.name,
                              operation="replica_keep")
        built.unlink(missing_ok=True)
        return StoredPoint(region_id(region, image.provider_image_id), image.size_bytes)

    async def verify(self, location: str, sha256: str | None) -> None:
        """Read the image back from glance: it must be active and its SHA-256 ``sha256``."""
        region, image_id = self._split(location, "replica_verify")
        found = await self.driver._sdk(region, "replica_verify", lambda c: _read_sha256(c, image_id))
        if sha256 and found != sha256:
            raise TranslationError(f"recovery point image {image_id} at {region} changed since it was replicated "
                                   "(SHA-256 differs)")

    async def remove(self, location: str) -> None:
        region, image_id = self._split(location, "replica_remove")
        await self.driver._sdk(region, "replica_remove",
                               lambda c: c.image.delete_image(image_id, ignore_missing=True))


def _stored_digest(conn: openstack.connection.Connection, image_id: str) -> tuple[str, str]:
    """(algorithm, hex digest) glance computed of the image's data as it stored it."""
    image = conn.image.get_image(image_id)
    if image.hash_algo and image.hash_value:
        return str(image.hash_algo), str(image.hash_value)
    if image.checksum:
        return "md5", str(image.checksum)
    raise DriverError(f"glance reports no digest of image {image_id}", operation="replica_keep")


def _read_sha256(conn: openstack.connection.Connection, image_id: str) -> str:
    image = conn.image.get_image(image_id)
    if image.status != "active":
        raise DriverError(f"recovery point image {image_id} is {image.status}, not active", operation="replica_verify")
    digest = hashlib.sha256()
    response: Any = conn.image.download_image(image, stream=True)
    try:
        for chunk in response.iter_content(chunk_size=READ_CHUNK):
            digest.update(chunk)
    finally:
        response.close()
    return digest.hexdigest()


@contextlib.asynccontextmanager
async def disk_view(driver: OpenStackDriver, vm_id: str, timeout_s: float) -> AsyncIterator[DiskRef]:
    """The server's disk as of now: a nova snapshot of it (named ``metavmm-snap-<server>-<random>``), waited
    for until glance has it active (at most ``timeout_s``), downloaded into a staging file; the snapshot image
    and the file are removed afterwards, whatever happened. A snapshot that never gets data (nova's fake virt
    driver uploads none) fails once nova is done with it, saying so, never as a silent empty disk."""
    region, sid = split_region_id(vm_id, driver.regions, driver.name, "disk_view")
    name = f"{SNAPSHOT_PREFIX}{sid}-{uuid.uuid4().hex[:8]}"
    image_id = await driver._sdk(region, "disk_view", lambda c: c.compute.create_server_image(
        sid, name, metadata={"metavmm_snapshot_of": vm_id}).id)
    staged: Path | None = None
    try:
        image = await _wait_active(driver, region, sid, image_id, timeout_s)
        fmt = str(image.disk_format or "")
        if fmt not in SNAPSHOT_FORMATS:
            raise DriverError(f"snapshot {image_id} of server {sid} is {fmt or 'of no format'}; readable: "
                              f"{', '.join(SNAPSHOT_FORMATS)}", provider=driver.name, operation="disk_view")
        staged = state_dir() / "dr-staging" / driver.name / "snapshots" / f"{image_id}.{fmt}"
        staged.parent.mkdir(parents=True, exist_ok=True)
        await driver._sdk(region, "disk_view", lambda c: _download(c, image_id, staged))
        yield DiskRef(str(staged), fmt)
    finally:
        if staged is not None:
            staged.unlink(missing_ok=True)
        with contextlib.suppress(DriverError):
            await driver._sdk(region, "disk_view", lambda c: c.image.delete_image(image_id, ignore_missing=True))


async def _wait_active(driver: OpenStackDriver, region: str, sid: str, image_id: str, timeout_s: float,
                       grace_s: float = SNAPSHOT_GRACE_S) -> Any:
    """The snapshot image once active. A DriverError when glance kills it; when nova has finished the snapshot
    (the server's task state cleared) and the image is still without data ``grace_s`` later (the hypervisor
    uploaded none: nova's fake virt driver never does); or past ``timeout_s``. Failing only once nova is done
    leaves a server a rollback can start again (nova refuses to start one in the middle of a snapshot)."""
    deadline = time.monotonic() + timeout_s
    done_at: float | None = None
    while True:
        image = await driver._sdk(region, "disk_view", lambda c: c.image.get_image(image_id))
        if image.status == "active":
            return image
        if image.status in ("killed", "deleted", "pending_delete"):
            raise DriverError(f"glance {image.status} snapshot {image_id} of server {sid}", provider=driver.name,
                              operation="disk_view")
        server = await driver._sdk(region, "disk_view", lambda c: c.compute.get_server(sid))
        now = time.monotonic()
        done_at = (done_at or now) if not server.task_state else None
        if done_at is not None and now - done_at >= grace_s:
            raise DriverError(f"nova finished the snapshot of server {sid}, and its image {image_id} is still "
                              f"{image.status}: the hypervisor uploaded no data to glance (nova's fake virt driver "
                              "never does), so the server's disk cannot be read", provider=driver.name,
                              operation="disk_view")
        if now >= deadline:
            raise DriverError(f"snapshot {image_id} of server {sid} is still {image.status} after {timeout_s:.0f} s "
                              f"(task state {server.task_state}): the hypervisor uploaded no data to glance in time "
                              "(nova's fake virt driver never does; a real one may need a longer "
                              "snapshot_timeout_s)", provider=driver.name, operation="disk_view")
        await asyncio.sleep(0.5)


def _download(conn: openstack.connection.Connection, image_id: str, dest: Path) -> None:
    """Glance's data of the image into ``dest``, checked against glance's own digest of it."""
    image = conn.image.get_image(image_id)
    algo = str(image.hash_algo or "md5")
    want = str(image.hash_value or image.checksum or "")
    digest = hashlib.new(algo)
    response: Any = conn.image.download_image(image, stream=True)
    try:
        with dest.open("wb") as out:
            for chunk in response.iter_content(chunk_size=READ_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    finally:
        response.close()
    if want and digest.hexdigest() != want:
        dest.unlink(missing_ok=True)
        raise DriverError(f"snapshot {image_id} read back with {algo} {digest.hexdigest()[:16]}, glance has "
                          f"{want[:16]}", operation="disk_view")
