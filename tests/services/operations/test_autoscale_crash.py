"""Issue 16, durability: a broker killed (SIGKILL) while it deletes an auto-scaling group does not leave a
group whose loop brings the members back; one killed while it scales a group out leaves no member that
its decision (the one-action-at-a-time check, the cooldown) does not name.

A group delete deletes every member (intent and plan) and removes the member rows, the decisions and the
group. A broker process (write_runner.py) is killed before each member's delete is written, after the last
(not committed) and once the request committed and wakes the engine. Then:

- right after the kill, either the group is whole (every member row, no delete planned) or it is gone
  with a delete planned for each member;
- a round of the auto-scaling loop runs (as it would on the restarted broker), the client sends the
  delete again (404 once the group is gone), a restarted executor runs everything, and the sim provider
  holds no VM of the group: no member deleted and none created again.

On the code that deleted the members one transaction each before the group's rows, a kill between them
leaves the group with members being deleted; the loop drops them as gone and creates new ones to meet
the group's minimum. On the code that wrote each new member in its own transaction and the decision after
them all, a kill after the first member leaves it with no decision.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlmodel import col, select

from metavmm.catalog.models import (
    AutoscaleDecision,
    AutoscaleGroup,
    AutoscaleMember,
    Operation,
    OperationState,
    Workload,
)
from metavmm.foundation.errors import NotFound
from metavmm.services.autoscale.service import AutoscaleService, GroupRequest
from metavmm.services.identity import Identity
from metavmm.services.workloads.service import WorkloadService
from tests.services.operations.test_cluster_crash import World, made
from tests.services.operations.test_intent_crash import kill_at, provider_vms, run_all

MEMBERS = 3


@contextlib.asynccontextmanager
async def _group(db_url: str, tmp_path: Path, least: int) -> AsyncIterator[World[AutoscaleService]]:
    """A group of ``least`` running members on sima (its minimum: the loop keeps that many), at most MEMBERS."""
    async def build(workloads: WorkloadService, caller: Identity) -> tuple[AutoscaleService, str]:
        groups = AutoscaleService(workloads)
        view = await groups.create(caller, GroupRequest(name="web", min_size=least, max_size=MEMBERS, vcpus=1,
                                                        ram_mib=256, cooldown_out_s=0, cooldown_in_s=0))
        return groups, view.group.id

    async with made(db_url, tmp_path, build) as w:
        try:
            yield w
        finally:
            await w.service.cpu.close()


@pytest.fixture
async def world(db_url: str, tmp_path: Path) -> AsyncIterator[World[AutoscaleService]]:
    async with _group(db_url, tmp_path, MEMBERS) as w:
        yield w


@pytest.fixture
async def growing(db_url: str, tmp_path: Path) -> AsyncIterator[World[AutoscaleService]]:
    async with _group(db_url, tmp_path, 1) as w:
        yield w


async def _state(world: World[AutoscaleService]) -> tuple[bool, list[str], list[Workload], list[Operation]]:
    """(the group row exists, its members' workload ids, every compute, the delete operations)."""
    async with world.service.sessions() as session:
        group = await session.get(AutoscaleGroup, world.of)
        members = (await session.exec(select(AutoscaleMember.workload_id).where(
            AutoscaleMember.group_id == world.of).order_by(col(AutoscaleMember.serial)))).all()
        workloads = (await session.exec(select(Workload))).all()
        deletes = (await session.exec(select(Operation).where(Operation.kind == "delete"))).all()
    return group is not None, list(members), list(workloads), list(deletes)


CORE = {("write-2", "sqlite"), ("wake", "postgresql")}
"""In every run (a few seconds each); the rest of the matrix is marked slow."""
MATRIX = [pytest.param(p, d, id=f"{d}-{p}", marks=() if (p, d) in CORE else pytest.mark.slow)
          for d in ("sqlite", "postgresql") for p in ("write-1", "write-2", "written", "wake")]


@pytest.mark.parametrize(("point", "db_url"), MATRIX, indirect=["db_url"])
async def test_kill_while_deleting_a_group_brings_no_member_back(world: World[AutoscaleService], point: str) -> None:
    _, everyone, _, _ = await _state(world)
    assert len(everyone) == MEMBERS
    kill_at("write_runner", [str(world.config_path), world.url, point, str(MEMBERS), "group-delete",
                             world.of], point)
    exists, members, workloads, deletes = await _state(world)
    if exists:
        assert members == everyone and deletes == [], (
            f"the group is there with {len(members)} of {MEMBERS} members and {len(deletes)} deletes planned")
    else:
        assert members == [] and sorted(op.target_id for op in deletes) == sorted(everyone)
    assert exists == (point != "wake")  # committed only once every row was written
    await world.service.evaluate_all()  # the restarted broker's loop, before the client asks again
    try:
        await world.service.delete(world.caller, world.of)
    except NotFound:
        assert not exists
    await run_all(world.service.workloads.engine)
    exists, members, workloads, deletes = await _state(world)
    assert not exists and members == []
    assert [w.name for w in workloads if w.present] == []  # none created again
    assert sorted(op.target_id for op in deletes) == sorted(everyone)
    assert {op.state for op in deletes} == {OperationState.SUCCEEDED}
    assert await provider_vms(world.service.workloads.engine, "sima") == []


async def _unnamed(world: World[AutoscaleService]) -> list[str]:
    """Members whose create no decision names (the one-at-a-time check and the cooldown miss them)."""
    async with world.service.sessions() as session:
        named = {op for ops in (await session.exec(select(AutoscaleDecision.operations).where(
            AutoscaleDecision.group_id == world.of))).all() for op in ops}
        creates = (await session.exec(select(Operation.target_id, Operation.id).where(
            Operation.kind == "create"))).all()
    _, members, _, _ = await _state(world)
    by_workload = dict(creates)
    return [w for w in members if by_workload.get(w) not in named]


@pytest.mark.parametrize(("point", "db_url"), MATRIX, indirect=["db_url"])
async def test_kill_while_scaling_out_leaves_no_member_its_decision_misses(growing: World[AutoscaleService],
                                                                          point: str) -> None:
    world = growing
    _, (first,), _, _ = await _state(world)
    kill_at("write_runner", [str(world.config_path), world.url, point, str(MEMBERS - 1), "group-desire",
                             world.of, str(MEMBERS)], point)
    _, members, _, _ = await _state(world)
    assert await _unnamed(world) == [], f"{len(members) - 1} members added, not all named by a decision"
    assert len(members) == (MEMBERS if point == "wake" else 1)  # committed only once every row was written
    await world.service.evaluate_all()  # the restarted broker's loop adds what the kill lost
    await run_all(world.service.workloads.engine)
    _, members, workloads, _ = await _state(world)
    assert len(members) == MEMBERS and members[0] == first and await _unnamed(world) == []
    assert sorted(w.id for w in workloads if w.present) == sorted(members)  # none made twice
    vms = await provider_vms(world.service.workloads.engine, "sima")
    assert sorted(str(vm.workload_id) for vm in vms) == sorted(members)
