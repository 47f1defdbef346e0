"""HA restart on the sim provider: loss detection, fencing (refused, confirmed, through the provider), the restart
through the scheduler and the engine, the stale copy's cleanup, and project isolation."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlmodel import col, select

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Host, OperationState, Protection, Provider, Site, Workload
from metavmm.drivers.sim import SimDriver
from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import ConfigError, Conflict, Forbidden, NotFound, ValidationError
from metavmm.foundation.records import Capability, VmState
from metavmm.services.identity import Identity, get_or_create_project
from metavmm.services.observer import upsert_provider
from metavmm.services.operations import flows, store
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.executor import Executor
from metavmm.services.operations.reconcile import reconcile
from metavmm.services.placement import Placer, in_transit
from metavmm.services.protection.ha import HA_CATEGORY, HaService, HaState
from metavmm.services.protection.ha_disk import sharing, usable_disk
from metavmm.services.sync import sync_all
from metavmm.services.workloads.requests import CreateRequest
from metavmm.services.workloads.service import WorkloadService

CONFIG = """
providers:
  - {kind: sim, name: hasa, site_count: 1, hosts_per_site: 2}
  - {kind: sim, name: hasb, site_count: 1, hosts_per_site: 2}
  - {kind: sim, name: hasc, site_count: 1, hosts_per_site: 2}
ha: {lost_after_syncs: 2, shared_storage: [[hasa, hasb]]}
operations: {retry_base_s: 0.01, max_attempts: 2}
"""


@dataclass
class Broker:
    sessions: Any
    config: Any
    ha: HaService
    workloads: WorkloadService
    executor: Executor
    alpha: Identity
    beta: Identity
    admin: Identity

    def sim(self, name: str) -> SimDriver:
        return self.executor.drivers.get(name)  # type: ignore[return-value]

    async def run(self, op_id: str) -> Any:
        await self.executor.run(op_id)
        return await store.get(self.sessions, op_id)

    async def create(self, provider: str, caller: Identity | None = None) -> str:
        done = await self.workloads.create(caller or self.alpha, CreateRequest(name="db", vcpus=1, ram_mib=1024,
                                                                               providers=(provider,)))
        assert (await self.run(done.operation.id)).state == OperationState.SUCCEEDED
        return done.workload.id

    async def row(self, workload_id: str) -> tuple[Workload, Protection | None, str]:
        async with self.sessions() as session:
            wl = await session.get(Workload, workload_id)
            prot = await session.get(Protection, workload_id)
            provider = await session.get(Provider, wl.provider_id)
            return wl, prot, provider.name

    def copies(self, workload_id: str) -> dict[str, list[VmState]]:
        return {p: [vm.state for vm in self.sim(p).ex_vms() if vm.workload_id == workload_id]
                for p in ("hasa", "hasb", "hasc")}


@contextlib.asynccontextmanager
async def make_broker(sessions: Any, federation: str = CONFIG) -> AsyncIterator[Broker]:
    """The HA service over a synced three-provider sim federation (``federation``: CONFIG, or a variant of it)."""
    config = parse_config(federation)
    assert [r.error for r in await sync_all(sessions, config)] == [None] * 3
    async with session_scope(sessions) as session:
        alpha = await get_or_create_project(session, "alpha")
        beta = await get_or_create_project(session, "beta")
    ids = {"alpha": alpha.id, "beta": beta.id}
    who = {n: Identity(user_id=i, user=n, project_id=ids[p], project=p, role=r, via="token") for i, (n, p, r) in
           enumerate((("ann", "alpha", "member"), ("bob", "beta", "member"), ("root", "alpha", "admin")), 1)}
    engine = Engine(sessions, config, "sqlite://")  # not started: the tests run each operation
    placer = Placer(config)
    executor = Executor(sessions, config)
    b = Broker(sessions, config, HaService(sessions, config, engine, placer),
               WorkloadService(sessions, config, engine, placer), executor, who["ann"], who["bob"], who["root"])
    try:
        yield b
    finally:
        await executor.drivers.close()


@pytest.fixture
async def broker(sqlite_sessions: Any) -> AsyncIterator[Broker]:
    async with make_broker(sqlite_sessions) as b:
        yield b


async def lose(b: Broker, provider: str) -> None:
    """The provider stops answering for ``ha.lost_after_syncs`` syncs."""
    b.sim(provider).ex_set_reachable(False)
    for _ in range(b.config.ha.lost_after_syncs):
        await sync_all(b.sessions, b.config)


async def test_shared_storage_is_configuration() -> None:
    config = parse_config(CONFIG)
    assert sharing(config, "hasa") == {"hasb"} and sharing(config, "hasc") == frozenset()
    lv = parse_config("""
