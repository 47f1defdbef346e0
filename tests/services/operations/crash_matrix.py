"""Issue 16 item 12, one crash matrix for every provider it runs on: the executor is killed (SIGKILL, the one
runner of crash_runner.py) at every step boundary of an operation, a fresh executor resumes it, and then
the provider itself is asked (not the broker's driver, where the provider has another view: pyvmomi for
vcsim, openstacksdk for nova) whether anything is orphaned, lost or twinned.

A :class:`World` is one federation under the matrix (test_crash_sim.py: the sim provider through the
workload service; test_crash_providers.py: vcsim and real nova through the flows). It says how an
operation of each kind is submitted (written, not run) and what VMs the provider really holds;
:func:`crash_and_resume` plays one boundary and checks, after the resume:

- the operation ended as it must (succeeded; or, for a kind the provider refuses, failed or rolled back
  with its reason), every operation of the catalog ended, and every one that did not succeed says why;
- no workload or operation row was lost or duplicated;
- the provider holds exactly one VM for every workload the catalog says is there, none for any other
  workload of the catalog (no orphan, none lost, no twin), and nothing else the world knows to look
  for (datastore directories, glance images, scratch directories);
- the workload's VM is in the state the kind asks for, at the provider and in the catalog, under the
  id the catalog records, where the kind put it (host, shape).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlmodel import func, select

from metavmm.catalog.models import Host, Operation, OperationEvent, OperationState, Provider, Workload
from metavmm.services.operations import store
from metavmm.services.operations.engine import Engine
from tests.services.operations.crash_runner import crash_at
from tests.services.operations.test_intent_crash import run_all

END_STATE = {"create": "running", "delete": None, "stop": "stopped", "start": "running", "suspend": "suspended",
             "restart": "running", "resize": "running", "live_migrate": "running", "relocate": "running",
             "cold_migrate": "running"}
"""The VM's state once an operation of the kind succeeded (None: no VM)."""


@dataclass(frozen=True)
class Seen:
    """A VM carrying a workload's tag, as the provider shows it."""

    provider: str
    workload_id: str
    vm_id: str
    state: str  # the broker's vocabulary: running, stopped, suspended, ...
    host: str | None = None
    shape: tuple[int, int] | None = None  # (vCPUs, MiB of RAM)


@dataclass
class Boundary:
    kind: str
    step: int
    phase: str
    name: str = ""  # the step's name
    reached: bool = True  # False: the operation ended before it (a plan rolled back earlier)
    actions: tuple[str, ...] = ()  # the plan's step actions (a clean run's)


@dataclass
class World:
    """One federation under the matrix."""

    engine: Engine
    config_path: Path
    url: str
    refused: dict[str, str] = field(default_factory=dict)  # kind -> why the provider refuses it (error text)

    async def submit(self, kind: str, name: str) -> tuple[str, Operation]:
        """A workload ready for ``kind`` and its operation, written but not run."""
        raise NotImplementedError

    async def seen(self) -> list[Seen]:
        """Every VM the federation's providers hold that carries a workload tag."""
        raise NotImplementedError

    def leftovers(self, workloads: list[Workload]) -> list[str]:
        """What the providers hold beyond the VMs that no workload of the catalog (``workloads``, all of them)
        that is there owns."""
        return []

    def check(self, kind: str, workload: Workload, vm: Seen, op: Operation) -> None:
        """Kind-specific checks of the VM an operation left (its host, its shape)."""

    def describe(self, workload_id: str) -> str:
        """What the provider says about the workload's VM beyond its state, for a failure's message."""
        return ""


async def _rows(engine: Engine) -> tuple[int, int]:
    async with engine.sessions() as session:
        workloads = (await session.exec(select(func.count()).select_from(Workload))).one()
        ops = (await session.exec(select(func.count()).select_from(Operation))).one()
    return workloads, ops


async def _history(world: World, op_id: str) -> list[str]:
    """An operation's events, for a failure's message."""
    async with world.engine.sessions() as session:
        events = (await session.exec(select(OperationEvent).where(OperationEvent.operation_id == op_id)
                                     .order_by(OperationEvent.id))).all()  # type: ignore[arg-type]
    return [f"{e.step}: {e.message}" for e in events]


def scratch_left(engine: Engine) -> list[str]:
    """Scratch directories of operations (a cold migration's export) still in the work directory."""
    work = Path(engine.config.operations.work_dir or "/nonexistent")
    return sorted(f"scratch {p.name}" for p in work.iterdir()) if work.is_dir() else []


