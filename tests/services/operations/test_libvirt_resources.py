"""End to end on the real libvirt daemon (qemu:///system, TCG): networks and volumes made through REST and
through OCCI by the engine, a compute linked to all of them (the domain XML carries the disks and the
NICs), unlinked, deleted, and nothing left at the provider."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import libvirt
import pytest
from sqlmodel import select
from yarl import URL

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog.models import Workload
from metavmm.foundation.config import parse_config
from metavmm.services.sync import sync_all
from tests.auth_helpers import authorize
from tests.polling import polls

URI = "qemu:///system"
API = "/api/v1"
INFRA = "http://schemas.ogf.org/occi/infrastructure#"
OCCI = {"Content-Type": "text/occi", "Accept": "text/occi"}
JSONH = {"Accept": "application/occi+json"}
PROVIDER = "lv-res"


@pytest.fixture
async def client(aiohttp_client: Any, sqlite_url: str) -> AsyncIterator[Any]:
    storage = Path(tempfile.mkdtemp(prefix="metavmm-res-", dir="/var/tmp"))
    os.chmod(storage, 0o755)  # the daemon's QEMU (another user) must reach the disks
    config = parse_config(f"""
providers:
  - {{name: {PROVIDER}, kind: libvirt, endpoint: "{URI}", domain_type: qemu, storage_dir: "{storage}",
     sites: [{{region: local}}]}}
operations: {{reconcile_interval_s: 0, retry_base_s: 0.05}}
scheduler: {{cpu_allocation_ratio: 8}}  # room for a class of 3 one-vCPU seats on a 2-core machine
prices:
  - {{provider: {PROVIDER}, region: local, currency: USD, effective_date: 2026-01-01, source: test rates,
     items: [{{flavor: custom, unit: vcpu-hour, amount: 0.01}}, {{flavor: custom, unit: gib-hour, amount: 0.002}}]}}
""")
    app = create_app(config, sqlite_url, sync=False)
    cl = await aiohttp_client(app)
    assert (await sync_all(app[keys.SESSIONS], config))[0].error is None
    await authorize(cl, "member", project="partner")
    try:
        yield cl
    finally:
        await leftovers(app, [PROVIDER], [storage])


async def leftovers(app: Any, providers: Sequence[str], dirs: Sequence[Path]) -> None:
    """Remove whatever a failed test left behind: the domains and networks of the catalog's workloads,
    the providers' pools and storage directories."""
    async with app[keys.SESSIONS]() as session:
        ids = set((await session.exec(select(Workload.id))).all())
    conn = libvirt.open(URI)
    try:
        for dom in conn.listAllDomains():  # mv-<workload id>; gone meanwhile if a delete still ran
            if dom.name()[3:] in ids:
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
                with contextlib.suppress(libvirt.libvirtError):
                    dom.undefine()
        for net in conn.listAllNetworks():
            if net.name()[3:] in ids:
                with contextlib.suppress(libvirt.libvirtError):
                    net.destroy()
                with contextlib.suppress(libvirt.libvirtError):
                    net.undefine()
        for provider in providers:
            with contextlib.suppress(libvirt.libvirtError):
                pool = conn.storagePoolLookupByName(f"metavmm-{provider}")
                with contextlib.suppress(libvirt.libvirtError):
                    pool.destroy()
                pool.undefine()
    finally:
        conn.close()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


async def done(client: Any, op_id: str) -> dict[str, Any]:
    for _ in polls():
        body = await (await client.get(f"{API}/operations/{op_id}")).json()
        if body["state"] in ("succeeded", "failed", "cancelled", "rolled_back"):
            assert body["state"] == "succeeded", body
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"operation {op_id} did not finish: {body}")


async def occi_state(client: Any, path: str, attr: str, want: str) -> dict[str, Any]:
    for _ in polls():
        resp = await client.get(path, headers=JSONH)
        doc = await resp.json()
        if doc["attributes"].get(attr) == want:
            return doc
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path}: {attr} never became {want}: {doc['attributes']}")


async def deleted(client: Any, workload_id: str) -> None:
    """OCCI hides an entity as soon as its delete is accepted; the workload row says when the provider's
    resource is gone (the delete plan ran)."""
    for _ in polls():
        row = await client.get(f"{API}/workloads/{workload_id}")
        if row.status == 404 or (await row.json()).get("observed_state") == "deleted":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"workload {workload_id} is still not deleted")


async def detached(client: Any, path: str) -> None:
    """An OCCI link is gone once no operation of the engine still targets it."""
    link_id = path.rsplit("/", 1)[1]
    for _ in polls():
        ops = await (await client.get(f"{API}/operations", params={"target_id": link_id})).json()
        items = ops["items"] if isinstance(ops, dict) else ops
        if items and all(op["state"] in ("succeeded", "failed", "rolled_back", "cancelled") for op in items):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path}: its detach never ended")


def domain_xml(name: str, inactive: bool) -> ET.Element:
    conn = libvirt.open(URI)
    try:
        dom = conn.lookupByName(name)
        return ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0))
    finally:
        conn.close()


