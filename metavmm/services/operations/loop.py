"""The engine inside ``metavmm serve``: start it (and the reconciliation loop) with the app, stop on SIGTERM.

The reconciliation loop ends at its next pass once the engine is stopping (``engine.stopping``); a pass
still running after the stop grace is cancelled (it is read-mostly and repeated next time)."""

from __future__ import annotations

import asyncio
import logging

from metavmm.foundation.aio import wait_event
from metavmm.foundation.config import FederationConfig
from metavmm.services.operations.context import Drivers
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.executor import CLOSE_S
from metavmm.services.operations.reconcile import reconcile
from metavmm.services.operations.store import Sessions

log = logging.getLogger(__name__)


async def _reconcile_forever(engine: Engine, interval_s: int) -> None:
    # the in-process executor's drivers: a sim provider keeps its VMs in the driver object
    own = engine.executor is None
    drivers = Drivers(engine.config) if own else engine.executor.drivers  # type: ignore[union-attr]
    try:
        while not await wait_event(engine.stopping, interval_s):
            try:
                await reconcile(engine, drivers)
            except Exception:
                log.exception("reconciliation failed; next try in %d s", interval_s)
    finally:
        if own:
            try:
                async with asyncio.timeout(CLOSE_S):
                    await drivers.close()
            except TimeoutError:
                log.warning("closing the reconciliation's drivers took over %.1f s; not waited for", CLOSE_S)


async def start_operations(sessions: Sessions, config: FederationConfig, database_url: str,
                           tasks: list[asyncio.Task[None]]) -> Engine:
    """Start the engine; in-process mode resumes operations a killed broker left behind."""
    engine = Engine(sessions, config, database_url)
    await engine.start()
    if config.operations.reconcile_interval_s > 0:
        tasks.append(asyncio.create_task(_reconcile_forever(engine, config.operations.reconcile_interval_s),
                                         name="reconciliation"))
    return engine
