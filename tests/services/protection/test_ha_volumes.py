"""HA restart of a compute with an attached volume, on the sim provider: the volume comes back attached to the
restarted copy where the new provider reaches its storage, and where it does not, the restart says so (the
protection state, the operation's log, the link's state) instead of dropping it silently. The lost provider's
view of a carried volume is the same volume, never an orphan to delete."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from metavmm.catalog.models import OperationState, Protection, Provider, Workload, WorkloadLink
from metavmm.drivers.sim import SimDriver
from metavmm.foundation.records import VmState, VolumeInfo
from metavmm.services.operations import store
from metavmm.services.operations.reconcile import reconcile
from metavmm.services.placement import Placer
from metavmm.services.protection import dr
from metavmm.services.protection.ha import HaService, HaState
from metavmm.services.sync import sync_all
from metavmm.services.workloads.requests import CreateRequest, LinkSpec
from metavmm.services.workloads.service import WorkloadService
from tests.services.protection.conftest import engine_for, run
from tests.services.protection.test_ha import Broker, lose, make_broker
from tests.services.protection.test_ha_dr_sim import FEDERATION, provisioned


@pytest.fixture
async def hab(sqlite_sessions: Any) -> AsyncIterator[Broker]:
    """The HA service over test_ha's three sim providers (hasa and hasb share storage)."""
    async with make_broker(sqlite_sessions) as b:
        yield b


async def _volume(b: Broker, provider: str, wid: str) -> tuple[str, str]:
    """A 2 GiB volume at ``provider`` attached to compute ``wid``: (volume id, link id)."""
    made = await b.workloads.create(b.alpha, CreateRequest(kind="storage", name="data", disk_gib=2,
                                                           providers=(provider,)))
    assert (await b.run(made.operation.id)).state == OperationState.SUCCEEDED
    link, op = await b.workloads.link(b.alpha, wid, LinkSpec(target_id=made.workload.id))
    assert (await b.run(op.id)).state == OperationState.SUCCEEDED
    return made.workload.id, link.id


async def _where(b: Broker, workload_id: str) -> tuple[str, str | None]:
    async with b.sessions() as session:
        wl = await session.get(Workload, workload_id)
        provider = await session.get(Provider, wl.provider_id)
        return provider.name, wl.provider_resource_id


async def _link(b: Broker, link_id: str) -> dict[str, Any]:
    async with b.sessions() as session:
        return dict((await session.get(WorkloadLink, link_id)).attributes)


def _attached(b: Broker, provider: str, volume_id: str) -> list[str]:
    """The VMs (by workload) the volume is attached to at ``provider``, as the simulation has it."""
    vms = {vm.provider_vm_id: vm.workload_id for vm in b.sim(provider).ex_vms()}
    with b.sim(provider).state.read() as tx:
        return [vms.get(v, v) for vol in tx.all(VolumeInfo) if vol.workload_id == volume_id
                for v in vol.attached_to]


async def test_a_volume_on_shared_storage_is_attached_to_the_restarted_copy(hab: Broker) -> None:
    b = hab
    wid = await b.create("hasa")
    vid, link_id = await _volume(b, "hasa", wid)
    assert _attached(b, "hasa", vid) == [wid]
    old_vol = (await _where(b, vid))[1]
    await b.ha.protect(b.alpha, wid)
    await lose(b, "hasa")
    await b.ha.check()  # waiting for a fence
    prot, report = await b.ha.confirm_fence(b.admin, wid)
    assert "volumes data re-attached after it runs" in prot.message
    op = await b.run(report.operations[0])
    assert op.state == OperationState.SUCCEEDED, op.error
    assert op.outputs["volumes"] == {vid: "attached"}
    assert b.copies(wid)["hasb"] == [VmState.RUNNING]
    # the volume lives at hasb now (the same volume: its id kept), attached to the new copy, the link active
    assert await _where(b, vid) == ("hasb", old_vol)
    assert _attached(b, "hasb", vid) == [wid]
    link = await _link(b, link_id)
    assert link["state"] == "active" and "re-attached at hasb" in link["state_message"]
    _, prot, _ = await b.row(wid)
    assert prot.state == HaState.PROTECTED and "NOT re-attached" not in prot.message

    # hasa comes back: its stale VM is an orphan; its view of the volume is the same volume, kept
    b.sim("hasa").ex_set_reachable(True)
    await sync_all(b.sessions, b.config)
    found = await reconcile(b.ha.engine, b.executor.drivers)
    assert [(p, w) for p, _, w in found.orphans] == [("hasa", wid)]
    for op_id in found.operations:
        assert (await b.run(op_id)).state == OperationState.SUCCEEDED
    assert _attached(b, "hasb", vid) == [wid] and await _where(b, vid) == ("hasb", old_vol)


async def test_a_volume_on_the_lost_site_is_reported_not_dropped(tmp_path: Path) -> None:
    """The compute is restarted from its DR recovery point at simb; its volume, attached after that point, was on
    sima's own storage, which simb does not reach: the copy runs without it, and the restart says so everywhere a
    user looks."""
    async with engine_for(FEDERATION, tmp_path) as engine:
        caller, wid = await provisioned(engine)
        placer = Placer(engine.config)
        workloads = WorkloadService(engine.sessions, engine.config, engine, placer)
        made = await workloads.create(caller, CreateRequest(kind="storage", name="data", disk_gib=2,
                                                            providers=("sima",)))
        assert (await run(engine, made.operation)).state == OperationState.SUCCEEDED
        vid = made.workload.id
        ha = HaService(engine.sessions, engine.config, engine, placer)
        await ha.protect(caller, wid)
        await dr.set_replication(engine.sessions, engine.config, None, wid, target="simb", interval_s=None)
        assert (await run(engine, await dr.replicate(engine, None, wid))).state == OperationState.SUCCEEDED
        # attached after the last point: the point does not carry it (test_dr_volumes: one that does)
        link, op = await workloads.link(caller, wid, LinkSpec(target_id=made.workload.id))
        assert (await run(engine, op)).state == OperationState.SUCCEEDED

        SimDriver(engine.config.provider("sima")).ex_set_reachable(False)
        for _ in range(2):
            await sync_all(engine.sessions, engine.config)
        await ha.check()
        prot, report = await ha.confirm_fence(caller, wid)
        assert "NOT re-attached: volume data is on sima's own storage, which simb does not reach" in prot.message
        op = await run(engine, await store.get(engine.sessions, report.operations[0]))
        assert op.state == OperationState.SUCCEEDED, op.error  # the compute runs from its point
        assert "which simb does not reach" in op.outputs["volumes"][vid]
        events = " ".join(e.message for e in await store.events(engine.sessions, op.id))
        assert "the restarted copy runs without it" in events
        async with engine.sessions() as s:
            at = (await s.get(Provider, (await s.get(Workload, wid)).provider_id)).name
            vol_at = (await s.get(Provider, (await s.get(Workload, vid)).provider_id)).name
            attrs = (await s.get(WorkloadLink, link.id)).attributes  # the link is kept, and says why
            prot = await s.get(Protection, wid)
        assert (at, vol_at) == ("simb", "sima")  # the volume stays where it is, nothing made empty in its place
        assert attrs["state"] == "inactive" and "not attached to the restarted copy" in attrs["state_message"]
        assert prot.state == HaState.PROTECTED and "NOT re-attached: volume data is on sima's own" in prot.message
        assert [v.workload_id for v in await SimDriver(engine.config.provider("simb")).list_volumes()] == []
