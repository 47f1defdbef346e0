"""Step actions that turn a VM's exported disk into a marketplace image of its project (OCCI ``save``).

The exported file goes through the marketplace's publish path like any upload: hashed, inspected as
untrusted input, stored content-addressed, recorded as an ``Image`` (visibility ``project``). The
image name is drawn when the plan is made, so a retried step that finds its own bytes already
published under that name adopts that entry instead of failing.
"""

from __future__ import annotations

from typing import Any

from metavmm.broker.marketplace.entries import ImageMeta
from metavmm.broker.marketplace.publish import current_version, publish
from metavmm.broker.operations.actions import action
from metavmm.broker.operations.context import StepContext
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Project, Workload
from metavmm.errors import Conflict, NotFound


@action("image.publish")
async def publish_disk(ctx: StepContext, *, workload_id: str, name: str, source: str = "exported",
                       **_: Any) -> dict[str, Any]:
    """Publish the disk in ``outputs[source]`` as an image of the workload's project."""
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
            image = await publish(session, meta, disk["path"])
        except Conflict:  # a retried step: the crashed attempt published these bytes under this name
            found = await current_version(session, publisher, name)
            if found is None:
                raise
            image = found
            await ctx.log(f"image {name} was published by an earlier attempt: reused")
        image_id, size = image.id, image.size_bytes
    await ctx.log(f"published {name} as image {image_id} ({size} bytes, sha256 verified)")
    return {"image_id": image_id}
