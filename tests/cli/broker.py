"""A broker's engine for the CLI tests: the CLI only submits operations, so a test that wants them run
starts this beside the command (in the test's event loop), as ``metavmm serve`` or ``metavmm operations
run`` would be in another process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from metavmm.catalog import db
from metavmm.catalog.models import Operation
from metavmm.foundation.config import parse_config
from metavmm.services.operations import store
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.store import Sessions


@asynccontextmanager
async def running_engine(url: str, federation: str) -> AsyncIterator[Engine]:
    """An engine that runs steps (polling every 50 ms) on the catalog at ``url`` until the block ends."""
    sql = db.make_engine(url)
    engine = Engine(db.make_sessionmaker(sql), parse_config(federation), url)
    await engine.start(run_steps=True, poll_s=0.05)
    try:
        yield engine
    finally:
        await engine.stop()
        await sql.dispose()


async def until_ended(sessions: Sessions, op_id: str) -> Operation:
    """The operation once it ended (whatever the state)."""
    op = await store.get(sessions, op_id)
    while op.state not in store.TERMINAL:
        await asyncio.sleep(0.05)
        op = await store.get(sessions, op_id)
    return op


def run_to_end(url: str, federation: str, op_id: str) -> Operation:
    """Run ``op_id`` to its end with a broker's engine started for it (after the command ended)."""

    async def go() -> Operation:
        async with running_engine(url, federation) as engine:
            return await until_ended(engine.sessions, op_id)

    return asyncio.run(go())
