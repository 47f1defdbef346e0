"""Recovery points as qcow2 files in a directory the target boots from (libvirt, sim), and the common part
of the stores that upload each point to a cloud's image service (glance, EBS).

The broker builds a file point straight at its final path, so keeping it is nothing more; a point may be an
overlay over the previous one (``chains``), whose backing file is that point's path. A VM boots a point
through an overlay of its own (the driver's ``create_vm`` with the point as its image), never in place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metavmm.drivers.base import StoredPoint, split_region_id
from metavmm.foundation.paths import state_dir
from metavmm.translators.replica import verify_chain


class FileReplicas:
    """A :class:`~metavmm.drivers.base.ReplicaStore` over ``root/<workload>/<point>.qcow2``."""

    chains = True

    def __init__(self, root: Path) -> None:
        self.root = root

    def build_path(self, workload_id: str, point_id: str) -> Path:
        return self.root / workload_id / f"{point_id}.qcow2"

    async def keep(self, built: Path, *, workload_id: str, point_id: str, region: str,
                   sha256: str) -> StoredPoint:
        return StoredPoint(str(built), built.stat().st_size)

    async def verify(self, location: str, sha256: str | None) -> None:
        await verify_chain([(location, sha256)])

    def boot_image(self, location: str) -> str:
        return location

    async def remove(self, location: str) -> None:
        Path(location).unlink(missing_ok=True)


class UploadedPoints:
    """The part of an uploading store that is the same at every cloud: a point is built full (no chains:
    a cloud boots an image, not an overlay whose backing file is a path) in the broker's staging directory,
    and kept as ``region/image-id``, the image a failover boots."""

    chains = False

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def build_path(self, workload_id: str, point_id: str) -> Path:
        return state_dir() / "dr-staging" / self.driver.name / workload_id / f"{point_id}.qcow2"

    def _split(self, location: str, operation: str) -> tuple[str, str]:
        return split_region_id(location, self.driver.regions, self.driver.name, operation)

    def boot_image(self, location: str) -> str:
        return self._split(location, "replica_boot")[1]
