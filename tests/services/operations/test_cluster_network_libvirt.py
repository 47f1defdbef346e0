"""A class's network made real on the system libvirt daemon (qemu:///system, TCG; dnsmasq serves the
network's DHCP): every seat has an interface on the class's network with its own MAC, and the network's
``<dhcp>`` holds one ``<host mac name ip>`` reservation per seat. A scale keeps the others' names and
addresses; a delete removes the reservations, and the network when the class created it."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import libvirt

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
