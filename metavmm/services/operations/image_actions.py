"""Step actions on marketplace images: bring one to the site that will run it, fetch one for a local
conversion, or publish a VM's disk.

``image.replicate`` is idempotent by construction: the replicator reuses a replica the catalog tracks
at the site (and whose file is still there), so a retried or resumed step copies nothing twice. It
has no compensation: a replica is a cache that later launches reuse, and expired ones are pruned
(``metavmm marketplace prune``). Access to the image was checked when the request was accepted.

``image.fetch`` copies the published bytes into the operation's scratch directory (checksums
verified), for a create whose guest virt-v2v must fix first: that copy is the operation's own, not a
replica. A copy an earlier attempt finished is reused once its digests match again; its compensation
is ``scratch.clean``.

``image.publish`` (OCCI ``save``) sends an exported disk through the marketplace's publish path like
any upload: hashed, inspected as untrusted input, stored content-addressed, recorded as an ``Image``
(visibility ``project``). The image name is drawn when the plan is made, so a retried step that finds
its own bytes already published under that name adopts that entry instead of failing.
"""

from __future__ import annotations

import asyncio
from typing import Any

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Image, Project, Workload
from metavmm.catalog.spend import Charge, charge_workload
from metavmm.foundation.errors import ChecksumMismatch, Conflict, NotFound
from metavmm.services import metrics
from metavmm.services.marketplace.entries import Audience, ImageMeta, state_of
from metavmm.services.marketplace.publish import current_version, publish
from metavmm.services.marketplace.replication import Replicator
from metavmm.services.marketplace.stream import Expected, hash_file, stream_to_file
from metavmm.services.operations.actions import action
from metavmm.services.operations.context import StepContext, tracked
from metavmm.translators.ova import OvaLimits

_copying: dict[tuple[str, str], asyncio.Lock] = {}
"""One copy at a time per (image, site) in this process: a second operation waits, then reuses it."""


@action("image.replicate")
async def replicate(ctx: StepContext, *, image_id: str, site: str, save_as: str = "replica_image",
                    format: str | None = None, workload_id: str | None = None, charge: dict[str, Any] | None = None,
                    **_: Any) -> dict[str, Any]:
    """Copy (or reuse) the image's replica at ``site``, in ``format`` when the plan chose one (the image
    route's boot format); later steps boot it from ``outputs[save_as]``. A copy made (not reused) for a
    create whose route paid egress writes that ``charge`` on ``workload_id``'s project in the spend ledger
    (once per step; a copy a crash interrupted and a retry reuses is not charged twice, nor at all)."""
    await ctx.progress(0.0, force=True)
    async with _copying.setdefault((image_id, site), asyncio.Lock()):
        result = await Replicator(ctx.sessions, ctx.config).replicate(image_id, site, audience=Audience(admin=True),
                                                                      fmt=format)
    if result.reused:
        await ctx.log(f"replica at {site} reused: {result.replica.provider_image_id}")
    else:
        await ctx.log(f"replicated to {site} as {result.replica.format} in {result.seconds:.1f}s "
                      f"({result.mib_per_s:.0f} MiB/s)")
    for note in result.notes:
        await ctx.log(note)
    what = Charge.from_params(charge or {})
    if what is not None and workload_id and not result.reused:
        async with session_scope(ctx.sessions) as session:
            if await charge_workload(session, workload_id, what, ref=f"{ctx.operation_id}/{ctx.step_name}"):
                await ctx.log(f"egress {what.amount.normalize():f} {what.currency or ''} for "
                              f"{what.gib.normalize() if what.gib is not None else '?'} GiB charged to the project")
    return {save_as: result.replica.provider_image_id, "replica_reused": result.reused,
            "replica_format": result.replica.format, "replica_notes": list(result.notes)}


@action("image.fetch")
async def fetch(ctx: StepContext, *, image_id: str, save_as: str = "fetched", **_: Any) -> dict[str, Any]:
    """Copy the image's published disk into the operation's scratch directory, its checksums verified."""
    async with ctx.sessions() as session:
        image = await session.get(Image, image_id)
    if image is None:
        raise NotFound(f"no image {image_id}")
    if not image.location:
        raise NotFound(f"image {image.name} has no published disk to fetch")
    if state_of(image) == "expired":
        raise Conflict(f"image {image.name} v{image.version} expired: it can no longer be used")
    expected = Expected(sha256=image.sha256, sha512=image.sha512, size_bytes=image.size_bytes or None)
    dest = ctx.work_dir / f"image-{image.id[:8]}.{image.format}"
    what = f"image {image.name}"
    if dest.is_file():
        try:
            await hash_file(dest, expected=expected, what=what)
            await ctx.log(f"fetched by an earlier attempt: {dest.name} reused")
            return {save_as: {"path": str(dest), "format": image.format}}
        except ChecksumMismatch:
            dest.unlink(missing_ok=True)
    size = image.size_bytes or 0
    done: list[float] = []
    digests = await tracked(ctx, stream_to_file(image.location, dest, expected=expected, what=what,
                                                progress=lambda n: done.append(n / size if size else 0.0)), done)
    metrics.data_moved("image_fetch", digests.size_bytes)
    await ctx.log(f"fetched {image.name} ({digests.size_bytes} bytes, {digests.mib_per_s:.0f} MiB/s, "
                  "SHA-256 and SHA-512 verified)")
    return {save_as: {"path": str(dest), "format": image.format}}


@action("image.publish")
async def publish_disk(ctx: StepContext, *, workload_id: str, name: str, source: str = "exported",
                       image_id: str | None = None, **_: Any) -> dict[str, Any]:
    """Publish the disk in ``outputs[source]`` as an image of the workload's project, with the id the plan
    drew (``image_id``: the save's answer already named the os_tpl made from it)."""
    disk = ctx.outputs[source]
    async with session_scope(ctx.sessions) as session:
        workload = await session.get(Workload, workload_id)
        if workload is None:
            raise NotFound(f"no workload {workload_id}")
        project = await session.get(Project, workload.project_id) if workload.project_id else None
        publisher = project.name if project else "broker"
        meta = ImageMeta(name=name, publisher=publisher, format=disk["format"], visibility="project",
                         project_id=workload.project_id, arch="x86_64",
                         description=f"saved from compute {workload.name} ({workload_id})")
        try:
            image = await publish(session, meta, disk["path"], image_id=image_id,
                                  limits=OvaLimits.from_config(ctx.config.limits))
        except Conflict:  # a retried step: the crashed attempt published these bytes under this name
            found = await current_version(session, publisher, name)
            if found is None:
                raise
            image = found
            await ctx.log(f"image {name} was published by an earlier attempt: reused")
        image_id, size = image.id, image.size_bytes
    await ctx.log(f"published {name} as image {image_id} ({size} bytes, sha256 verified)")
    return {"image_id": image_id}
