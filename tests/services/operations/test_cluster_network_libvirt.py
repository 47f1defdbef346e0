"""A class's network made real on the system libvirt daemon (qemu:///system, TCG; dnsmasq serves the
network's DHCP): every seat has an interface on the class's network with its own MAC, and the network's
``<dhcp>`` holds one ``<host mac name ip>`` reservation per seat. A scale keeps the others' names and
addresses; a delete removes the reservations, and the network when the class created it."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import libvirt
import pytest

from metavmm.drivers.libvirt import LibvirtDriver
from tests.services.operations.test_libvirt_resources import API, URI, client, devices, domain_xml, done
from tests.subnets import free_subnets

__all__ = ["client"]  # the REST client on a real libvirt provider, and its cleanup


def reservations(network: str) -> set[tuple[str, str, str]]:
    """(mac, ip, name) of the running network's DHCP hosts (what dnsmasq serves)."""
    conn = libvirt.open(URI)
    try:
        doc = ET.fromstring(conn.networkLookupByName(network).XMLDesc(0))
    finally:
        conn.close()
    return {(h.get("mac", ""), h.get("ip", ""), h.get("name", "")) for h in doc.findall("ip/dhcp/host")}


def class_interfaces(xml: str) -> tuple[str, list[tuple[str, str]]]:
    """A domain definition's name and its (network, MAC) interfaces on libvirt networks."""
    doc = ET.fromstring(xml)
    return doc.findtext("name") or "", [(i.find("source").get("network", ""), i.find("mac").get("address", ""))
                                        for i in doc.findall("devices/interface[@type='network']")]


def spy_on_domains(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[str]]:
    """What the driver gives the real daemon to define, and every device attached to a domain afterwards
    (the spies record it and pass it on)."""
    defined: list[str] = []
    plugged: list[str] = []
    define, attach = LibvirtDriver._define_and_start, libvirt.virDomain.attachDeviceFlags

    async def defining(self: LibvirtDriver, xml: str) -> Any:
        defined.append(xml)
        return await define(self, xml)

    def attaching(self: libvirt.virDomain, xml: str, flags: int = 0) -> int:
        plugged.append(xml)
        return attach(self, xml, flags)

    monkeypatch.setattr(LibvirtDriver, "_define_and_start", defining)
    monkeypatch.setattr(libvirt.virDomain, "attachDeviceFlags", attaching)
    return defined, plugged


def networks() -> set[str]:
    conn = libvirt.open(URI)
    try:
        return {n.name() for n in conn.listAllNetworks()}
    finally:
        conn.close()


