"""Issue 16 item 11: a broker killed (SIGKILL) while it accepts a delete or an action loses nothing.

The workload service writes the intent (the workload's desired_state) and the operation with its plan in
one transaction. A broker process (intent_runner.py) is killed at each point of that request: after the
intent, after the plan (both uncommitted), and after the commit before anyone was told to run it. Then
a fresh executor runs whatever is runnable, and the client, which never got its answer, sends the same
request again (a 409 "already being deleted" counts as accepted only if an operation is there to do it).
At the end the VM is gone (delete) or in the asked state (actions) at the sim provider, the catalog says
so, and exactly one operation of the kind did it; every operation ended.

The ``split`` run imitates a service that commits the intent in a transaction of its own first (the
code the issue found): the same checks fail there (the delete is lost: the VM keeps running, the row
says deleted, a retry is refused), which shows the test catches the gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from metavmm.catalog import db
from metavmm.catalog.models import Operation, OperationState, Workload
from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import Conflict
from metavmm.services.identity import Identity, operator_identity
from metavmm.services.operations import store
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.executor import Executor
from metavmm.services.placement import Placer
from metavmm.services.sync import sync_all
from metavmm.services.workloads.requests import CreateRequest
from metavmm.services.workloads.service import WorkloadService
from tests.polling import polls

REPO = Path(__file__).resolve().parents[3]
CONFIG = """
providers:
  - {kind: sim, name: sima, site_count: 1, hosts_per_site: 2}
operations: {retry_base_s: 0.01, reconcile_interval_s: 0, lease_s: 1}
"""
POINTS = ("intent", "plan", "wake")
VM_STATE = {"delete": None, "stop": "stopped", "suspend": "suspended"}
DESIRED = {"delete": "deleted", "stop": "stopped", "suspend": "suspended"}


async def run_all(engine: Engine) -> None:
    """A restarted broker's executor: every runnable operation, to its end (a dead owner's lease first
    has to run out)."""
    executor = Executor(engine.sessions, engine.config)
    try:
        for _ in polls():
            async with engine.sessions() as session:
                active = (await session.exec(select(Operation.id).where(
                    Operation.state.in_(store.ACTIVE)))).all()  # type: ignore[attr-defined]
            if not active:
                return
            for op_id in active:
                await executor.run(op_id)
            if await store.runnable_ids(engine.sessions, 10) == []:
                await asyncio.sleep(0.3)
        raise AssertionError(f"operations still active: {active}")
    finally:
        await executor.drivers.close()


async def provider_vms(engine: Engine, provider: str) -> list[Any]:
    """What a provider holds, read behind the catalog's back."""
    executor = Executor(engine.sessions, engine.config)
    try:
        return list(await executor.drivers.get(provider).list_vms())
    finally:
        await executor.drivers.close()


def kill_at(runner: str, args: list[str], point: str) -> None:
    """Start the broker process ``tests.services.operations.<runner>`` (or the module ``runner`` when it is
    a dotted name), wait until it says it is at ``point`` (``AT <point>``), and kill it with SIGKILL: no
    rollback, no cleanup."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    module = runner if "." in runner else f"tests.services.operations.{runner}"
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.strip() == f"AT {point}", (line, proc.stderr.read() if proc.stderr else "")
    finally:
        proc.kill()
        proc.wait()


@dataclass
class Broker:
    engine: Engine
    workloads: WorkloadService
    caller: Identity
    config_path: Path
    url: str

    async def run_all(self) -> None:
        await run_all(self.engine)

    def kill_at(self, wid: str, action: str, point: str, *, split: bool = False) -> None:
        kill_at("intent_runner", [str(self.config_path), self.url, wid, action, point, *(["split"] if split else [])],
                point)

    async def driver_vms(self) -> list[Any]:
        return await provider_vms(self.engine, "sima")

    async def vms(self) -> list[tuple[str, str]]:
        return [(vm.name, str(vm.state)) for vm in await self.driver_vms()]


@contextlib.asynccontextmanager
async def synced_catalog(db_url: str, tmp_path: Path, text: str) -> AsyncIterator[tuple[Engine, Path]]:
    """A fresh catalog at ``db_url`` synced with the federation ``text`` (also written to a file, for the
    broker processes the tests kill): the engine over it and the file's path."""
    config_path = tmp_path / "federation.yaml"
    config_path.write_text(text)
    config = parse_config(text)
    await db.upgrade_async(db_url)
    sql = db.make_engine(db_url)
    sessions = db.make_sessionmaker(sql)
    try:
        await sync_all(sessions, config)
        yield Engine(sessions, config, db_url), config_path
    finally:
        await sql.dispose()


