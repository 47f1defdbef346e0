"""A full OCCI lifecycle against the real libvirt daemon (qemu:///system, TCG), in every rendering.

Create a network and a storage, create a compute linked to both, act on it, update it, delete it;
the state checked at each step is what libvirt itself reports for the domain. The image is a small
empty qcow2 made with qemu-img and published as an os_tpl: the VM need not boot an OS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from sqlmodel import select
from yarl import URL

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.api.occi.parse import parse_text_fields, parse_text_plain
from metavmm.catalog.models import Image, Workload
from metavmm.foundation.config import parse_config
from metavmm.services.sync import sync_all
from tests.api.occi.conftest import INFRA, JSONH, OCCI, TEXT, os_tpl_id, publish_image, settled
from tests.auth_helpers import authorize
from tests.polling import polls

URI = "qemu:///system"


@pytest.fixture
def storage_dir(tmp_path: Path) -> Iterator[Path]:
    """A storage dir the system daemon's QEMU (another user) can traverse; removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="metavmm-occi-", dir="/var/tmp"))
    os.chmod(root, 0o755)
    images = root / "images"
    images.mkdir(mode=0o755)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(images / "tiny.qcow2"), "64M"], check=True)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _domain_state(name: str) -> int | None:
    conn = libvirt.open(URI)
    try:
        return conn.lookupByName(name).state()[0]
    except libvirt.libvirtError:
        return None
    finally:
        conn.close()


async def _until_undefined(domain: str) -> None:
    for _ in polls():
        if _domain_state(domain) is None:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"domain {domain} is still defined")


@pytest.fixture
async def lv_client(aiohttp_client: Any, sqlite_url: str, storage_dir: Path) -> AsyncIterator[Any]:
    config = parse_config(f"""
providers:
  - name: lv-occi
    kind: libvirt
    endpoint: {URI}
    domain_type: qemu
    storage_dir: {storage_dir}
    sites: [{{region: local, zones: [local-a]}}]
prices:  # the scheduler places only where a price is known: the centre's per-vCPU and per-GiB cost model
  - provider: lv-occi
    region: local
    currency: USD
    effective_date: 2026-07-01
    source: test cost model
    items: [{{flavor: custom, unit: vcpu-hour, amount: "0.02"}}, {{flavor: custom, unit: gib-hour, amount: "0.005"}}]
""")
    app = create_app(config, sqlite_url, sync=False)
    client = await aiohttp_client(app)
    await authorize(client, "member", project="partner")
    results = await sync_all(app[keys.SESSIONS], config)
    assert results[0].error is None, results[0].error
    await publish_image(app, "tiny", str(storage_dir / "images" / "tiny.qcow2"))
    created: list[str] = []
    client.created = created
    yield client
    async with app[keys.SESSIONS]() as session:
        ids = set((await session.exec(select(Workload.id))).all())
    conn = libvirt.open(URI)
    try:
        for wl_id in created:  # whatever a failed test left behind
            try:
                dom = conn.lookupByName(f"mv-{wl_id}")
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
            except libvirt.libvirtError:
                pass
        remove_networks_and_pool(conn, ids, "lv-occi")
    finally:
        conn.close()


def remove_networks_and_pool(conn: libvirt.virConnect, workload_ids: set[str], provider: str) -> None:
    """Networks and the volume pool the engine made for this test's network and storage entities (their
    files go with the storage dir)."""
    for net in conn.listAllNetworks():
        if net.name().startswith("mv-") and net.name()[3:] in workload_ids:
            with contextlib.suppress(libvirt.libvirtError):  # an engine step may be removing it too
                net.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                net.undefine()
    with contextlib.suppress(libvirt.libvirtError):
        pool = conn.storagePoolLookupByName(f"metavmm-{provider}")
        with contextlib.suppress(libvirt.libvirtError):
            pool.destroy()
        pool.undefine()


class Plain:
    headers = TEXT

    @staticmethod
    def body(fields: list[tuple[str, str]]) -> dict[str, Any]:
        return {"data": "".join(f"{n}: {v}\n" for n, v in fields)}

    @staticmethod
    async def read(resp: Any) -> dict[str, Any]:
        return parse_text_plain(await resp.text()).attributes


