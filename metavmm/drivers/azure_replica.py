"""Recovery points in an Azure location, as managed images a failover creates the VM from, each beside a
managed snapshot of the same bytes that a verification reads back.

A point is built as a full qcow2 file in a staging directory of the broker (the protocol's one build
format), converted to a fixed, MiB-aligned VHD beside it (``vpc:azure``, what Azure boots; a disk under Azure's
smallest upload, 20 MiB, is grown to it on the way, the tail reading as zeros) and sent through
the driver's import path (``ex_upload_disk``: an empty managed disk with ``createOption: Upload``, a Write
SAS, the pages that hold data, access revoked). From that upload disk the store makes the snapshot
``metavmm-dr-<point id>`` (``createOption: Copy``), tagged with the point's SHA-256 (of the qcow2 the broker
built and records) and the VHD's SHA-256 and length, then the image ``metavmm-dr-<point id>`` from the
snapshot (Azure copies the bytes into the image); the upload disk and the staging files go.

A failover's verification requires the image (provisioned, made from that snapshot) and reads the snapshot
back through a Read SAS, hashing the VHD it holds: a snapshot whose tags or bytes differ from what was
replicated is refused. A managed image cannot be read (Azure grants access to disks and snapshots only), so
what is read is the snapshot the image was made from; both are written once and never changed by the broker.

Points never chain: an image boots whole. A step retried after a crash first removes what the crashed attempt
may have made under the point's names (image, snapshot, upload disk), so a retry never finds a half point.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from azure.mgmt.compute import models as cm

from metavmm.drivers.azure import COMPUTE_API, DISK_API, AzureDriver
from metavmm.drivers.base import StoredPoint, region_id
from metavmm.drivers.replica_files import UploadedPoints
from metavmm.foundation.errors import DriverError, ProviderNotFound, TranslationError
from metavmm.foundation.records import DiskRef
from metavmm.translators.disk import convert
from metavmm.translators.replica import at_least

NAME_PREFIX = "metavmm-dr-"
POINT_TAG = "metavmm:point-sha256"  # the qcow2 point as the broker built and recorded it
VHD_TAG = "metavmm:vhd-sha256"  # the fixed VHD the snapshot (and the image) hold
SIZE_TAG = "metavmm:vhd-bytes"
UPLOAD_MIN_BYTES = 20 << 20  # Azure's smallest upload disk (20 MiB of data): a smaller point is grown to it


class AzureReplicas(UploadedPoints):
    """A :class:`~metavmm.drivers.base.ReplicaStore` of images and snapshots named ``metavmm-dr-<point id>``."""

    driver: AzureDriver

    def _split(self, location: str, operation: str) -> tuple[str, str]:
        return self.driver._split(location, operation)  # Azure's sites are locations

    def _ids(self, name: str) -> tuple[str, str]:
        """(the snapshot's, the image's) resource ids."""
        base = (f"/subscriptions/{self.driver.subscription_id}/resourceGroups/{self.driver.resource_group}/"
                "providers/Microsoft.Compute")
        return f"{base}/snapshots/{name}", f"{base}/images/{name}"

    async def _drop(self, name: str, operation: str) -> None:
        """Delete the point's image, snapshot and (a killed upload's) upload disk, with any SAS a killed broker
        left on them; gone is fine."""
        with contextlib.suppress(ProviderNotFound):
            await self.driver._wait(operation, self.driver._compute.images.begin_delete, self.driver.resource_group,
                                    name, api_version=COMPUTE_API)
        await self.driver.ex_drop_blob(operation, "snapshots", name)
        await self.driver.ex_drop_blob(operation, "disks", f"{name}-upload")

    async def keep(self, built: Path, *, workload_id: str, point_id: str, region: str,
                   sha256: str) -> StoredPoint:
        """Convert the built point to a fixed VHD, upload it, snapshot the upload disk (tagged with both digests)
        and make the point's image from the snapshot. Any failure removes what this attempt made."""
        name = NAME_PREFIX + point_id
        vhd, grown = built.with_suffix(".vhd"), built.with_suffix(".grown.qcow2")
        drv = self.driver
        await self._drop(name, "replica_keep")  # a crashed attempt's leftovers: a retry starts clean
        try:
            disk = await at_least(DiskRef(str(built), "qcow2"), UPLOAD_MIN_BYTES, grown)
            converted = await convert(disk, "vpc:azure", vhd, trusted=True, overwrite=True,
                                      source_sha256=sha256 if disk.path == str(built) else None)
            size = vhd.stat().st_size
            tags = {POINT_TAG: sha256, VHD_TAG: converted.sha256 or "", SIZE_TAG: str(size)}
            upload, _, sent = await drv.ex_upload_disk(DiskRef(str(vhd), "vpc"), name, region, "replica_keep")
            try:
                snapshot_id, _ = self._ids(name)
                copy = cm.CreationData(create_option="Copy", source_resource_id=drv._disk_id(upload))
                await drv._wait("replica_keep", drv._compute.snapshots.begin_create_or_update, drv.resource_group,
                                name, cm.Snapshot(location=region, tags=drv._tags(name, None) | tags,
                                                  creation_data=copy), api_version=DISK_API)
                await drv.ex_image_from(snapshot_id, name, region, "replica_keep", tags)
            finally:
                await drv._wait("replica_keep", drv._compute.disks.begin_delete, drv.resource_group, upload,
                                api_version=DISK_API)
        except BaseException:
            with contextlib.suppress(DriverError):
                await self._drop(name, "replica_keep")
            raise
        finally:
            vhd.unlink(missing_ok=True)
            grown.unlink(missing_ok=True)
        built.unlink(missing_ok=True)
        return StoredPoint(region_id(region, name), sent)

    async def _get(self, collection: str, name: str, operation: str) -> Any:
        api = COMPUTE_API if collection == "images" else DISK_API
        try:
            return await self.driver._call(operation, getattr(self.driver._compute, collection).get,
                                           self.driver.resource_group, name, api_version=api)
        except ProviderNotFound:
            return None

    async def verify(self, location: str, sha256: str | None) -> None:
        """The image must be provisioned from the point's snapshot, the snapshot tagged with ``sha256``, and the
        VHD the snapshot holds (read back through a Read SAS) must hash to the digest recorded at upload."""
        region, name = self._split(location, "replica_verify")
        snapshot_id, _ = self._ids(name)
        image = await self._get("images", name, "replica_verify")
        state = None if image is None else image.provisioning_state
        if state != "Succeeded":
            raise DriverError(f"recovery point image {name} at {region} is {state or 'gone'}",
                              provider=self.driver.name, operation="replica_verify")
        os_disk = image.storage_profile.os_disk
        source = (os_disk.snapshot or os_disk.managed_disk)
        if source is None or str(source.id).lower() != snapshot_id.lower():
            raise TranslationError(f"recovery point image {name} at {region} was not made from its snapshot")
        snapshot = await self._get("snapshots", name, "replica_verify")
        if snapshot is None:
            raise DriverError(f"the snapshot of recovery point {name} at {region} is gone", provider=self.driver.name,
                              operation="replica_verify")
        tags = dict(snapshot.tags or {})
        if sha256 and tags.get(POINT_TAG) != sha256:
            raise TranslationError(f"recovery point {name} at {region} is not the point replicated "
                                   "(its SHA-256 tag differs)")
        if not tags.get(VHD_TAG) or not tags.get(SIZE_TAG, "").isdigit():
            raise TranslationError(f"recovery point {name} at {region} lacks the tags its check needs")
        size = int(tags[SIZE_TAG])
        found = await self.driver._with_access("replica_verify", "snapshots", name, "Read",
                                               lambda sas: self.driver._hash_blob("replica_verify", sas, size))
        if found != tags[VHD_TAG]:
            raise TranslationError(f"the snapshot behind recovery point {name} at {region} changed since it was "
                                   "replicated (SHA-256 differs)")

    def boot_image(self, location: str) -> str:
        """The image's resource id: what ``create_vm`` takes."""
        return self._ids(self._split(location, "replica_boot")[1])[1]

    async def remove(self, location: str) -> None:
        await self._drop(self._split(location, "replica_remove")[1], "replica_remove")
