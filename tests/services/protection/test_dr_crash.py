"""Issue 16: a broker killed (SIGKILL, crash_runner.py) during a planned failover on two simulated providers
never leaves the catalog showing the workload at the DR site with replication still aimed at it.

The plan's commit records the workload where its replica runs and turns replication round (towards where it
came from) in one transaction (``dr.record``); before, ``workload.record`` and ``dr.switch`` were two steps,
and a kill between them left the workload failed over with ``replica_target`` naming the site it runs at
until a resume. Right after each kill: either the workload is still at home with replication aimed at the
DR site, or it is at the DR site with replication aimed home. Then a fresh executor finishes the failover:
one VM, at the DR site, replication aimed home.

Every run: the kill right after the commit step returned. ``METAVMM_SLOW=1``: after every step. A plan in
the old shape (written by a broker before the change, in flight across the upgrade) is still finished by
the resume: the second test (it guards the kept ``dr.switch``; it passes on the old code too).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from bench import direct
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Operation, OperationState, Project, Protection, Provider, Workload
from metavmm.drivers.sim import SimDriver
from metavmm.services.operations import store
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.executor import Executor
from metavmm.services.protection import dr
from tests.polling import polls
from tests.services.operations.crash_runner import crash_at
from tests.services.protection.conftest import engine_for, run

FEDERATION = """
federation: {sync_interval_s: 0}
operations: {reconcile_interval_s: 0, retry_base_s: 0.01, lease_s: 1}
providers:
  - {kind: sim, name: sima, sites: [{region: r1}]}
  - {kind: sim, name: simb, sites: [{region: r2}]}
"""
HOME, DR_SITE = ("sima", "sima/r1"), ("simb", "simb/r2")


async def where(engine: Engine, wid: str) -> tuple[str, str | None]:
    """(the provider the catalog records the workload at, where its replication is aimed)."""
    async with engine.sessions() as session:
        w = await session.get(Workload, wid)
        policy = await session.get(Protection, wid)
        assert w is not None and w.provider_id is not None and policy is not None
        provider = await session.get(Provider, w.provider_id)
        assert provider is not None
        return provider.name, policy.replica_target


async def protected_workload(engine: Engine, name: str) -> str:
    """A running sim workload at home, replicated once to the DR site."""
    async with session_scope(engine.sessions) as s:
        project = Project(name=f"p-{name}")
        s.add(project)
    done = await run(engine, await direct.provision(engine, name=name, provider="sima", region="r1", image="img",
                                                   project_id=project.id))
    assert done.state == OperationState.SUCCEEDED and done.target_id is not None, done.error
    await dr.set_replication(engine.sessions, engine.config, None, done.target_id, target="simb", interval_s=None)
    assert (await run(engine, await dr.replicate(engine, None, done.target_id))).state == OperationState.SUCCEEDED
    return done.target_id


async def resume(engine: Engine, op_id: str) -> Operation:
    """A restarted broker's executor runs the operation to its end (once the dead one's lease ran out)."""
    executor = Executor(engine.sessions, engine.config)
    try:
        for _ in polls():
            if await executor.run(op_id):
                break
            await asyncio.sleep(0.2)
    finally:
        await executor.drivers.close()
    return await store.get(engine.sessions, op_id)


async def test_a_failover_killed_at_its_steps_never_shows_replication_aimed_where_it_runs(tmp_path: Path) -> None:
    config_path = tmp_path / "federation.yaml"
    config_path.write_text(FEDERATION)
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    async with engine_for(FEDERATION, tmp_path) as engine:
        wid = await protected_workload(engine, "vm")
        op = await dr.failover(engine, None, wid)
        commit = next(i for i, s in enumerate(op.steps) if s.get("commit"))
        steps = range(len(op.steps)) if os.environ.get("METAVMM_SLOW") == "1" else (commit,)
        seen: dict[int, tuple[str, str | None]] = {}
        for n, step in enumerate(steps):
            if n:
                wid = await protected_workload(engine, f"vm{step}")
                op = await dr.failover(engine, None, wid)
            reached = crash_at(config_path, url, op.id, step, "after")
            seen[step] = await where(engine, wid)
            assert seen[step] in ((HOME[0], DR_SITE[1]), (DR_SITE[0], HOME[1])), \
                f"killed after step {step} ({op.steps[step]['name']}, {reached}): at {seen[step][0]}, " \
                f"replication aimed at {seen[step][1]}"
            done = await resume(engine, op.id)
            assert done.state == OperationState.SUCCEEDED, (step, done.error)
            assert await where(engine, wid) == (DR_SITE[0], HOME[1])
            async with engine.sessions() as session:
                row = await session.get(Workload, wid)
            assert row is not None
            at_home = [v for v in await SimDriver(engine.config.provider("sima")).list_vms() if v.workload_id == wid]
            at_dr = [v for v in await SimDriver(engine.config.provider("simb")).list_vms() if v.workload_id == wid]
            assert (at_home, [v.provider_vm_id for v in at_dr]) == ([], [row.provider_resource_id]), step
        print(f"DR failover: {len(op.steps)} steps, killed after {sorted(seen)}")
        if commit in seen:  # the kill right after the commit: everything of it is there
            assert seen[commit] == (DR_SITE[0], HOME[1])


async def test_a_plan_from_before_is_finished_by_the_resume(tmp_path: Path) -> None:
    """A failover a broker submitted before record and switch became one step (``workload.record``, then
    ``dr.switch``), killed between the two: the gap shows until the engine's resume runs the switch (the
    recovery rule of such plans); then the workload is at the DR site with replication aimed home."""
    config_path = tmp_path / "federation.yaml"
    config_path.write_text(FEDERATION)
    async with engine_for(FEDERATION, tmp_path) as engine:
        wid = await protected_workload(engine, "legacy")
        op = await dr.failover(engine, None, wid)
        commit = next(i for i, s in enumerate(op.steps) if s.get("commit"))
        rec, args = op.steps[commit], op.steps[commit]["args"]
        record = {**rec, "action": "workload.record",
                  "args": {"provider": args["provider"], "workload_id": wid}}
        switch = {**rec, "name": "switch", "action": "dr.switch", "commit": False,
                  "args": {"workload_id": wid, "origin": args["origin"], "origin_region": args["origin_region"],
                           "at": args["provider"], "kind": args["kind"], "started_at": args["started_at"]}}
        async with session_scope(engine.sessions) as s:
            row = await s.get(Operation, op.id)
            assert row is not None
            row.steps = [*op.steps[:commit], record, switch, *op.steps[commit + 1:]]
            s.add(row)
        crash_at(config_path, f"sqlite:///{tmp_path / 'catalog.db'}", op.id, commit, "after")
        assert await where(engine, wid) == (DR_SITE[0], DR_SITE[1])  # the old plans' gap
        done = await resume(engine, op.id)
        assert done.state == OperationState.SUCCEEDED, done.error
        assert await where(engine, wid) == (DR_SITE[0], HOME[1])
        assert [s["action"] for s in done.steps][commit:commit + 2] == ["workload.record", "dr.switch"]
