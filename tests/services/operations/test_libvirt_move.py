"""Issue 23.2 on the real libvirt daemon (qemu:///system, TCG): two libvirt providers (two sites, two
storage pools on the one daemon). A volume created alone lands provisionally at the first site; its
first link, to a compute at the other site, moves it there (made anew in that site's pool, the old
file deleted) and attaches it: the domain's XML names the file in the compute's pool."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog.models import Site
from metavmm.foundation.config import parse_config
from metavmm.services.sync import sync_all
from tests.auth_helpers import authorize
from tests.services.operations.test_libvirt_resources import API, URI, devices, domain_xml, done, leftovers

PROVIDERS = ("lv-mva", "lv-mvb")  # sites by name: the first takes a volume created alone


@pytest.fixture
async def client(aiohttp_client: Any, sqlite_url: str) -> AsyncIterator[Any]:
    dirs = {p: Path(tempfile.mkdtemp(prefix=f"metavmm-{p}-", dir="/var/tmp")) for p in PROVIDERS}
    for d in dirs.values():
        os.chmod(d, 0o755)  # the daemon's QEMU (another user) must reach the disks
    entries = "".join(f'  - {{name: {p}, kind: libvirt, endpoint: "{URI}", domain_type: qemu, '
                      f'storage_dir: "{d}", sites: [{{region: local}}]}}\n' for p, d in dirs.items())
    prices = "".join(f"  - {{provider: {p}, region: local, currency: USD, effective_date: 2026-01-01, source: test, "
                     "items: [{flavor: custom, unit: vcpu-hour, amount: 0.01}, "
                     "{flavor: custom, unit: gib-hour, amount: 0.002}]}\n" for p in PROVIDERS)
    config = parse_config(f"providers:\n{entries}operations: {{reconcile_interval_s: 0, retry_base_s: 0.05}}\n"
                          f"prices:\n{prices}")
    app = create_app(config, sqlite_url, sync=False)
    cl = await aiohttp_client(app)
    for result in await sync_all(app[keys.SESSIONS], config):
        assert result.error is None, result
    await authorize(cl, "member", project="mover")
    cl.dirs = dirs
    try:
        yield cl
    finally:
        await leftovers(app, PROVIDERS, list(dirs.values()))

async def test_a_volume_created_alone_moves_to_its_first_computes_libvirt_site(client: Any) -> None:
    async with client.app[keys.SESSIONS]() as session:
        far = (await session.exec(select(Site).where(Site.name.startswith("lv-mvb")))).one().name  # type: ignore[attr-defined]
    vol = await client.post(f"{API}/workloads", json={"name": "alone", "kind": "storage", "disk_gib": 1})
    vm = await client.post(f"{API}/workloads", json={"name": "far", "vcpus": 1, "ram_mib": 64, "site": far})
    assert vol.status == 202 and vm.status == 202, (await vol.text(), await vm.text())
    vol_body, vm_body = await vol.json(), await vm.json()
    for body in (vol_body, vm_body):
        await done(client, body["operation"]["id"])
    vol_id, vm_id = vol_body["workload"]["id"], vm_body["workload"]["id"]
    first = client.dirs["lv-mva"] / "volumes" / f"mv-{vol_id}.qcow2"
    assert first.exists()  # provisionally at the first site

    resp = await client.post(f"{API}/workloads/{vm_id}/links", json={"target_id": vol_id})
    assert resp.status == 202, await resp.text()
    op = await done(client, (await resp.json())["operation"]["id"])
    assert [s["name"] for s in op["steps"]][:2] == ["move", "wait-ends"]
    moved = client.dirs["lv-mvb"] / "volumes" / f"mv-{vol_id}.qcow2"
    assert moved.exists() and not first.exists()
    disks, _ = devices(domain_xml(f"mv-{vm_id}", inactive=False))
    assert str(moved) in disks
    row = await (await client.get(f"{API}/workloads/{vol_id}")).json()
    assert row["observed_state"] == "online" and row["state_message"] == "online at lv-mvb/local"
    assert row["spec"]["placement"]["site"] == far and "provisional" not in row["spec"]["placement"]

    stop = await client.post(f"{API}/workloads/{vm_id}/actions", json={"action": "stop"})
    await done(client, (await stop.json())["id"])
    (link,) = await (await client.get(f"{API}/workloads/{vm_id}/links")).json()
    link_id = link["id"]
    unlink = await client.delete(f"{API}/workloads/{vm_id}/links/{link_id}")
    await done(client, (await unlink.json())["id"])
    for wid in (vm_id, vol_id):
        gone = await client.delete(f"{API}/workloads/{wid}")
        assert gone.status == 202, await gone.text()
        await done(client, (await gone.json())["id"])
    assert not moved.exists()
