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
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metavmm.drivers.base import StoredPoint, region_id, split_region_id
from metavmm.foundation.errors import DriverError, TranslationError
from metavmm.foundation.paths import state_dir
from metavmm.foundation.records import DiskRef
from metavmm.translators.digest import file_digests

if TYPE_CHECKING:
    import openstack

    from metavmm.drivers.openstack import OpenStackDriver

NAME_PREFIX = "metavmm-dr-"
READ_CHUNK = 1 << 20


class GlanceReplicas:
    """A :class:`~metavmm.drivers.base.ReplicaStore` of glance images named ``metavmm-dr-<point id>``."""

    chains = False

    def __init__(self, driver: OpenStackDriver) -> None:
        self.driver = driver

    def build_path(self, workload_id: str, point_id: str) -> Path:
        return state_dir() / "dr-staging" / self.driver.name / workload_id / f"{point_id}.qcow2"

    def _split(self, location: str, operation: str) -> tuple[str, str]:
        return split_region_id(location, self.driver.regions, self.driver.name, operation)

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

    def boot_image(self, location: str) -> str:
        return self._split(location, "replica_boot")[1]

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
