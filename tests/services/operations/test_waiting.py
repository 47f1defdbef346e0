"""Waiting steps hold no executor slot: batches whose parents wait on children finish with any number of
slots (the parents used to sit in every slot while their children could not start), on SQLite and
PostgreSQL, on the sim; a waiting parent is cancelled at once and resumes after a crash."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from bench import direct
from metavmm.catalog.models import Operation, OperationState
from metavmm.foundation.config import parse_config
from metavmm.services.operations import store
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.executor import Executor
from metavmm.services.operations.plan import Step
from metavmm.services.sync import sync_all
from tests.polling import WAIT_S

CONFIG = """
providers:
  - {{kind: sim, name: sima, site_count: 1, hosts_per_site: 4}}
operations: {{retry_base_s: 0.01, reconcile_interval_s: 0, lease_s: 2, concurrency: {slots}}}
"""


def batch_steps(child_ids: list[str]) -> list[Step]:
    """A parent as migrations.execute_plan writes it: one ``operation.wait`` per child, then the check."""
    steps = [Step(f"wait-{i}", "operation.wait", {"operation_id": cid, "operation_ids": child_ids},
                  compensate="batch.cancel") for i, cid in enumerate(child_ids)]
    return [*steps, Step("check", "batch.check", {"operation_ids": child_ids})]


async def until_ended(sessions, ids: list[str], timeout_s: float) -> list[Operation]:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        ops = [await store.get(sessions, i) for i in ids]
        if all(o.state in store.TERMINAL for o in ops) or loop.time() > deadline:
            return ops
        await asyncio.sleep(0.1)


async def idle_engine(sessions, slots: int) -> Engine:  # type: ignore[no-untyped-def]
    """An engine that accepts work but runs nothing until :meth:`Engine.start`."""
    config = parse_config(CONFIG.format(slots=slots))
    await sync_all(sessions, config)
    return Engine(sessions, config, "unused://")


@contextlib.asynccontextmanager
async def serving(engine: Engine):  # type: ignore[no-untyped-def]
    await engine.start()  # the in-process executor with its configured slots
    try:
        yield engine
    finally:
        await engine.stop()


@pytest.mark.parametrize("slots", [1, 2])
async def test_concurrent_batches_finish_with_fewer_slots_than_parents(sessions, slots: int) -> None:
    engine = await idle_engine(sessions, slots)
    children: list[list[str]] = []
    for b in range(3):
        ops = [await direct.provision(engine, name=f"b{b}-vm{i}", provider="sima", region="sim-000",
                                     image="img", host=f"sim-000-h0000{i}") for i in range(2)]
        ids = [o.id for o in ops]
        for cid in ids:  # held by a broker that then died: the parents are claimed before them
            assert await store.claim(sessions, cid, "dead-broker", lease_s=1.0)
        children.append(ids)
    parents = [(await engine.submit(kind="migrate_batch", steps=batch_steps(ids))).id for ids in children]
    async with serving(engine):
        ended = await until_ended(sessions, parents + [c for ids in children for c in ids], timeout_s=WAIT_S)
        assert [o.state for o in ended] == [OperationState.SUCCEEDED] * 9, [(o.kind, o.state, o.message)
                                                                              for o in ended]
        assert len(await engine.executor.drivers.get("sima").list_vms()) == 6  # type: ignore[union-attr]
        parent = await store.get(sessions, parents[0])
        assert parent.steps[0]["attempts"] == 1 and parent.steps[0]["checks"] >= 1  # re-checks are no attempts
        events = [e.message for e in await store.events(sessions, parents[0])]
        assert sum("parked" in m for m in events) <= 2  # one line per waiting step, not one per check


async def test_a_parked_parent_is_cancelled_at_once_with_its_children(sessions) -> None:
    engine = await idle_engine(sessions, 2)
    child = await direct.provision(engine, name="slow", provider="sima", region="sim-000", image="img",
                                  host="sim-000-h00000")
    assert await store.claim(sessions, child.id, "dead-broker", lease_s=30)  # stays active meanwhile
    parent = await engine.submit(kind="migrate_batch", steps=batch_steps([child.id]))
    async with serving(engine):
        while (await store.get(sessions, parent.id)).not_before is None:
            await asyncio.sleep(0.05)
        await engine.cancel(parent.id)
        (done,) = await until_ended(sessions, [parent.id], timeout_s=WAIT_S)
        assert done.state == OperationState.CANCELLED
        assert (await store.get(sessions, child.id)).cancel_requested


async def test_a_parent_killed_while_parked_resumes_in_another_executor(sessions) -> None:
    engine = await idle_engine(sessions, 1)
    config = engine.config
    child = await direct.provision(engine, name="later", provider="sima", region="sim-000", image="img",
                                  host="sim-000-h00000")
    parent = await engine.submit(kind="migrate_batch", steps=batch_steps([child.id]))
    first = Executor(sessions, config)
    assert await first.run(parent.id)  # one check, then parked: the run returns and the slot is free
    parked = await store.get(sessions, parent.id)
    assert parked.state == OperationState.RUNNING and parked.owner is None and parked.not_before is not None
    await first.drivers.close()  # that broker is gone
    second = Executor(sessions, config)
    try:
        assert await second.run(child.id)
        await asyncio.sleep(0.3)  # the parent's check time passes
        assert parked.id in await store.runnable_ids(sessions, 10)
        assert await second.run(parent.id)
    finally:
        await second.drivers.close()
    done = await store.get(sessions, parent.id)
    assert done.state == OperationState.SUCCEEDED and done.outputs == {f"child:{child.id}": "succeeded",
                                                                      "succeeded": 1}


@pytest.fixture
def pg_url(postgres_server: str) -> str:
    from tests.conftest import _fresh_postgres_db

    return _fresh_postgres_db(postgres_server)


async def test_batches_finish_on_one_procrastinate_worker_slot(pg_url: str) -> None:
    """The workers' path: a parked parent ends its job and defers the next one with ``schedule_at``."""
    from metavmm.catalog import db
    from metavmm.services.operations import queue

    await db.upgrade_async(pg_url)
    sql = db.make_engine(pg_url)
    sessions = db.make_sessionmaker(sql)
    config = parse_config(CONFIG.format(slots=1).replace("concurrency: 1", "concurrency: 1, executor: procrastinate"))
    await sync_all(sessions, config)
    engine = Engine(sessions, config, pg_url)
    await engine.start()  # procrastinate mode: the broker only writes rows and defers jobs
    worker: asyncio.Task[None] | None = None
    try:
        children = [(await direct.provision(engine, name=f"w{i}", provider="sima", region="sim-000", image="img",
                                           host=f"sim-000-h0000{i}")).id for i in range(4)]
        for cid in children:
            await store.claim(sessions, cid, "dead-broker", lease_s=1.0)
        parents = [(await engine.submit(kind="migrate_batch", steps=batch_steps(children[i:i + 2]))).id
                   for i in (0, 2)]
        executor = Executor(sessions, config)
        worker = asyncio.create_task(queue.run_worker(engine._queue_app, executor, concurrency=1,
                                                      sweep_interval_s=0.5, install_signal_handlers=False))
        ended = await until_ended(sessions, parents + children, timeout_s=WAIT_S)
        assert [o.state for o in ended] == [OperationState.SUCCEEDED] * 6, [(o.kind, o.state, o.message)
                                                                              for o in ended]
    finally:
        if worker is not None:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
        await engine.stop()
        await sql.dispose()
