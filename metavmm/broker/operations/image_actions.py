"""The marketplace's replication as a step action: bring an image to the site that will run it.

``image.replicate`` is idempotent by construction: the replicator reuses a replica the catalog tracks
at the site (and whose file is still there), so a retried or resumed step copies nothing twice. It
has no compensation: a replica is a cache that later launches reuse, and expired ones are pruned
(``metavmm marketplace prune``). Access to the image was checked when the request was accepted.
"""

from __future__ import annotations

import asyncio
from typing import Any

from metavmm.broker.marketplace.entries import Audience
from metavmm.broker.marketplace.replication import Replicator
from metavmm.broker.operations.actions import action
from metavmm.broker.operations.context import StepContext

_copying: dict[tuple[str, str], asyncio.Lock] = {}
"""One copy at a time per (image, site) in this process: a second operation waits, then reuses it."""


@action("image.replicate")
async def replicate(ctx: StepContext, *, image_id: str, site: str, save_as: str = "replica_image",
                    **_: Any) -> dict[str, Any]:
    """Copy (or reuse) the image's replica at ``site``; later steps boot it from ``outputs[save_as]``."""
    await ctx.progress(0.0, force=True)
    async with _copying.setdefault((image_id, site), asyncio.Lock()):
        result = await Replicator(ctx.sessions, ctx.config).replicate(image_id, site, audience=Audience(admin=True))
    if result.reused:
        await ctx.log(f"replica at {site} reused: {result.replica.provider_image_id}")
    else:
        await ctx.log(f"replicated to {site} as {result.replica.format} in {result.seconds:.1f}s "
                      f"({result.mib_per_s:.0f} MiB/s)")
    for note in result.notes:
        await ctx.log(note)
    return {save_as: result.replica.provider_image_id, "replica_reused": result.reused,
            "replica_format": result.replica.format, "replica_notes": list(result.notes)}