class Header:
    headers = OCCI

    @staticmethod
    def body(fields: list[tuple[str, str]]) -> dict[str, Any]:
        headers: dict[str, str] = {}
        for n, v in fields:
            headers[n] = f"{headers[n]}, {v}" if n in headers else v
        return {"headers": {**OCCI, **headers}}

    @staticmethod
    async def read(resp: Any) -> dict[str, Any]:
        return parse_text_fields(resp.headers.items()).attributes


async def _text_lifecycle(client: Any, r: type[Plain] | type[Header]) -> None:
    def send(fields: list[tuple[str, str]]) -> dict[str, Any]:
        out = r.body(fields)
        out.setdefault("headers", r.headers)
        return out

    net = await client.post("/network/", **send([("Category", f'network; scheme="{INFRA}"; class="kind"'),
                                                  ("X-OCCI-Attribute", 'occi.core.title="lan"')]))
    disk = await client.post("/storage/", **send([("Category", f'storage;scheme="{INFRA}";class="kind"'),
                                                  ("X-OCCI-Attribute", "occi.storage.size=1")]))
    assert net.status == 201 and disk.status == 201, (await net.text(), await disk.text())
    net_path, disk_path = URL(net.headers["Location"]).path, URL(disk.headers["Location"]).path
    tpl = await os_tpl_id(client, "tiny")
    scheme, _, term = tpl.rpartition("#")
    vm = await client.post("/compute/", **send([
        ("Category", f'compute; scheme="{INFRA}"; class="kind"'),
        ("Category", f'{term}; scheme="{scheme}#"; class="mixin"'),
        ("Link", f'<{net_path}>; rel="{INFRA}network"; category="{INFRA}networkinterface"'),
        ("Link", f'<{disk_path}>;rel="{INFRA}storage";category="{INFRA}storagelink"'),
        ("X-OCCI-Attribute", 'occi.core.title="lv-vm"'),
        ("X-OCCI-Attribute", "occi.compute.cores=1"),
        ("X-OCCI-Attribute", "occi.compute.memory=0.0625")]))
    assert vm.status == 201, await vm.text()
    path = URL(vm.headers["Location"]).path
    wl_id = path.rsplit("/", 1)[1]
    client.created.append(wl_id)
    domain = f"mv-{wl_id}"
    done = await settled(client, path)  # the engine ran the provision plan
    assert _domain_state(domain) == libvirt.VIR_DOMAIN_RUNNING, done
    got = await client.get(path, headers=r.headers)
    attrs = await r.read(got)
    assert attrs["occi.compute.state"] == "active" and attrs["occi.core.title"] == "lv-vm"
    links = await client.get("/networkinterface/", headers={"Accept": "text/uri-list"})
    assert len((await links.text()).split()) >= 1

    for action, libvirt_state, occi_state in (
            ("stop", libvirt.VIR_DOMAIN_SHUTOFF, "inactive"), ("start", libvirt.VIR_DOMAIN_RUNNING, "active"),
            ("suspend", libvirt.VIR_DOMAIN_PAUSED, "suspended"), ("start", libvirt.VIR_DOMAIN_RUNNING, "active"),
            ("restart", libvirt.VIR_DOMAIN_RUNNING, "active")):
        resp = await client.post(f"{path}?action={action}", **send([
            ("Category", f'{action}; scheme="{INFRA[:-1]}/compute/action#"; class="action"')]))
        assert resp.status == 200, await resp.text()
        assert (await r.read(resp))["occi.compute.state.message"].startswith(f"{action} ")  # its operation
        assert (await settled(client, path))["attributes"]["occi.compute.state"] == occi_state
        assert _domain_state(domain) == libvirt_state, action
    refused = await client.post(f"{path}?action=start", headers=r.headers)
    assert refused.status == 409 and "not applicable" in await refused.text()

    updated = await client.post(path, **send([("X-OCCI-Attribute", 'occi.core.title="renamed"')]))
    assert updated.status == 200 and (await r.read(updated))["occi.core.title"] == "renamed"
    deleted = await client.delete(path)
    assert deleted.status == 204
    assert (await client.get(path, headers=r.headers)).status == 404  # gone for OCCI at once
    await _until_undefined(domain)  # the engine's delete flow removes the domain
    assert (await client.get(net_path, headers=r.headers)).status == 200  # links go, the network stays
    assert await (await client.get("/networkinterface/", headers={"Accept": "text/uri-list"})).text() == ""


