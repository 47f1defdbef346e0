"""Volumes, networks and links through the engine on the sim provider (a fake provider is fine above
the drivers): create, attach, detach, delete; every step re-run after a crash adopts what the provider
already has instead of making it twice; an attach whose compute never appears rolls back and says so."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sqlmodel import col, select

from bench import direct
from metavmm.catalog.models import Operation, OperationState, SpendAccrual, Workload, WorkloadLink
from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import Conflict
from metavmm.services import observer
from metavmm.services.operations import flows, store
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.executor import Executor
from metavmm.services.sync import sync_all

CONFIG = """
providers:
  - {kind: sim, name: sima, site_count: 2, hosts_per_site: 1}
operations: {retry_base_s: 0.01, reconcile_interval_s: 0}
"""


class World:
    def __init__(self, sessions: Any) -> None:
        self.sessions = sessions
        self.config = parse_config(CONFIG)
        self.engine = Engine(sessions, self.config, "sqlite://")
        self.executor = Executor(sessions, self.config)
        self.sim: Any = self.executor.drivers.get("sima")

    async def run(self, op: Operation) -> Operation:
        assert await self.executor.run(op.id)
        return await store.get(self.sessions, op.id)

    async def ok(self, op: Operation) -> Operation:
        done = await self.run(op)
        assert done.state == OperationState.SUCCEEDED, done.error
        return done

    async def workload(self, wid: str) -> Workload:
        async with self.sessions() as session:
            row = await session.get(Workload, wid)
        assert row is not None
        return row

    async def link(self, compute: str, target: str, kind: str) -> str:
        async with self.sessions() as session:
            row = WorkloadLink(kind=kind, source_id=compute, target_id=target)
            session.add(row)
            await session.commit()
            return row.id


@pytest.fixture
async def world(sqlite_sessions: Any) -> World:
    w = World(sqlite_sessions)
    await sync_all(sqlite_sessions, w.config)
    return w


async def test_volume_and_network_attach_detach_delete(world: World) -> None:
    vol_op = await world.ok(await direct.create_resource(world.engine, "storage", name="data", provider="sima",
                                                        region="sim-000", size_gib=4))
    net_op = await world.ok(await direct.create_resource(world.engine, "network", name="lan", provider="sima",
                                                        region="sim-000"))
    vol, net = await world.workload(vol_op.target_id), await world.workload(net_op.target_id)
    assert (vol.observed_state, net.observed_state) == ("online", "active")
    assert vol.state_message == "online at sima/sim-000" and vol.provider_resource_id.startswith("sim-vol-")
    vm_op = await world.ok(await direct.provision(world.engine, name="app", provider="sima", region="sim-000",
                                                 image="img"))
    vm_wid = vm_op.target_id
    (vm,) = await world.sim.list_vms()

    disk_link = await world.link(vm_wid, vol.id, "storagelink")
    nic_link = await world.link(vm_wid, net.id, "networkinterface")
    for link in (disk_link, nic_link):
        done = await world.ok(await flows.attach(world.engine, link))
        assert [s["name"] for s in done.steps] == ["wait-ends", "attach", "record"]
    (volume,) = await world.sim.list_volumes()
    assert volume.attached_to == (vm.provider_vm_id,)
    assert world.sim.ex_interfaces(vm.provider_vm_id) == [net.provider_resource_id]
    async with world.sessions() as session:
        row = await session.get(WorkloadLink, disk_link)
        assert row.attributes["state"] == "active" and vm.provider_vm_id in row.attributes["state_message"]

    with pytest.raises(Conflict, match="still linked"):  # refused before anything is written
        await flows.delete(world.engine, vol.id)
    for link in (disk_link, nic_link):
        await world.ok(await flows.detach(world.engine, link))
    assert (await world.sim.list_volumes())[0].attached_to == ()
    assert world.sim.ex_interfaces(vm.provider_vm_id) == []
    async with world.sessions() as session:
        assert await session.get(WorkloadLink, disk_link) is None

    for wid in (vol.id, net.id):
        await world.ok(await flows.delete(world.engine, wid))
        gone = await world.workload(wid)
        assert (gone.observed_state, gone.present) == ("deleted", False)
    assert await world.sim.list_volumes() == [] and await world.sim.list_networks() == []
    await world.executor.drivers.close()


async def test_every_step_rerun_after_a_crash_adopts(world: World) -> None:
    """A crash after the provider acted but before the row recorded it re-runs the step: the second run
    finds the tagged resource (or the attachment) and creates nothing twice."""
    vol_op = await world.ok(await direct.create_resource(world.engine, "storage", name="data", provider="sima",
                                                        region="sim-000", size_gib=1))
    net_op = await world.ok(await direct.create_resource(world.engine, "network", name="lan", provider="sima",
                                                        region="sim-000"))
    for op, kind in ((vol_op, "storage"), (net_op, "network")):
        steps = flows.resource_steps(op.target_id, kind, name="again", provider="sima", region="sim-000", size_gib=1)
        rerun, _ = await store.submit(world.sessions, kind="create", steps=steps, target_id=op.target_id)
        done = await world.ok(rerun)
        assert any("adopting" in line for line in done.steps[0]["log"]), done.steps[0]["log"]
    assert len(await world.sim.list_volumes()) == 1 and len(await world.sim.list_networks()) == 1

    vm_op = await world.ok(await direct.provision(world.engine, name="app", provider="sima", region="sim-000",
                                                 image="img"))
    (vm,) = await world.sim.list_vms()
    link = await world.link(vm_op.target_id, net_op.target_id, "networkinterface")
    await world.ok(await flows.attach(world.engine, link))
    await world.ok(await flows.attach(world.engine, link))  # the attach step again: still one interface
    assert world.sim.ex_interfaces(vm.provider_vm_id) == [(await world.workload(net_op.target_id)).provider_resource_id]

    await world.ok(await flows.detach(world.engine, link))
    steps = flows.detach_steps(link, compute_id=vm_op.target_id, target_id=net_op.target_id, target_kind="network")
    again, _ = await store.submit(world.sessions, kind="detach", steps=steps, target_id=link)
    done = await world.ok(again)  # detached already, link row gone already: nothing to do, no error
    assert any("nothing to detach" in line or "was not attached" in line for line in done.steps[0]["log"])

    for op in (vol_op, net_op):
        await world.ok(await flows.delete(world.engine, op.target_id))
        at = {"provider": "sima", "workload_id": op.target_id}
        verb = "volume" if op is vol_op else "network"
        again, _ = await store.submit(world.sessions, kind="delete",
                                      steps=[flows.Step("delete", f"{verb}.delete", at)], target_id=op.target_id)
        done = await world.ok(again)
        assert "nothing to delete" in done.steps[0]["log"][-1]
    await world.executor.drivers.close()


async def test_attach_across_sites_and_to_a_missing_compute_roll_back(world: World) -> None:
    far = await world.ok(await direct.create_resource(world.engine, "storage", name="far", provider="sima",
                                                     region="sim-001", size_gib=1))
    vm_op = await world.ok(await direct.provision(world.engine, name="app", provider="sima", region="sim-000",
                                                 image="img"))
    link = await world.link(vm_op.target_id, far.target_id, "storagelink")
    done = await world.run(await flows.attach(world.engine, link))
    assert done.state == OperationState.ROLLED_BACK and "a link stays within one site" in done.error
    async with world.sessions() as session:
        row = await session.get(WorkloadLink, link)
        assert row.attributes["state"] == "error" and done.id in row.attributes["state_message"]
    assert (await world.sim.list_volumes())[0].attached_to == ()

    pending = Workload(kind="compute", name="never", observed_state="pending")  # its provision never runs
    async with world.sessions() as session:
        session.add(pending)
        await session.commit()
    link2 = await world.link(pending.id, far.target_id, "storagelink")
    steps = flows.attach_steps(link2, compute_id=pending.id, target_id=far.target_id, target_kind="storage")
    steps[0] = flows.Step("wait-ends", "link.wait_ends", {**steps[0].args, "timeout_s": 0.3}, compensate="link.failed")
    op, _ = await store.submit(world.sessions, kind="attach", steps=steps, target_id=link2)
    done = await world.run(op)
    assert done.state == OperationState.ROLLED_BACK and "still not placed" in done.error
    await world.executor.drivers.close()


async def _provisional(world: World, region: str, price: dict[str, Any] | None = None) -> Workload:
    """A volume made at ``region`` and marked as the workload service marks one created alone: placed
    there provisionally (at ``price``: its placement's price keys), bound by its first link."""
    made = await world.ok(await direct.create_resource(world.engine, "storage", name="alone", provider="sima",
                                                      region=region, size_gib=1))
    async with world.sessions() as session:
        row = await session.get(Workload, made.target_id)
        row.spec = {**row.spec, "disk_gib": 1, "placement": {"provider": "sima", "region": region,
                                                             "site": f"sima/{region}", "provisional": True,
                                                             **(price or {})}}
        session.add(row)
        await session.commit()
    return await world.workload(made.target_id)


def _moved(vol: Workload, region: str, link: str, compute: str, timeout_s: float = 600,
           price: dict[str, Any] | None = None) -> list[flows.Step]:
    """The attach plan of a first link that moves ``vol`` to ``region`` (at ``price`` there), as
    WorkloadService._bind plans it."""
    move = flows.move_step(vol.id, "storage", name=vol.name, source=vol.spec["placement"], size_gib=1,
                           dest={"provider": "sima", "region": region, "site": f"sima/{region}", **(price or {})})
    steps = flows.attach_steps(link, compute_id=compute, target_id=vol.id, target_kind="storage")
    steps[0] = flows.Step("wait-ends", "link.wait_ends", {**steps[0].args, "timeout_s": timeout_s},
                          compensate="link.failed")
    return [move, *steps]


async def test_a_first_link_moves_a_volume_across_regions_of_one_provider(world: World) -> None:
    vol = await _provisional(world, "sim-001")
    vm_op = await world.ok(await direct.provision(world.engine, name="app", provider="sima", region="sim-000",
                                                 image="img"))
    (vm,) = await world.sim.list_vms()
    link = await world.link(vm_op.target_id, vol.id, "storagelink")
    move, *_ = _moved(vol, "sim-000", link, vm_op.target_id)
    async with world.sessions() as session:
        plan = await flows.attach_plan(session, link, first=[move])
    op = await world.engine.submit(**plan.args())
    async with world.sessions() as session:  # the observer and the reconciler leave the volume alone meanwhile
        assert {link, vol.id} <= await observer.in_flight(session)
    done = await world.ok(op)
    async with world.sessions() as session:
        assert vol.id not in await observer.in_flight(session)
    assert [s["name"] for s in done.steps] == ["pending", "move", "wait-ends", "attach", "record"]
    (volume,) = await world.sim.list_volumes()  # the old one deleted before the new one was made
    assert volume.region == "sim-000" and volume.attached_to == (vm.provider_vm_id,)
    row = await world.workload(vol.id)
    assert row.provider_resource_id == volume.provider_volume_id and row.state_message == "online at sima/sim-000"
    assert row.spec["placement"] == {"provider": "sima", "region": "sim-000", "site": "sima/sim-000"}  # bound
    await world.executor.drivers.close()


def _volume_price(per_hour: str) -> dict[str, Any]:
    return {"storage_per_hour": per_hour, "cost_per_hour": {"amount": per_hour, "currency": "USD"}}


async def test_a_first_link_that_rolls_back_moves_the_volume_back_unbound(world: World) -> None:
    """Back where it was, at its price there: the spend ledger's open stretch is the old site's again."""
    vol = await _provisional(world, "sim-001", _volume_price("0.02"))
    pending = Workload(kind="compute", name="never", observed_state="pending")  # its provision never runs
    async with world.sessions() as session:
        session.add(pending)
        await session.commit()
    link = await world.link(pending.id, vol.id, "storagelink")
    steps = _moved(vol, "sim-000", link, pending.id, timeout_s=0.3, price=_volume_price("0.05"))
    async with world.sessions() as session:  # as _bind writes it with the plan: the new site, at its price
        row = await session.get(Workload, vol.id)
        row.spec = {**row.spec, "placement": {"provider": "sima", "region": "sim-000", "site": "sima/sim-000",
                                              **_volume_price("0.05")}}
        session.add(row)
        await session.commit()
    op, _ = await store.submit(world.sessions, kind="attach", target_id=link, steps=steps)
    done = await world.run(op)
    assert done.state == OperationState.ROLLED_BACK and "still not placed" in done.error
    (volume,) = await world.sim.list_volumes()
    assert volume.region == "sim-001" and volume.attached_to == ()
    row = await world.workload(vol.id)
    assert row.state_message == "online at sima/sim-001" and row.spec["placement"]["provisional"] is True
    assert row.spec["placement"]["region"] == "sim-001" and row.spec["placement"]["storage_per_hour"] == "0.02"
    async with world.sessions() as session:
        (now_open,) = (await session.exec(select(SpendAccrual).where(
            SpendAccrual.workload_id == vol.id, col(SpendAccrual.period_end).is_(None)))).all()
    assert (now_open.site, Decimal(now_open.price_per_hour), now_open.price_source) == (
        "sima/sim-001", Decimal("0.02"), "volume")
    await world.executor.drivers.close()
