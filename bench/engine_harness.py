"""What the operations benchmarks share: a catalog with an engine whose executor serves it, waiting for
an operation to succeed, one line of timings, and stopping the helper processes a benchmark started."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from metavmm.catalog import db
from metavmm.catalog.models import Operation, OperationState
from metavmm.foundation.config import FederationConfig
from metavmm.services.operations import store
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.executor import Executor


@asynccontextmanager
async def serving_engine(config: FederationConfig, url: str) -> AsyncIterator[Engine]:
    """A migrated catalog at ``url`` and an engine whose in-process executor polls it every 50 ms."""
    await db.upgrade_async(url)
    sql = db.make_engine(url)
    engine = Engine(db.make_sessionmaker(sql), config, url)
    executor = Executor(engine.sessions, config)
    serving = asyncio.create_task(executor.serve(poll_s=0.05))
    engine.executor = executor
    try:
        yield engine
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        await sql.dispose()


async def until_succeeded(engine: Engine, op_id: str) -> Operation:
    """Poll the row every 20 ms until the operation ends; it must have succeeded."""
    while (op := await store.get(engine.sessions, op_id)).state not in store.TERMINAL:
        await asyncio.sleep(0.02)
    assert op.state == OperationState.SUCCEEDED, op.error
    return op


def median_row(label: str, xs: list[float], width: int = 48) -> str:
    return f"{label:<{width}} {statistics.median(xs):7.2f} s  (min {min(xs):.2f}, max {max(xs):.2f}, n={len(xs)})"


def stop_processes(procs: Iterable[subprocess.Popen[Any]], timeout_s: float) -> None:
    """SIGTERM every process, then wait for each; one that outlives ``timeout_s`` is killed."""
    procs = list(procs)
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