async def test_lifecycle_text_plain(lv_client: Any) -> None:
    await _text_lifecycle(lv_client, Plain)


async def test_lifecycle_text_occi(lv_client: Any) -> None:
    await _text_lifecycle(lv_client, Header)


async def test_lifecycle_json(lv_client: Any) -> None:
    client = lv_client
    net = await client.post("/network/", json={"kind": f"{INFRA}network", "id": "_", "title": "lan"}, headers=JSONH)
    disk = await client.post("/storage/", json={"kind": f"{INFRA}storage", "id": "_",
                                                "attributes": {"occi.storage.size": 1}}, headers=JSONH)
    net_path, disk_path = URL(net.headers["Location"]).path, URL(disk.headers["Location"]).path
    vm = await client.post("/compute/", headers=JSONH, json={
        "kind": f"{INFRA}compute", "id": "_", "mixins": [await os_tpl_id(client, "tiny")], "title": "lv-json",
        "attributes": {"occi.compute.cores": 1, "occi.compute.memory": 0.0625},
        "links": [{"kind": f"{INFRA}networkinterface", "id": "_", "source": {"location": "/compute/_"},
                   "target": {"location": net_path, "kind": f"{INFRA}network"}},
                  {"kind": f"{INFRA}storagelink", "id": "_", "source": {"location": "/compute/_"},
                   "target": {"location": disk_path, "kind": f"{INFRA}storage"}}]})
    assert vm.status == 201, await vm.text()
    doc = await vm.json()
    client.created.append(doc["id"])
    domain = f"mv-{doc['id']}"
    path = URL(vm.headers["Location"]).path
    assert doc["attributes"]["occi.compute.state.message"].startswith("create ") and len(doc["links"]) == 2
    assert (await settled(client, path))["attributes"]["occi.compute.state"] == "active"
    assert _domain_state(domain) == libvirt.VIR_DOMAIN_RUNNING
    stop = await client.post(f"{path}?action=stop", headers=JSONH, json={
        "action": "http://schemas.ogf.org/occi/infrastructure/compute/action#stop",
        "attributes": {"method": "poweroff"}})
    assert stop.status == 200
    assert (await settled(client, path))["attributes"]["occi.compute.state"] == "inactive"
    assert _domain_state(domain) == libvirt.VIR_DOMAIN_SHUTOFF
    save = await client.post(f"{path}?action=save", headers=JSONH, json={
        "action": "http://schemas.ogf.org/occi/infrastructure/compute/action#save",
        "attributes": {"name": "lv-json-saved"}})
    assert save.status == 202, await save.text()  # GFD.224: the answer is the new OS template, made meanwhile
    template = (await save.json())["mixins"][0]
    assert template["title"] == "lv-json-saved" and template["depends"] == [f"{INFRA}os_tpl"]
    assert URL(save.headers["Location"]).path == template["location"]
    assert (await settled(client, path))["attributes"]["occi.compute.state"] == "inactive"  # it was stopped
    async with client.server.app[keys.SESSIONS]() as session:  # the exported disk is a marketplace image now
        image = (await session.exec(select(Image).where(Image.name == "lv-json-saved"))).one()
    assert image.format == "qcow2" and image.visibility == "project" and len(image.sha256 or "") == 64
    assert Path(image.location or "").is_file() and image.size_bytes == Path(image.location or "").stat().st_size
    categories = await (await client.get("/-/", headers={"Accept": "application/occi+json"})).json()
    offered = [m for m in categories["mixins"] if m["title"] == "lv-json-saved"]  # offered as an os_tpl
    assert [m["location"] for m in offered] == [template["location"]] and image.id[:8] in template["term"]
    start = await client.post(f"{path}?action=start", headers=JSONH, json={
        "action": "http://schemas.ogf.org/occi/infrastructure/compute/action#start"})
    assert start.status == 200
    await settled(client, path)
    assert _domain_state(domain) == libvirt.VIR_DOMAIN_RUNNING
    renamed = await client.post(path, headers=JSONH, json={"kind": f"{INFRA}compute", "id": path.rsplit("/", 1)[1],
                                                           "title": "lv-json-2"})
    assert (await renamed.json())["title"] == "lv-json-2"
    assert (await client.delete(path)).status == 204
    assert (await client.get(path, headers=JSONH)).status == 404
    await _until_undefined(domain)