async def settled(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    """Every operation the request started succeeded; the cluster as it is then."""
    for op in body["operations"]:
        await done(client, op["id"])
    return await (await client.get(f"{API}/clusters/{body['id']}")).json()


def expected(cluster: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(s["mac"], s["address"].split("/")[0], s["hostname"]) for s in cluster["seats"]}


async def test_seats_get_their_addresses_by_dhcp_reservations_on_the_class_network(client: Any) -> None:
    subnet, own = free_subnets(2)  # ranges no bridge of this machine holds (the second: the class's own network)
    resp = await client.post(f"{API}/workloads", json={"kind": "network", "name": "room", "cidr": f"{subnet}.0/24"})
    assert resp.status == 202, await resp.text()
    net = await resp.json()
    await done(client, net["operation"]["id"])
    room = f"mv-{net['workload']['id']}"

    # a class on the existing network: two seats, then three, then two
    resp = await client.post(f"{API}/clusters", json={"name": "lab", "seats": 2, "vcpus": 1, "ram_mib": 64,
                                                      "network_id": net["workload"]["id"]})
    assert resp.status == 202, await resp.text()
    lab = await settled(client, await resp.json())
    assert [(s["hostname"], s["address"]) for s in lab["seats"]] == [
        ("lab-01", f"{subnet}.10/24"), ("lab-02", f"{subnet}.11/24")]
    assert reservations(room) == expected(lab)
    for seat in lab["seats"]:  # the seat's interface on the class network has the reserved MAC
        iface = [i for i in domain_xml(f"mv-{seat['workload_id']}", inactive=False).findall("devices/interface")
                 if i.get("type") == "network"]
        assert [(i.find("source").get("network"), i.find("mac").get("address")) for i in iface] == [
            (room, seat["mac"])]
        assert room in devices(domain_xml(f"mv-{seat['workload_id']}", inactive=True))[1]
    grown = await settled(client, await (await client.post(f"{API}/clusters/{lab['id']}/scale",
                                                           json={"seats": 3})).json())
    assert [s["address"] for s in grown["seats"][:2]] == [s["address"] for s in lab["seats"]]
    assert grown["seats"][2]["hostname"] == "lab-03" and grown["seats"][2]["address"] == f"{subnet}.12/24"
    assert reservations(room) == expected(grown)
    shrunk = await settled(client, await (await client.post(f"{API}/clusters/{lab['id']}/scale",
                                                           json={"seats": 2})).json())
    assert reservations(room) == expected(lab) == expected(shrunk)  # lab-03's went with it; the others stayed
    resp = await client.delete(f"{API}/clusters/{lab['id']}")
    for op in await resp.json():
        await done(client, op["id"])
    assert reservations(room) == set() and room in networks()  # not the class's network: it stays

    # a class that makes its own network: deleted with it
    resp = await client.post(f"{API}/clusters", json={"name": "pop", "seats": 2, "vcpus": 1, "ram_mib": 64,
                                                      "cidr": f"{own}.0/24"})
    assert resp.status == 202, await resp.text()
    pop = await settled(client, await resp.json())
    made = f"mv-{pop['network_id']}"
    assert reservations(made) == expected(pop) and len(expected(pop)) == 2
    resp = await client.delete(f"{API}/clusters/{pop['id']}")
    for op in await resp.json():
        await done(client, op["id"])
    assert made not in networks()
    resp = await client.delete(f"{API}/workloads/{net['workload']['id']}")
    await done(client, (await resp.json())["id"])
    assert room not in networks()


async def test_a_seat_is_created_with_its_class_interface_and_nothing_is_hot_plugged(
        client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seat's interface on the class network is in the domain the driver defines (so cloud-init finds it
    at first boot and applies the network-config's static address to it), with the seat's MAC, and the
    link's attach plugs nothing into a running domain; a reset defines it the same way again. The spies
    record what reaches the real daemon and pass it on."""
    defined, plugged = spy_on_domains(monkeypatch)
    (subnet,) = free_subnets(1)  # a range no bridge of this machine holds
    resp = await client.post(f"{API}/clusters", json={"name": "cold", "seats": 2, "vcpus": 1, "ram_mib": 64,
                                                      "cidr": f"{subnet}.0/24"})
    assert resp.status == 202, await resp.text()
    lab = await settled(client, await resp.json())
    room = f"mv-{lab['network_id']}"
    at_create = dict(class_interfaces(xml) for xml in defined)
    for seat in lab["seats"]:
        assert at_create[f"mv-{seat['workload_id']}"] == [(room, seat["mac"])]
        links = await (await client.get(f"{API}/workloads/{seat['workload_id']}/links")).json()
        assert [(lk["target_id"], lk["attributes"]["mac"], lk["attributes"]["state"]) for lk in links] == [
            (lab["network_id"], seat["mac"], "active")]
    assert reservations(room) == expected(lab)
    assert not [x for x in plugged if "<interface" in x], plugged  # no interface was hot-plugged

    defined.clear()
    reset = await (await client.post(f"{API}/clusters/{lab['id']}/seats/2/reset")).json()
    assert (await done(client, reset["id"]))["state"] == "succeeded"
    seat = lab["seats"][1]
    assert dict(class_interfaces(xml) for xml in defined) == {f"mv-{seat['workload_id']}": [(room, seat["mac"])]}
    assert [(n, m) for n, m in class_interfaces(ET.tostring(domain_xml(f"mv-{seat['workload_id']}", inactive=True),
                                                              encoding="unicode"))[1]] == [(room, seat["mac"])]
    assert not [x for x in plugged if "<interface" in x], plugged
    for op in await (await client.delete(f"{API}/clusters/{lab['id']}")).json():
        await done(client, op["id"])
    assert room not in networks()
