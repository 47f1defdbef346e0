"""HA restart of a compute with network interfaces, on the sim provider: each interface comes back on the
restarted copy, with its MAC, on the same network where it exists at the target (its twin of the project, or the
network following the compute from the lost provider), and the plan and the protection state say which; where
none can be had, the restart says why instead of dropping the interface silently."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from metavmm.catalog.models import OperationState, Provider, Workload, WorkloadLink
from metavmm.foundation.records import NetworkInfo, VmState
from metavmm.services.operations import store
from metavmm.services.protection.ha import HaState
from metavmm.services.sync import sync_all
from metavmm.services.workloads.requests import CreateRequest, LinkSpec
from tests.services.protection.test_ha import Broker, lose, make_broker


@pytest.fixture
async def hab(sqlite_sessions: Any) -> AsyncIterator[Broker]:
    async with make_broker(sqlite_sessions) as b:
        yield b


async def _network(b: Broker, provider: str, name: str = "lan", cidr: str = "10.9.0.0/24") -> str:
    made = await b.workloads.create(b.alpha, CreateRequest(kind="network", name=name, cidr=cidr,
                                                           site=f"{provider}/sim-000"))
    assert (await b.run(made.operation.id)).state == OperationState.SUCCEEDED
    return made.workload.id


async def _plug(b: Broker, wid: str, nid: str, mac: str) -> str:
    link, op = await b.workloads.link(b.alpha, wid, LinkSpec(target_id=nid, mac=mac))
    assert (await b.run(op.id)).state == OperationState.SUCCEEDED, (await b.run(op.id)).error
    return link.id


async def _at(b: Broker, workload_id: str) -> str:
    async with b.sessions() as session:
        wl = await session.get(Workload, workload_id)
        return (await session.get(Provider, wl.provider_id)).name


async def _link(b: Broker, link_id: str) -> WorkloadLink:
    async with b.sessions() as session:
        return await session.get(WorkloadLink, link_id)


def _nics(b: Broker, provider: str, workload_id: str) -> dict[str, str | None]:
    """The networks (by name -> tag) the workload's VM at ``provider`` has an interface on, as the sim has it."""
    vms = {vm.provider_vm_id for vm in b.sim(provider).ex_vms() if vm.workload_id == workload_id}
    with b.sim(provider).state.read() as tx:
        return {n.name: n.workload_id for n in tx.all(NetworkInfo) if set(tx.nics(n.provider_network_id)) & vms}


async def _restart(b: Broker, wid: str, lost: str) -> tuple[Any, Any]:
    await b.ha.protect(b.alpha, wid)
    await lose(b, lost)
    await b.ha.check()  # waiting for a fence
    prot, report = await b.ha.confirm_fence(b.admin, wid)
    op = await b.run(report.operations[0])
    return prot, op


async def test_the_network_follows_the_compute_or_its_twin_takes_the_interface(hab: Broker) -> None:
    b = hab
    wid = await b.create("hasa")
    lan = await _network(b, "hasa", "lan")
    dmz = await _network(b, "hasa", "dmz", "10.8.0.0/24")
    twin = await _network(b, "hasb", "dmz", "10.8.0.0/24")  # the project's dmz at hasb too
    lan_link = await _plug(b, wid, lan, "52:54:00:aa:00:01")
    dmz_link = await _plug(b, wid, dmz, "52:54:00:aa:00:02")
    assert _nics(b, "hasa", wid) == {"lan": lan, "dmz": dmz}

    prot, op = await _restart(b, wid, "hasa")
    # the plan says, before it runs, where each interface goes
    assert "network lan follows it" in prot.message and "with 10.9.0.0/24" in prot.message
    assert f"network dmz re-attached on network dmz ({twin}) at hasb/" in prot.message
    assert op.state == OperationState.SUCCEEDED, op.error
    assert [s["name"] for s in op.steps][-2:] == ["networks", "settle"]
    assert b.copies(wid)["hasb"] == [VmState.RUNNING]
    # lan was not at hasb: created there with its CIDR, recorded there; dmz: the interface is on the twin
    assert _nics(b, "hasb", wid) == {"lan": lan, "dmz": twin}
    assert await _at(b, lan) == "hasb" and await _at(b, dmz) == "hasa"
    made = [n for n in await b.sim("hasb").list_networks() if n.workload_id == lan]
    assert len(made) == 1 and made[0].cidr == "10.9.0.0/24"
    assert "created there with 10.9.0.0/24" in op.outputs["networks"][lan_link]
    link = await _link(b, lan_link)
    assert link.attributes["state"] == "active" and link.attributes["mac"] == "52:54:00:aa:00:01"
    link = await _link(b, dmz_link)
    assert link.target_id == twin and link.attributes["state"] == "active"
    assert link.attributes["mac"] == "52:54:00:aa:00:02"
    _, prot, _ = await b.row(wid)
    assert prot.state == HaState.PROTECTED and "NOT re-attached" not in prot.message
    assert "; interfaces on network " in prot.message
    assert f"network lan ({made[0].provider_network_id}): created there" in prot.message


async def test_an_interface_without_a_network_at_the_target_is_reported_not_dropped(hab: Broker) -> None:
    """The network is at hasc, the compute's provider (hasa) answers: the network stays for the other compute on
    it, and no network of that name is at the target, so the copy runs without the interface, and says so."""
    b = hab
    wid = await b.create("hasa")
    other = await b.create("hasa")
    lan = await _network(b, "hasa", "lan")
    link_id = await _plug(b, wid, lan, "52:54:00:aa:00:03")
    await _plug(b, other, lan, "52:54:00:aa:00:04")
    await b.ha.protect(b.alpha, wid)
    vm = next(vm for vm in b.sim("hasa").ex_vms() if vm.workload_id == wid)
    await b.sim("hasa").fence_vm(vm.provider_vm_id)  # the VM vanished at a provider that answers
    await sync_all(b.sessions, b.config)
    report = await b.ha.check()
    assert report.operations, report.findings
    _, prot, _ = await b.row(wid)
    assert "interface NOT re-attached: network lan stays at hasa for compute db" in prot.message
    op = await b.run(report.operations[0])
    assert op.state == OperationState.SUCCEEDED, op.error
    at = await _at(b, wid)
    assert at != "hasa" and b.copies(wid)[at] == [VmState.RUNNING] and _nics(b, at, wid) == {}
    assert await _at(b, lan) == "hasa" and _nics(b, "hasa", other) == {"lan": lan}
    events = " ".join(e.message for e in await store.events(b.sessions, op.id))
    assert "the restarted copy runs without that interface" in events
    link = await _link(b, link_id)
    assert link.attributes["state"] == "inactive" and "stays at hasa" in link.attributes["state_message"]
    _, prot, _ = await b.row(wid)
    assert prot.state == HaState.PROTECTED and "interface NOT re-attached" in prot.message
