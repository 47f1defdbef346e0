"""Recovery points in an AWS region, as private AMIs over EBS snapshots that a failover boots an instance from.

A point is built as a full qcow2 file in a staging directory of the broker (the protocol's one build
format), converted to a sparse raw file beside it, and written into a new EBS snapshot block by block
through the driver's ``import_image`` (aws_ebs: only non-zero blocks go out, each checked by AWS against
its SHA-256), registered as the AMI ``metavmm-dr-<point id>``. The AMI is tagged with the point's SHA-256
(of the qcow2 the broker built and records) and the raw disk's SHA-256 and size: a failover's
verification reads the snapshot back through EBS, hashes the disk it holds, and requires both to match,
so what boots is what was replicated. Only then are the staging files removed.

Points never chain: an AMI boots a snapshot, not an overlay whose backing file is a path. (EBS snapshots
can be incremental with ``ParentSnapshotId``; moto, which the tests run against, ignores it, so that
saving could not be tested here and is not used.)
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metavmm.drivers import aws_ebs
from metavmm.drivers.base import StoredPoint, region_id
from metavmm.drivers.replica_files import UploadedPoints
from metavmm.foundation.errors import DriverError, ProviderConflict, ProviderNotFound, TranslationError
from metavmm.foundation.records import DiskRef
from metavmm.translators.disk import convert

if TYPE_CHECKING:
    from metavmm.drivers.aws import AwsDriver

NAME_PREFIX = "metavmm-dr-"
POINT_TAG = "metavmm:point-sha256"  # the qcow2 point as the broker built and recorded it
DISK_TAG = "metavmm:disk-sha256"  # the raw disk the snapshot holds
SIZE_TAG = "metavmm:disk-bytes"


class EbsReplicas(UploadedPoints):
    """A :class:`~metavmm.drivers.base.ReplicaStore` of AMIs named ``metavmm-dr-<point id>``."""

    driver: AwsDriver

    async def keep(self, built: Path, *, workload_id: str, point_id: str, region: str,
                   sha256: str) -> StoredPoint:
        """Convert the built point to raw, write it into a snapshot registered as the point's AMI and tag
        the AMI with both digests. A retried step whose AMI is there already (the crash came after the
        import) re-reads and re-tags it."""
        raw = built.with_suffix(".raw")
        name = NAME_PREFIX + point_id
        try:
            converted = await convert(DiskRef(str(built), "qcow2"), "raw", raw, trusted=True, overwrite=True,
                                      source_sha256=sha256)
            size = raw.stat().st_size
            try:
                image = await self.driver.import_image(DiskRef(str(raw), "raw"), name, region)
                ami, data_bytes = image.provider_image_id, int(image.extra.get("data_bytes", 0))
            except ProviderConflict:  # imported by the crashed attempt: the same point, the same bytes
                found = await self.driver._own_image(region, name, "replica_keep")
                if found is None:
                    raise
                ami, data_bytes = found["ImageId"], size
            await self.driver._ec2(region, "replica_keep", "create_tags", Resources=[ami], Tags=[
                {"Key": POINT_TAG, "Value": sha256}, {"Key": DISK_TAG, "Value": converted.sha256 or ""},
                {"Key": SIZE_TAG, "Value": str(size)}])
        finally:
            raw.unlink(missing_ok=True)
        built.unlink(missing_ok=True)
        return StoredPoint(region_id(region, ami), data_bytes)

    async def _image(self, region: str, ami: str, operation: str) -> dict[str, Any] | None:
        try:
            got = await self.driver._ec2(region, operation, "describe_images", ImageIds=[ami])
        except ProviderNotFound:
            return None
        return next(iter(got.get("Images", [])), None)

    async def verify(self, location: str, sha256: str | None) -> None:
        """The AMI must be there, tagged with ``sha256``, and the disk its snapshot holds (read back through
        EBS) must hash to the digest recorded when it was written."""
        region, ami = self._split(location, "replica_verify")
        image = await self._image(region, ami, "replica_verify")
        if image is None or image.get("State", "available") != "available":
            raise DriverError(f"recovery point AMI {ami} at {region} is "
                              f"{'gone' if image is None else image.get('State')}", provider=self.driver.name,
                              operation="replica_verify")
        tags = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
        if sha256 and tags.get(POINT_TAG) != sha256:
            raise TranslationError(f"recovery point AMI {ami} at {region} is not the point replicated "
                                   "(its SHA-256 tag differs)")
        snapshot = tags.get("metavmm:snapshot")
        if not snapshot or not tags.get(DISK_TAG) or not tags.get(SIZE_TAG, "").isdigit():
            raise TranslationError(f"recovery point AMI {ami} at {region} lacks the tags its check needs")
        found = await self.driver.provider_call("replica_verify", aws_ebs.hash_snapshot,
                                                self.driver._client(region, "ebs"), snapshot, int(tags[SIZE_TAG]))
        if found != tags[DISK_TAG]:
            raise TranslationError(f"the snapshot {snapshot} behind recovery point AMI {ami} changed since it was "
                                   "replicated (SHA-256 differs)")

    async def remove(self, location: str) -> None:
        region, ami = self._split(location, "replica_remove")
        image = await self._image(region, ami, "replica_remove")
        if image is not None:
            with contextlib.suppress(ProviderNotFound):
                await self.driver.ex_drop_image(region, image)