async def operator_service(engine: Engine) -> tuple[Identity, WorkloadService]:
    """The operator (default project) and the workload service over ``engine``, as a broker has them."""
    async with engine.sessions() as session:
        caller = await operator_identity(session, None)
        await session.commit()
    return caller, WorkloadService(engine.sessions, engine.config, engine, Placer(engine.config))


@pytest.fixture
async def broker(db_url: str, tmp_path: Path) -> AsyncIterator[Broker]:
    async with synced_catalog(db_url, tmp_path, CONFIG) as (engine, config_path):
        caller, workloads = await operator_service(engine)
        yield Broker(engine, workloads, caller, config_path, db_url)


async def _running_vm(broker: Broker, name: str) -> str:
    accepted = await broker.workloads.create(broker.caller, CreateRequest(name=name, vcpus=1, ram_mib=256))
    await broker.run_all()
    assert (await store.get(broker.engine.sessions, accepted.operation.id)).state == OperationState.SUCCEEDED
    return accepted.workload.id


async def _again(broker: Broker, wid: str, action: str) -> None:
    """The client's retry (it never got an answer)."""
    try:
        if action == "delete":
            await broker.workloads.delete(broker.caller, wid)
        else:
            await broker.workloads.act(broker.caller, wid, action)
    except Conflict:  # "already being deleted", "already stopped": fine only if the end state comes
        pass


async def _check(broker: Broker, wid: str, action: str) -> None:
    await broker.run_all()
    async with broker.engine.sessions() as session:
        w = await session.get(Workload, wid)
        ops = (await session.exec(select(Operation).where(Operation.target_id == wid))).all()
    assert w is not None
    assert all(op.state in store.TERMINAL for op in ops)
    assert [op.state for op in ops if op.kind != "create" and op.state != OperationState.SUCCEEDED] == []
    done = [op for op in ops if op.kind == action and op.state == OperationState.SUCCEEDED]
    assert len(done) == 1, [(op.kind, op.state) for op in ops]
    vms = await broker.vms()
    if action == "delete":
        assert vms == [] and not w.present and w.observed_state == "deleted", (vms, w.observed_state)
    else:
        assert [s for _, s in vms] == [VM_STATE[action]] and w.observed_state == VM_STATE[action]


CORE = {("delete", "intent", "sqlite"), ("delete", "wake", "postgresql")}
"""In every run (about 10 s each on a shared machine); the rest of the matrix is marked slow."""
MATRIX = [pytest.param(a, p, d, id=f"{d}-{a}-{p}", marks=() if (a, p, d) in CORE else pytest.mark.slow)
          for d in ("sqlite", "postgresql") for a in ("delete", "stop", "suspend") for p in POINTS]


@pytest.mark.parametrize(("action", "point", "db_url"), MATRIX, indirect=["db_url"])
async def test_kill_while_accepting_loses_nothing(broker: Broker, action: str, point: str) -> None:
    wid = await _running_vm(broker, f"{action}-{point}")
    broker.kill_at(wid, action, point)
    async with broker.engine.sessions() as session:
        w = await session.get(Workload, wid)
        accepted = (await session.exec(select(Operation).where(Operation.target_id == wid,
                                                               Operation.kind == action))).all()
    assert w is not None
    if point == "wake":  # committed: the row and its operation are there together
        assert len(accepted) == 1 and w.desired_state == DESIRED[action]
    else:  # nothing of the request survived, so a retry is a plain new request
        assert accepted == [] and w.desired_state == "active"
    await _again(broker, wid, action)
    await _check(broker, wid, action)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_the_check_catches_an_intent_committed_alone(broker: Broker) -> None:
    """The code the issue found: desired_state=deleted committed, the broker killed before the operation."""
    wid = await _running_vm(broker, "split")
    broker.kill_at(wid, "delete", "intent", split=True)
    async with broker.engine.sessions() as session:
        w = await session.get(Workload, wid)
    assert w is not None and w.desired_state == "deleted"  # the intent, with nothing to carry it out
    await _again(broker, wid, "delete")
    with pytest.raises(AssertionError):
        await _check(broker, wid, "delete")
    assert await broker.vms() != []  # the VM keeps running: the delete was lost
