"""HA restart of a compute with two network interfaces on two real libvirt daemons (shared storage): the copy
restarted at lv1 has both back, with their MACs: one on the network that followed it from the lost lv0 (made at
lv1 under the same name, since lv1 had none), one on the project's network of the same name at lv1 (its twin).
When lv0 comes back, its stale domain and its now orphaned copy of the followed network are removed; lv1's stay."""

from __future__ import annotations

import os

import pytest

from bench.ha_restart import HaHosts, broker, domains, virsh
from metavmm.catalog.models import OperationState, Provider, Workload, WorkloadLink
from metavmm.services.operations.reconcile import reconcile
from metavmm.services.workloads.requests import CreateRequest, LinkSpec


def interfaces(uri: str, name: str) -> dict[str, str]:
    """Network -> MAC of the domain's interfaces on libvirt networks."""
    rows = virsh(uri, "domiflist", name).splitlines()[2:]
    return {cols[2]: cols[4] for r in rows if len(cols := r.split()) == 5 and cols[1] == "network"}


def nets(uri: str) -> set[str]:
    return set(virsh(uri, "net-list", "--all", "--name").split())


async def test_restart_puts_the_interfaces_back_on_the_same_networks(hosts: HaHosts,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    work = hosts.root / "work"
    work.mkdir()
    monkeypatch.setenv("PATH", os.environ["PATH"])  # broker() puts its qemu-img shim first: undone after
    async with broker(hosts, work, lost_after=2) as b:
        wid = await b.create("ha-net")

        async def network(name: str, site: str) -> str:
            made = await b.workloads.create(b.caller, CreateRequest(kind="network", name=name, site=site))
            done = await b.run(made.operation.id)
            assert done.state == OperationState.SUCCEEDED, done.error
            return made.workload.id

        async def plug(nid: str, mac: str) -> str:
            link, op = await b.workloads.link(b.caller, wid, LinkSpec(target_id=nid, mac=mac))
            assert (await b.run(op.id)).state == OperationState.SUCCEEDED, (await b.run(op.id)).error
            return link.id

        # no CIDR: the lost daemon's bridges stay up on this one kernel (a dead host's would not), and two
        # bridges cannot hold one range
        lan, dmz = await network("hanet-lan", "lv0/host0"), await network("hanet-dmz", "lv0/host0")
        twin = await network("hanet-dmz", "lv1/host1")
        lan_link, dmz_link = await plug(lan, "52:54:00:5e:00:01"), await plug(dmz, "52:54:00:5e:00:02")
        vm0 = next(iter(domains(hosts.uri(0))))
        assert interfaces(hosts.uri(0), vm0) == {f"mv-{lan}": "52:54:00:5e:00:01", f"mv-{dmz}": "52:54:00:5e:00:02"}
        assert f"mv-{lan}" not in nets(hosts.uri(1))

        hosts.kill_daemon(0)
        await b.detect(0.2, wid)
        hosts.kill_domains(0)
        prot, report = await b.ha.confirm_fence(b.caller, wid)
        assert "network hanet-lan follows it" in prot.message
        assert f"network hanet-dmz re-attached on network hanet-dmz ({twin}) at lv1/host1" in prot.message
        op = await b.run(report.operations[0])
        assert op.state == OperationState.SUCCEEDED, op.error
        assert "created there" in op.outputs["networks"][lan_link]

        _, prot, at = await b.where(wid)
        assert at == "lv1" and "NOT re-attached" not in prot.message
        vm1 = next(n for n, s in domains(hosts.uri(1)).items() if s == "running")
        assert interfaces(hosts.uri(1), vm1) == {f"mv-{lan}": "52:54:00:5e:00:01",
                                                  f"mv-{twin}": "52:54:00:5e:00:02"}
        async with b.sessions() as session:
            net = await session.get(Workload, lan)
            assert (await session.get(Provider, net.provider_id)).name == "lv1"
            assert net.provider_resource_id == f"mv-{lan}"
            links = {i: await session.get(WorkloadLink, i) for i in (lan_link, dmz_link)}
        assert [lk.attributes["state"] for lk in links.values()] == ["active", "active"]
        assert links[dmz_link].target_id == twin and links[lan_link].target_id == lan
        steps = await b.step_times(op)
        print(f"\nHA restart with two interfaces: networks step {steps['networks']:.2f} s, steps {steps}")

        # lv0 comes back: its stale domain goes, then its copy of the network that followed the compute
        came = await b.back(hosts, 0)
        assert sorted(came["orphans"]) == sorted([wid, lan]), came
        assert came["after"][0] == {}, came
        if came["cleanup"] != ["succeeded", "succeeded"]:  # the network was deleted before the domain using it
            again = await reconcile(b.engine, b.executor.drivers)
            assert [w for _, _, w in again.orphans] == [lan]
            assert [(await b.run(op_id)).state for op_id in again.operations] == [OperationState.SUCCEEDED]
        assert f"mv-{lan}" not in nets(hosts.uri(0)) and f"mv-{lan}" in nets(hosts.uri(1))
        assert interfaces(hosts.uri(1), vm1)[f"mv-{lan}"] == "52:54:00:5e:00:01"
