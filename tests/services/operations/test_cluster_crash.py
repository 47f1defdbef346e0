"""Issue 16, durability: a broker killed (SIGKILL) while it scales a cluster down or deletes it leaves the
seats and their VMs agreeing.

A scale-down removes the highest seats' rows and deletes their workloads; a delete removes every seat, the
cluster and its OCCI mixin. A broker process (write_runner.py) is killed before each delete's plan is
written, after the last (not committed) and once the request committed and wakes the engine. Then:

- right after the kill, either nothing of the request is in the catalog (every seat row, every workload
  still meant to run, no delete planned) or all of it (the rows gone and a delete planned for each of
  their workloads, intent and plan together);
- the client sends the request again (a cluster already deleted answers 404), a restarted executor runs
  everything, and the sim provider holds exactly the VMs of the seats left, none of a seat removed.

On the code that committed the seat rows' removal first and deleted the workloads one transaction each
afterwards, every kill before ``wake`` leaves seats gone whose VMs run on with nobody deleting them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import pytest
from sqlmodel import col, select

from metavmm.catalog.models import Cluster, ClusterSeat, Operation, OperationState, Workload
from metavmm.foundation.errors import NotFound
from metavmm.services.clusters import ClusterRequest, ClusterService
from metavmm.services.identity import Identity
from metavmm.services.workloads.service import WorkloadService
from tests.services.operations.test_intent_crash import kill_at, operator_service, provider_vms, run_all, synced_catalog

CONFIG = """
providers:
  - {kind: sim, name: sima, site_count: 1, hosts_per_site: 2}
operations: {retry_base_s: 0.01, reconcile_interval_s: 0, lease_s: 1}
"""
S = TypeVar("S")
SEATS, KEEP = 3, 1
"""A class of SEATS seats, scaled down to KEEP."""


@dataclass
class World(Generic[S]):
    """A class of computes (a cluster, an auto-scaling group) made through ``service``, its id ``of``."""

    service: S
    caller: Identity
    config_path: Path
    url: str
    of: str


@contextlib.asynccontextmanager
async def made(db_url: str, tmp_path: Path, build: Callable[[WorkloadService, Identity], Awaitable[tuple[S, str]]]
               ) -> AsyncIterator[World[S]]:
    """A catalog on CONFIG where ``build`` made a class of computes, all of them running."""
    async with synced_catalog(db_url, tmp_path, CONFIG) as (engine, path):
        caller, workloads = await operator_service(engine)
        service, of = await build(workloads, caller)
        await run_all(engine)
        yield World(service, caller, path, db_url, of)


@pytest.fixture
async def world(db_url: str, tmp_path: Path) -> AsyncIterator[World[ClusterService]]:
    """A cluster of SEATS running seats on sima."""
    async def build(workloads: WorkloadService, caller: Identity) -> tuple[ClusterService, str]:
        clusters = ClusterService(workloads)
        view = await clusters.create(caller, ClusterRequest(name="lab", seats=SEATS, vcpus=1, ram_mib=256))
        return clusters, view.cluster.id

    async with made(db_url, tmp_path, build) as w:
        yield w


async def _state(world: World[ClusterService]) -> tuple[bool, list[str], dict[str, Workload], list[Operation]]:
    """(the cluster row exists, its seats' workload ids, every compute by id, the delete operations)."""
    async with world.service.sessions() as session:
        cluster = await session.get(Cluster, world.of)
        seats = (await session.exec(select(ClusterSeat.workload_id).where(
            ClusterSeat.cluster_id == world.of).order_by(col(ClusterSeat.serial)))).all()
        workloads = {w.id: w for w in (await session.exec(select(Workload))).all()}
        deletes = (await session.exec(select(Operation).where(Operation.kind == "delete"))).all()
    return cluster is not None, list(seats), workloads, list(deletes)


async def _all_or_nothing(world: World[ClusterService], request: str, everyone: list[str]) -> bool:
    """True when the request survived whole, False when none of it did; fails for anything between."""
    exists, seats, workloads, deletes = await _state(world)
    wanted = everyone[:KEEP] if request == "scale" else []
    if seats == everyone and exists:
        assert deletes == [], "the seats are all there, yet deletes were planned"
        assert {workloads[w].desired_state for w in everyone} == {"active"}
        return False
    assert seats == wanted and exists == (request == "scale"), (
        f"{len(seats)} of {len(everyone)} seats left, cluster row {'kept' if exists else 'gone'}")
    gone = [w for w in everyone if w not in wanted]
    assert sorted(op.target_id for op in deletes) == sorted(gone), (
        f"{len(gone)} seats removed, {len(deletes)} deletes planned: the rest of their VMs run on unseen")
    assert {workloads[w].desired_state for w in gone} == {"deleted"}
    return True


CORE = {("scale", "write-2", "sqlite"), ("delete", "wake", "postgresql")}
"""In every run (a few seconds each); the rest of the matrix is marked slow."""
MATRIX = [pytest.param(r, p, d, id=f"{d}-{r}-{p}", marks=() if (r, p, d) in CORE else pytest.mark.slow)
          for d in ("sqlite", "postgresql") for r, points in (("scale", ("write-1", "write-2", "written", "wake")),
                                                              ("delete", ("write-1", "write-3", "written", "wake")))
          for p in points]


@pytest.mark.parametrize(("request_", "point", "db_url"), MATRIX, indirect=["db_url"])
async def test_kill_while_removing_seats_leaves_seats_and_vms_agreeing(world: World[ClusterService], request_: str,
                                                                      point: str) -> None:
    _, everyone, _, _ = await _state(world)
    assert len(everyone) == SEATS
    removed = SEATS - KEEP if request_ == "scale" else SEATS
    args = ["cluster-scale", world.of, str(KEEP)] if request_ == "scale" else [
        "cluster-delete", world.of]
    kill_at("write_runner", [str(world.config_path), world.url, point, str(removed), *args], point)
    survived = await _all_or_nothing(world, request_, everyone)
    assert survived == (point == "wake")  # committed only once every row was written
    try:  # the client's retry (it never got an answer)
        if request_ == "scale":
            await world.service.scale(world.caller, world.of, KEEP)
        else:
            await world.service.delete(world.caller, world.of)
    except NotFound:
        assert survived and request_ == "delete"
    await run_all(world.service.workloads.engine)
    exists, seats, workloads, deletes = await _state(world)
    assert seats == (everyone[:KEEP] if request_ == "scale" else []) and exists == (request_ == "scale")
    assert sorted(op.target_id for op in deletes) == sorted(w for w in everyone if w not in seats)  # once each
    assert {op.state for op in deletes} == {OperationState.SUCCEEDED}
    held = sorted(str(vm.workload_id) for vm in await provider_vms(world.service.workloads.engine, "sima"))
    assert held == sorted(seats)
    assert all(not workloads[w].present for w in everyone if w not in seats)
