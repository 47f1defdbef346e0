"""Issue 16 item 12 on the sim provider: the executor is killed (SIGKILL, crash_runner.py) at every step
boundary of every operation kind the sim provider runs (create through the workload service, delete,
stop, start, suspend, restart, resize, live migration), before a step's action starts or after it
returned (the provider changed, the row does not know yet); a fresh executor resumes the operation.

Then: the operation succeeded; the sim provider has exactly the VMs the catalog says (none left over by
a create run twice, none lost), in the state asked for, with the shape asked for; no workload or
operation row is lost or duplicated. SQLite and PostgreSQL (the ``db_url`` fixture).

Every run: the boundaries of a delete on SQLite. The whole matrix is marked slow (each
boundary is one broker process: ~5 s on a shared machine).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import func, select

from metavmm.catalog.models import Operation, OperationState, Workload
from metavmm.services.operations import flows, store
from metavmm.services.workloads.requests import CreateRequest
from tests.services.operations.test_intent_crash import REPO, Broker
from tests.services.operations.test_intent_crash import broker as broker  # the fixture

KINDS = ("create", "delete", "stop", "start", "suspend", "restart", "resize", "live_migrate")
EXPECT = {"create": "running", "delete": None, "stop": "stopped", "start": "running", "suspend": "suspended",
          "restart": "running", "resize": "running", "live_migrate": "running"}
CORE = {("delete", "sqlite")}


def crash_at(config_path: Path, url: str, op_id: str, step: int, phase: str) -> str:
    """Run ``op_id`` in a broker process (federation file ``config_path``, catalog ``url``) killed at (step,
    phase); what it printed last ('FINISHED' when the boundary was never reached, e.g. a step with no
    provider action)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.services.operations.crash_runner", str(config_path),
                             url, op_id, str(step), phase], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip() if proc.stdout else ""
        assert line in (f"AT {step} {phase}", "FINISHED"), (line, proc.stderr.read() if proc.stderr else "")
        return line
    finally:
        proc.kill()
        proc.wait()


async def _rows(broker: Broker) -> tuple[int, int]:
    async with broker.engine.sessions() as session:
        workloads = (await session.exec(select(func.count()).select_from(Workload))).one()
        ops = (await session.exec(select(func.count()).select_from(Operation))).one()
    return workloads, ops


async def _vm(broker: Broker, name: str) -> str:
    accepted = await broker.workloads.create(broker.caller, CreateRequest(name=name, vcpus=1, ram_mib=256))
    await broker.run_all()
    return accepted.workload.id


async def _submit(broker: Broker, kind: str, name: str) -> tuple[str, Operation]:
    """A workload ready for ``kind`` and its operation, written but not run."""
    if kind == "create":
        accepted = await broker.workloads.create(broker.caller, CreateRequest(name=name, vcpus=1, ram_mib=256))
        return accepted.workload.id, accepted.operation
    wid = await _vm(broker, name)
    if kind == "start":
        await broker.workloads.act(broker.caller, wid, "stop")
        await broker.run_all()
    if kind == "delete":
        return wid, await broker.workloads.delete(broker.caller, wid)
    if kind == "resize":
        return wid, await broker.workloads.resize(broker.caller, wid, vcpus=2, ram_mib=512)
    if kind == "live_migrate":
        async with broker.engine.sessions() as session:
            w = await session.get(Workload, wid)
        assert w is not None
        vm = next(v for v in await broker.driver_vms() if v.workload_id == wid)
        other = next(h for h in ("sim-000-h00000", "sim-000-h00001") if h != vm.host)
        return wid, await flows.live_migrate(broker.engine, wid, target_provider="sima", target_host=other)
    return wid, await broker.workloads.act(broker.caller, wid, kind)


async def _crash_and_resume(broker: Broker, kind: str, step: int | None, phase: str) -> str:
    """One boundary (``step`` None: the plan's length is returned after a clean run)."""
    wid, op = await _submit(broker, kind, f"{kind}-{step}-{phase}")
    before = await _rows(broker)
    reached = "FINISHED" if step is None else crash_at(broker.config_path, broker.url, op.id, step, phase)
    await broker.run_all()
    done = await store.get(broker.engine.sessions, op.id)
    assert done.state == OperationState.SUCCEEDED, (kind, step, phase, done.error)
    assert await _rows(broker) == before  # nothing lost, nothing duplicated
    async with broker.engine.sessions() as session:
        w = await session.get(Workload, wid)
        live = (await session.exec(select(Workload).where(Workload.present == True))).all()  # noqa: E712
    assert w is not None
    vms = await broker.driver_vms()
    assert sorted(str(v.workload_id) for v in vms) == sorted(x.id for x in live)  # no orphan, none lost, no twin
    if EXPECT[kind] is None:
        assert not w.present and w.observed_state == "deleted"
    else:
        (vm,) = [v for v in vms if v.workload_id == wid]
        assert vm.state == EXPECT[kind] and w.observed_state == EXPECT[kind]
        assert vm.provider_vm_id == w.provider_resource_id
        if kind == "resize":
            assert (w.spec["vcpus"], w.spec["ram_mib"]) == (2, 512)
    return reached if step is not None else str(len(done.steps))


MATRIX = [pytest.param(k, d, id=f"{d}-{k}", marks=() if (k, d) in CORE else pytest.mark.slow)
          for d in ("sqlite", "postgresql") for k in KINDS]


@pytest.mark.parametrize(("kind", "db_url"), MATRIX, indirect=["db_url"])
async def test_kill_at_every_boundary_then_resume(broker: Broker, kind: str, request: pytest.FixtureRequest) -> None:
    steps = int(await _crash_and_resume(broker, kind, None, "after"))
    phases = ("before", "after") if os.environ.get("METAVMM_SLOW") == "1" else ("after",)
    reached = {}
    for step in range(steps):
        for phase in phases:
            reached[(step, phase)] = await _crash_and_resume(broker, kind, step, phase)
    killed = sum(r != "FINISHED" for r in reached.values())
    print(f"MATRIX {request.node.callspec.id} steps={steps} boundaries={len(reached)} killed={killed}")
    assert killed >= 1