async def crash_and_resume(world: World, kind: str, step: int | None, phase: str) -> Boundary:
    """Play one boundary of ``kind`` (``step`` None: a clean run, whose answer carries the plan's step
    actions) and check what it left. Only VMs tagged with a workload of this catalog are looked at: vcsim
    and nova are shared with other tests (a row lost with its VM still tagged shows in the row count)."""
    wid, op = await world.submit(kind, f"{kind[:8]}-{step}-{phase[0]}".replace("_", "-"))
    before = await _rows(world.engine)
    reached = True
    if step is not None:
        reached = crash_at(world.config_path, world.url, op.id, step, phase) != "FINISHED"
        crashed = await store.get(world.engine.sessions, op.id)
        assert not reached or crashed.state in store.ACTIVE, (kind, step, phase, crashed.state)
    await run_all(world.engine)
    done = await store.get(world.engine.sessions, op.id)
    if kind in world.refused:
        assert done.state in (OperationState.FAILED, OperationState.ROLLED_BACK), (kind, step, phase, done.state)
        assert world.refused[kind] in (done.error or ""), done.error
    else:
        assert done.state == OperationState.SUCCEEDED, (kind, step, phase, done.error, world.describe(wid),
                                                        await _history(world, op.id))
    async with world.engine.sessions() as session:
        ops = (await session.exec(select(Operation))).all()
        workloads = list((await session.exec(select(Workload))).all())
        names = {p.id: p.name for p in (await session.exec(select(Provider))).all()}
        hosts = {h.id: h.name for h in (await session.exec(select(Host))).all()}
    assert [(o.kind, o.state) for o in ops if o.state not in store.TERMINAL] == []  # every operation ended
    assert [(o.kind, o.state) for o in ops if o.state != OperationState.SUCCEEDED and not o.error] == []  # why
    assert await _rows(world.engine) == before  # nothing lost, nothing duplicated

    ours = {w.id: w for w in workloads}
    vms = [vm for vm in await world.seen() if vm.workload_id in ours]
    there = sorted((names.get(w.provider_id or -1), w.id) for w in workloads if w.present and w.managed)
    at = sorted((vm.provider, vm.workload_id) for vm in vms)
    assert at == there, (kind, step, phase, at, there, vms)  # no orphan, none lost, no twin
    assert world.leftovers(workloads) == [], (kind, step, phase)
    assert scratch_left(world.engine) == [], (kind, step, phase)
    w = ours[wid]
    want = END_STATE[kind] if kind not in world.refused else w.observed_state
    if want is None:
        assert not w.present and w.observed_state == "deleted"
    else:
        (vm,) = [vm for vm in vms if vm.workload_id == wid]
        assert (vm.state, w.observed_state) == (want, want), (kind, step, phase, vm, w.observed_state)
        assert vm.vm_id == w.provider_resource_id and vm.host == hosts.get(w.host_id or -1, vm.host)
        world.check(kind, w, vm, done)
    name = done.steps[step]["name"] if step is not None and step < len(done.steps) else "clean"
    return Boundary(kind, -1 if step is None else step, phase, name, reached, tuple(s["action"] for s in done.steps))


CHANGES = frozenset({"vm.create", "vm.delete", "vm.power", "vm.resize", "vm.live_migrate", "vm.migrate_offline",
                     "image.import", "disk.stream", "image.delete"})
"""Step actions that change a provider (the rest read it, or write only the catalog or the scratch directory)."""


def picked(actions: tuple[str, ...], only: frozenset[str] | None) -> list[tuple[int, str]]:
    """The boundaries to play of a plan with these step actions: with METAVMM_SLOW=1 every one, before and after
    each step; else ``after`` each step (the provider changed, the row does not know yet: the hard case) whose
    action is in ``only`` (None: every step)."""
    if os.environ.get("METAVMM_SLOW") == "1":
        return [(i, phase) for i in range(len(actions)) for phase in ("before", "after")]
    return [(i, "after") for i, a in enumerate(actions) if only is None or a in only]


async def every_boundary(world: World, kind: str, label: str, only: frozenset[str] | None = None) -> list[Boundary]:
    """A clean run of ``kind`` first (its plan names the boundaries), then every boundary :func:`picked`; prints
    one ``MATRIX`` line for the report."""
    clean = await crash_and_resume(world, kind, None, "after")
    started = time.monotonic()
    played = [await crash_and_resume(world, kind, step, phase) for step, phase in picked(clean.actions, only)]
    killed = [b for b in played if b.reached]
    print(f"MATRIX {label} {kind} steps={len(clean.actions)} boundaries={len(played)} killed={len(killed)} "
          f"passed={len(played)} {(time.monotonic() - started) / max(len(played), 1):.1f}s/boundary "
          f"[{' '.join(f'{b.name}/{b.phase}' for b in killed)}]")
    assert killed
    return played
