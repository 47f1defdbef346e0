"""The broker's replication scheduler: every ``poll_s`` it submits a ``replicate`` operation for each
workload whose interval has passed since its last recovery point (one at a time per workload: a workload
with a DR operation still running is skipped until it ends). Like the inventory sync it ends at its next
safe point once the engine is stopping."""

from __future__ import annotations

import logging

from metavmm.catalog.models import Operation
from metavmm.foundation.aio import repeat
from metavmm.foundation.errors import MetavmmError
from metavmm.services.operations.engine import Engine
from metavmm.services.protection import dr

log = logging.getLogger(__name__)

POLL_S = 10.0


async def replicate_due(engine: Engine) -> list[Operation]:
    """One round: submit the replications that are due; a refused one is logged and tried next round."""
    submitted = []
    for workload_id in await dr.due(engine.sessions):
        try:
            submitted.append(await dr.replicate(engine, None, workload_id))
        except MetavmmError as exc:
            log.warning("replication of %s not submitted: %s", workload_id, exc)
    return submitted


async def serve(engine: Engine, poll_s: float = POLL_S) -> None:
    await repeat(engine.stopping, poll_s, lambda: replicate_due(engine), "the replication round", log)