def devices(xml: ET.Element) -> tuple[set[str], set[str]]:
    disks = {s.get("file", "") for s in xml.findall("devices/disk/source")}
    nets = {s.get("network", "") for s in xml.findall("devices/interface[@type='network']/source")}
    return disks, nets


async def test_rest_and_occi_networks_volumes_links_on_libvirt(client: Any) -> None:
    # REST: a network, a volume and a compute (an empty 1 GiB disk, 64 MiB)
    ops, ids = [], {}
    for name, body in (("net", {"kind": "network"}), ("vol", {"kind": "storage", "disk_gib": 1}),
                       ("vm", {"vcpus": 1, "ram_mib": 64})):
        resp = await client.post(f"{API}/workloads", json={"name": f"e2e-{name}", **body})
        assert resp.status == 202, await resp.text()
        data = await resp.json()
        ids[name], _ = data["workload"]["id"], ops.append(data["operation"]["id"])
    # OCCI: another network and another storage
    net = await client.post("/network/", headers={**OCCI, "Category": f'network; scheme="{INFRA}"; class="kind"',
                                                  "X-OCCI-Attribute": 'occi.core.title="e2e-occi-net"'})
    disk = await client.post("/storage/", headers={**OCCI, "Category": f'storage; scheme="{INFRA}"; class="kind"',
                                                   "X-OCCI-Attribute": "occi.storage.size=0.5"})
    assert net.status == 201 and disk.status == 201, (await net.text(), await disk.text())
    net_path, disk_path = URL(net.headers["Location"]).path, URL(disk.headers["Location"]).path
    for op in ops:
        await done(client, op)
    net_doc = await occi_state(client, net_path, "occi.network.state", "active")
    assert net_doc["attributes"]["occi.network.state.message"] == f"active at {PROVIDER}/local"
    await occi_state(client, disk_path, "occi.storage.state", "online")
    vm = await (await client.get(f"{API}/workloads/{ids['vm']}")).json()
    vol = await (await client.get(f"{API}/workloads/{ids['vol']}")).json()
    assert vol["observed_state"] == "online" and vol["state_message"] == f"online at {PROVIDER}/local"
    domain = f"mv-{vm['id']}"  # every VM is named after its workload id at the provider
    occi_net_id, occi_disk_id = net_path.rsplit("/", 1)[1], disk_path.rsplit("/", 1)[1]

    # link: two through REST, two through OCCI
    rest_links = []
    for target in (ids["net"], ids["vol"]):
        resp = await client.post(f"{API}/workloads/{ids['vm']}/links", json={"target_id": target})
        assert resp.status == 202, await resp.text()
        body = await resp.json()
        await done(client, body["operation"]["id"])
        rest_links.append(body["link"]["id"])
    occi_links = []
    for kind, target in (("networkinterface", net_path), ("storagelink", disk_path)):
        resp = await client.post(f"/{kind}/", headers={
            **OCCI, "Category": f'{kind}; scheme="{INFRA}"; class="kind"',
            "X-OCCI-Attribute": f'occi.core.source="/compute/{ids["vm"]}", occi.core.target="{target}"'})
        assert resp.status == 201, await resp.text()
        path = URL(resp.headers["Location"]).path
        doc = await occi_state(client, path, f"occi.{kind}.state", "active")
        assert "attached to" in doc["attributes"][f"occi.{kind}.state.message"]
        occi_links.append(path)
    for inactive in (False, True):  # the running domain and its persistent definition
        disks, nets = devices(domain_xml(domain, inactive))
        assert {f"mv-{ids['vol']}.qcow2", f"mv-{occi_disk_id}.qcow2"} <= {Path(d).name for d in disks}
        assert nets == {f"mv-{ids['net']}", f"mv-{occi_net_id}"}

    # unlink (stopped first: hot-unplug waits for a guest OS these VMs lack), then delete everything
    stop = await client.post(f"{API}/workloads/{ids['vm']}/actions", json={"action": "stop"})
    await done(client, (await stop.json())["id"])
    for link in rest_links:
        resp = await client.delete(f"{API}/workloads/{ids['vm']}/links/{link}")
        await done(client, (await resp.json())["id"])
    for path in occi_links:
        assert (await client.delete(path)).status in (200, 204)
        await detached(client, path)
    disks, nets = devices(domain_xml(domain, inactive=True))
    assert disks == {next(iter(disks))} and nets == set()  # only the compute's own disk is left
    for wid in (ids["vm"], ids["net"], ids["vol"]):
        resp = await client.delete(f"{API}/workloads/{wid}")
        assert resp.status == 202, await resp.text()
        await done(client, (await resp.json())["id"])
    for path in (net_path, disk_path):
        assert (await client.delete(path)).status in (200, 204)
        assert (await client.get(path, headers=JSONH)).status == 404  # gone from OCCI's collection at once
        await deleted(client, path.rsplit("/", 1)[1])  # and from the provider once its delete plan ran

    conn = libvirt.open(URI)
    try:
        assert domain not in {d.name() for d in conn.listAllDomains()}
        left = {n.name() for n in conn.listAllNetworks()}
        assert not left & {f"mv-{ids['net']}", f"mv-{occi_net_id}"}
        assert conn.storagePoolLookupByName(f"metavmm-{PROVIDER}").listAllVolumes() == []
    finally:
        conn.close()