providers:
  - {kind: libvirt, name: lv0, storage_dir: /srv/shared}
  - {kind: libvirt, name: lv1, storage_dir: /srv/shared/}
  - {kind: libvirt, name: lv2, storage_dir: /srv/own}
""")
    assert sharing(lv, "lv0") == {"lv1"} and sharing(lv, "lv2") == frozenset()
    with pytest.raises(ConfigError, match="unknown providers"):
        parse_config("providers: []\nha: {shared_storage: [[nowhere]]}")


async def test_unreachable_host_waits_for_a_fence_then_restarts_once_confirmed(broker: Broker) -> None:
    b = broker
    wid = await b.create("hasa")
    prot = await b.ha.protect(b.alpha, wid)
    assert (prot.ha, prot.state) == (True, HaState.PROTECTED)
    assert HA_CATEGORY in (await b.row(wid))[0].spec["mixins"]  # OCCI renders the ha mixin
    assert (await b.ha.check()).findings == []  # healthy: nothing to do

    b.sim("hasa").ex_set_reachable(False)
    await sync_all(b.sessions, b.config)
    assert (await b.ha.check()).findings == []  # one failed sync is a blip, not a loss
    await sync_all(b.sessions, b.config)
    report = await b.ha.check()
    assert [(f.cause, f.state, f.operation_id) for f in report.findings] == \
        [("unreachable", HaState.WAITING_FOR_FENCE, None)]
    _, prot, at = await b.row(wid)
    assert at == "hasa" and "neither destroyed nor proven gone" in prot.message and "--confirm" in prot.message
    assert (await b.ha.check()).operations == []  # it keeps waiting: no second copy
    assert b.copies(wid)["hasb"] == []

    with pytest.raises(Forbidden):
        await b.ha.confirm_fence(b.alpha, wid)  # a member cannot vouch for a dead host
    prot, report = await b.ha.confirm_fence(b.admin, wid)
    assert prot.state == HaState.RESTARTING and len(report.operations) == 1
    async with b.sessions() as session:  # the restart's new host is taken in the in-transit ledger at once
        ledger = await in_transit(session)
        at_hasb = (await session.exec(select(Host.id).join(Site, col(Host.site_id) == Site.id)
                                      .join(Provider, col(Site.provider_id) == Provider.id)
                                      .where(Provider.name == "hasb"))).all()
    assert wid in ledger and [(ledger.vcpus[h], ledger.ram_mib[h]) for h in at_hasb if ledger.vcpus[h]] == [(1, 1024)]
    op = await b.run(report.operations[0])
    assert op.state == OperationState.SUCCEEDED, op.error
    await sync_all(b.sessions, b.config)
    async with b.sessions() as session:  # hasb's sync counts the copy now: the ledger lets it go
        assert wid not in await in_transit(session)
    assert op.outputs["fenced"] == "confirmed"
    wl, prot, at = await b.row(wid)
    assert (at, wl.observed_state, prot.state) == ("hasb", "running", HaState.PROTECTED)
    assert "after hasa was lost" in prot.message
    assert b.copies(wid)["hasb"] == [VmState.RUNNING]
    with pytest.raises(Conflict, match="nothing waits for a fence"):
        await b.ha.confirm_fence(b.admin, wid)

    # the lost host comes back with its stale copy: cleaned up, never started, the new copy untouched
    b.sim("hasa").ex_set_reachable(True)
    assert b.copies(wid)["hasa"] == [VmState.RUNNING]
    await sync_all(b.sessions, b.config)
    assert (await b.row(wid))[2] == "hasb"  # the listing at hasa does not claim the workload back
    found = await reconcile(b.ha.engine, b.executor.drivers)
    assert [w for _, _, w in found.orphans] == [wid]
    for op_id in found.operations:
        assert (await b.run(op_id)).state == OperationState.SUCCEEDED
    assert b.copies(wid) == {"hasa": [], "hasb": [VmState.RUNNING], "hasc": []}
    assert (await b.ha.check()).findings == []


async def test_a_crashed_vm_is_started_in_place_and_else_fenced_and_restarted(broker: Broker) -> None:
    b = broker
    wid = await b.create("hasa")
    await b.ha.protect(b.alpha, wid)
    vm_id = (await b.row(wid))[0].provider_resource_id
    b.sim("hasa").ex_set_state(vm_id, VmState.ERROR)  # crashed; the sim will not start it again
    await sync_all(b.sessions, b.config)
    first = await b.ha.check()
    assert [(f.cause, f.state) for f in first.findings] == [("crashed", HaState.STARTING)]
    assert (await b.run(first.operations[0])).state != OperationState.SUCCEEDED  # it will not start there
    second = await b.ha.check()
    assert [(f.cause, f.state) for f in second.findings] == [("crashed", HaState.RESTARTING)]
    op = await b.run(second.operations[0])
    assert op.state == OperationState.SUCCEEDED, op.error
    assert op.outputs["fenced"] == "destroyed"  # the provider answered: the old copy was destroyed first
    assert b.copies(wid) == {"hasa": [], "hasb": [VmState.RUNNING], "hasc": []}
    wl, prot, at = await b.row(wid)
    assert (at, prot.state, wl.spec["placement"]["provider"]) == ("hasb", HaState.PROTECTED, "hasb")


async def test_a_vm_that_went_down_is_started_again_where_it_is(broker: Broker) -> None:
    b = broker
    wid = await b.create("hasa")
    await b.ha.protect(b.alpha, wid)
    b.sim("hasa").ex_set_state((await b.row(wid))[0].provider_resource_id, VmState.STOPPED)  # not by the broker
    await sync_all(b.sessions, b.config)
    report = await b.ha.check()
    assert [(f.cause, f.state) for f in report.findings] == [("down", HaState.STARTING)]
    assert (await b.run(report.operations[0])).state == OperationState.SUCCEEDED
    assert b.copies(wid) == {"hasa": [VmState.RUNNING], "hasb": [], "hasc": []}  # the same VM, where it was
    assert (await b.ha.check()).findings == []
    assert (await b.row(wid))[1].state == HaState.PROTECTED


async def test_the_fence_refuses_when_the_old_host_stops_answering(broker: Broker) -> None:
    b = broker
    wid = await b.create("hasa")
    await b.ha.protect(b.alpha, wid)
    vm_id = (await b.row(wid))[0].provider_resource_id
    await b.sim("hasa").delete_vm(vm_id)  # gone behind the broker's back, the host still answers
    await sync_all(b.sessions, b.config)
    report = await b.ha.check()
    assert [(f.cause, f.state) for f in report.findings] == [("vanished", HaState.RESTARTING)]
    b.sim("hasa").ex_set_reachable(False)  # and now the host is unreachable: nothing proves the VM gone
    op = await b.run(report.operations[0])
    assert op.state == OperationState.ROLLED_BACK and "cannot fence the old copy at hasa" in op.error
    assert b.copies(wid)["hasb"] == []  # no second copy started
    again = await b.ha.check()  # tried again at the next pass; the row says what failed
    assert "trying again after: ha_restart" in again.findings[0].message
    assert "cannot fence the old copy" in (await b.row(wid))[1].message
    b.sim("hasa").ex_set_reachable(True)
    op = await b.run(again.operations[0])
    assert op.state == OperationState.SUCCEEDED and op.outputs["fenced"] == "absent"  # proven gone
    assert b.copies(wid) == {"hasa": [], "hasb": [VmState.RUNNING], "hasc": []}


async def test_no_restart_without_a_usable_disk_or_of_what_was_stopped(broker: Broker) -> None:
    b = broker
    local = await b.create("hasc")  # hasc shares its storage with nobody
    await b.ha.protect(b.alpha, local)
    await lose(b, "hasc")
    assert [(f.cause, f.state) for f in (await b.ha.check()).findings] == [("unreachable", HaState.NO_DISK)]
    _, prot, at = await b.row(local)
    assert (at, prot.state) == ("hasc", HaState.NO_DISK) and "no other provider reaches" in prot.message
    assert (await b.ha.check()).findings[0].state == HaState.NO_DISK  # and stays so: no fence to wait for
    b.sim("hasc").ex_set_reachable(True)

    stopped = await b.create("hasa")
    await b.ha.protect(b.alpha, stopped)
    op = await b.workloads.act(b.alpha, stopped, "stop")
    assert (await b.run(op.id)).state == OperationState.SUCCEEDED
    await lose(b, "hasa")
    assert [f.workload_id for f in (await b.ha.check()).findings] == []  # stopped on purpose: not restarted


async def test_marking_is_scoped_to_the_project(sessions: Any) -> None:
    """On SQLite and PostgreSQL (whose foreign keys a purge must respect)."""
    async with make_broker(sessions) as b:
        await _scoping(b)


async def _scoping(b: Broker) -> None:
    wid = await b.create("hasa")
    with pytest.raises(NotFound):
        await b.ha.protect(b.beta, wid)  # another project's id is answered as absent
    with pytest.raises(NotFound):
        await b.ha.get(b.beta, wid)
    reader = Identity(user_id=9, user="rita", project_id=b.alpha.project_id, project="alpha", role="reader",
                      via="token")
    with pytest.raises(Forbidden):
        await b.ha.protect(reader, wid)
    with pytest.raises(NotFound, match="not marked"):
        await b.ha.get(b.alpha, wid)
    await b.ha.protect(b.alpha, wid)
    assert [p.workload_id for p in await b.ha.list(b.alpha)] == [wid]
    assert await b.ha.list(b.beta) == []
    with pytest.raises(NotFound):
        await b.ha.unprotect(b.beta, wid)
    await b.ha.unprotect(b.alpha, wid)
    wl, prot, _ = await b.row(wid)
    assert prot is None and HA_CATEGORY not in wl.spec["mixins"]
    async with b.sessions() as session:
        assert (await session.exec(select(Protection))).all() == []
    await b.ha.protect(b.alpha, wid)  # a purged workload takes its protection row along (foreign keys hold)
    purge = await b.run((await flows.delete(b.ha.engine, wid, purge=True)).id)
    assert purge.state == OperationState.SUCCEEDED, purge.error
    async with b.sessions() as session:
        assert await session.get(Workload, wid) is None and await session.get(Protection, wid) is None
    with pytest.raises(ValidationError):
        net = await b.workloads.create(b.alpha, CreateRequest(kind="network", name="n", cidr="10.9.0.0/24",
                                                              providers=("hasa",)))
        await b.ha.protect(b.alpha, net.workload.id)


async def test_a_provider_that_cannot_fence_waits_for_an_admin(broker: Broker) -> None:
    """A crashed copy the provider still lists, at a provider whose driver declares no fence (here: the
    sim's row without it, as an AWS or GCE provider's is), is never destroyed by guesswork: the restart
    waits, and goes ahead once an admin confirms."""
    b = broker
    wid = await b.create("hasa")
    await b.ha.protect(b.alpha, wid)
    vm_id = (await b.row(wid))[0].provider_resource_id
    b.sim("hasa").ex_set_state(vm_id, VmState.ERROR)
    await sync_all(b.sessions, b.config)
    assert (await b.run((await b.ha.check()).operations[0])).state != OperationState.SUCCEEDED  # no start there
    b.sim("hasa").capabilities = b.sim("hasa").capabilities - {Capability.FENCE}
    async with session_scope(b.sessions) as session:
        row = (await session.exec(select(Provider).where(Provider.name == "hasa"))).one()
        assert "fence" in row.capabilities
        row.capabilities = [c for c in row.capabilities if c != "fence"]
        session.add(row)
    report = await b.ha.check()
    assert [(f.cause, f.state) for f in report.findings] == [("crashed", HaState.WAITING_FOR_FENCE)]
    assert report.operations == [] and "hasa, which cannot fence a VM" in report.findings[0].message
    assert b.copies(wid) == {"hasa": [VmState.ERROR], "hasb": [], "hasc": []}
    _, report = await b.ha.confirm_fence(b.admin, wid)
    op = await b.run(report.operations[0])
    assert op.state == OperationState.SUCCEEDED and op.outputs["fenced"] == "confirmed", op.error
    assert b.copies(wid) == {"hasa": [VmState.ERROR], "hasb": [VmState.RUNNING], "hasc": []}


async def test_a_lost_host_s_disk_is_restarted_inside_its_provider_where_another_host_up_mounts_it(
        sqlite_sessions: Any, tmp_path: Any) -> None:
    """usable_disk's first answer: the same vCenter, on the hosts (from its inventory) that are up and mount the
    disk's datastore; the other providers sharing its storage are the fallback. Not when the whole provider is
    lost, nor when no other host up mounts it, nor when the inventory never said where the disk is."""
    (tmp_path / "pw").write_text("x")
    config = parse_config(f"""
