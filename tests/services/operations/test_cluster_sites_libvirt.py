"""A class over two libvirt sites (the two session daemons, each a host of its own; QEMU TCG): the class
network is made at each site, on that site's daemon, with that site's own range (``cidrs``: the two
daemons share this machine's kernel, where two bridges cannot hold one range), and each seat is plugged
into its own site's network with its MAC and its DHCP reservation (an address of that range, its host
name) there and in no other. A delete leaves no network, domain or disk on either daemon."""

from __future__ import annotations

import asyncio
import uuid
import xml.etree.ElementTree as ET

import libvirt

from bench.libvirt_hosts import LibvirtHosts
from metavmm.drivers.libvirt import LibvirtDriver, bridge_name
from metavmm.foundation.records import NetworkSpec
from metavmm.services.clusters import ClusterRequest
from metavmm.services.operations.engine import Engine
from tests.services.operations import test_libvirt_flows as base
from tests.services.operations.test_cluster_libvirt import class_setup, ended, engine  # noqa: F401
from tests.subnets import free_subnets


def networks(uri: str) -> dict[str, ET.Element]:
    """Name -> definition of every network the daemon at ``uri`` has (defined or running)."""
    conn = libvirt.open(uri)
    try:
        return {n.name(): ET.fromstring(n.XMLDesc(0)) for n in conn.listAllNetworks()}
    finally:
        conn.close()


def plugged(uri: str, name: str) -> list[tuple[str, str]]:
    """(network, MAC) of the running domain's interfaces on libvirt networks."""
    conn = libvirt.open(uri)
    try:
        doc = ET.fromstring(conn.lookupByName(name).XMLDesc(0))
    finally:
        conn.close()
    return [(i.find("source").get("network", ""), i.find("mac").get("address", ""))  # type: ignore[union-attr]
            for i in doc.findall("devices/interface[@type='network']")]


async def test_a_class_over_two_sites_gets_a_network_at_each_and_leaves_nothing(
        engine: Engine, libvirt_hosts: LibvirtHosts) -> None:  # noqa: F811
    uris = libvirt_hosts.uris
    nets_before = [set(networks(u)) for u in uris]
    disks_before = [libvirt_hosts.disk_files(i) for i in (0, 1)]
    subnets = free_subnets(2)  # site i: subnets[i]; ranges no bridge of this machine holds
    clusters, caller, image_id = await class_setup(engine, libvirt_hosts.base_image)
    await engine.start(run_steps=True, poll_s=0.05)
    try:
        view = await clusters.create(caller, ClusterRequest(
            name="two-site", seats=2, vcpus=1, ram_mib=64, image=image_id, sites=("host0", "host1"),
            cidrs={"host0": f"{subnets[0]}.0/24", "host1": f"{subnets[1]}.0/24"}, max_per_site=1))
        done = await ended(engine.sessions, list(view.operations))
        assert [op.state for op in done] == ["succeeded"] * len(done), [op.error for op in done]
        view = await clusters.get(caller, view.cluster.id)
        assert view.running == 2
        made = view.cluster.template["networks"]  # site -> the network workload the class made there
        assert len(made) == 2 and len(set(made.values())) == 2

        at = {int(s.workload.spec["placement"]["provider"].removeprefix("lv")): s for s in view.seats}
        assert sorted(at) == [0, 1]  # one seat at each site
        for i, seat in at.items():
            own = f"mv-{made[seat.workload.spec['site']]}"
            new = {name: doc for name, doc in networks(uris[i]).items() if name not in nets_before[i]}
            assert list(new) == [own]  # the site's own network, made on its own daemon
            ip = new[own].find("ip")
            assert ip is not None and (ip.get("address"), ip.get("netmask")) == (f"{subnets[i]}.1", "255.255.255.0")
            hosts = {(h.get("mac"), h.get("ip"), h.get("name")) for h in new[own].findall("ip/dhcp/host")}
            assert hosts == {(seat.mac, seat.address.split("/")[0], seat.hostname)}  # this site's seat only
            assert seat.address == f"{subnets[i]}.{9 + seat.serial}/24"  # its serial's host number there
            assert plugged(uris[i], f"mv-{seat.workload.id}") == [(own, seat.mac)]

        gone = await ended(engine.sessions, await clusters.delete(caller, view.cluster.id))
        assert [op.state for op in gone] == ["succeeded"] * 4, [(op.kind, op.error) for op in gone]  # 2 seats, 2 nets
    finally:
        await engine.stop()
    for i, uri in enumerate(uris):
        assert base.domains(uri) == {}
        assert set(networks(uri)) == nets_before[i]
        assert libvirt_hosts.disk_files(i) == disks_before[i]


async def test_two_daemons_on_one_machine_make_networks_at_once(engine: Engine) -> None:  # noqa: F811
    """Each network's bridge is named by the broker: libvirt's own pick (the first ``virbrN`` its daemon does
    not use) gave both daemons virbr0, and the second network failed to start ("File exists")."""
    drivers = [LibvirtDriver(engine.config.provider(f"lv{i}")) for i in (0, 1)]
    specs = [NetworkSpec(name="n", region=f"host{i}", cidr=f"{prefix}.0/24", workload_id=str(uuid.uuid4()))
             for i, prefix in enumerate(free_subnets(2))]
    try:
        made = await asyncio.gather(*(d.create_network(spec) for d, spec in zip(drivers, specs, strict=True)))
        for i, (info, spec) in enumerate(zip(made, specs, strict=True)):
            uri = engine.config.provider(f"lv{i}").endpoint
            doc = networks(uri)[info.provider_network_id]
            assert doc.find("bridge").get("name") == bridge_name(f"mv-{spec.workload_id}", uri)  # type: ignore[union-attr]
        await asyncio.gather(*(d.delete_network(i.provider_network_id) for d, i in zip(drivers, made, strict=True)))
    finally:
        await asyncio.gather(*(d.close() for d in drivers))