providers:
  - {{kind: vmware, name: vc, endpoint: "127.0.0.1:1", user: u, credentials: {{file: {tmp_path / 'pw'}}}}}
  - {{kind: sim, name: simb, site_count: 1, hosts_per_site: 1}}
ha: {{shared_storage: [[vc, simb]]}}
""")
    async with session_scope(sqlite_sessions) as s:
        vc = await upsert_provider(s, config.provider("vc"), ())
        site = Site(provider_id=vc.id, region="DC0", name="vc/DC0")
        s.add(site)
        await s.flush()
        hosts = {name: Host(site_id=site.id, name=name, hypervisor_type="esxi", cpu_arch="x86_64", state=state,
                            storage=storage)
                 for name, state, storage in (("lost", "down", ["shared", "own-lost"]), ("h1", "up", ["shared", "x"]),
                                              ("h2", "up", ["own-h2"]), ("h3", "down", ["shared"]))}
        s.add_all(hosts.values())
        await s.flush()
        wl = Workload(kind="compute", name="db", provider_id=vc.id, site_id=site.id, host_id=hosts["lost"].id,
                      provider_resource_id="4216f8b3", hardware={"disks": ["[shared] db/db.vmdk"]})
        ids = {name: h.id for name, h in hosts.items()}

        disk = await usable_disk(s, config, wl, "vc", "host-down")
        assert disk is not None and (disk.inside, disk.location, disk.providers, disk.sites) == \
            (True, "[shared] db/db.vmdk", {"vc"}, {"vc/DC0"})
        assert disk.exclude_hosts == {ids["lost"], ids["h2"], ids["h3"]}  # only h1: up, and mounts it
        assert disk.fallback is not None and disk.fallback.providers == {"simb"} and not disk.fallback.inside
        for cause in ("crashed", "down", "vanished"):
            assert (await usable_disk(s, config, wl, "vc", cause)).inside  # type: ignore[union-attr]
        assert (await usable_disk(s, config, wl, "vc", "unreachable")).providers == {"simb"}  # type: ignore[union-attr]
        for hardware in ({"disks": ["[own-lost] db/db.vmdk"]}, {"disks": ["[shared] a.vmdk", "[own-lost] b.vmdk"]},
                         {"disks": ["not a datastore path"]}, {}):
            wl.hardware = hardware
            assert not (await usable_disk(s, config, wl, "vc", "host-down")).inside  # type: ignore[union-attr]
        wl.hardware = {"disks": ["[shared] db/db.vmdk"]}
        hosts["h1"].state = "down"
        assert not (await usable_disk(s, config, wl, "vc", "host-down")).inside  # type: ignore[union-attr]
