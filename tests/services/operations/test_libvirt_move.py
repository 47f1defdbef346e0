"""Issue 23.2 on the real libvirt daemon (qemu:///system, TCG): two libvirt providers (two sites, two
storage pools on the one daemon). A volume created alone lands provisionally at the first site; its
first link, to a compute at the other site, moves it there (made anew in that site's pool, the old
file deleted) and attaches it: the domain's XML names the file in the compute's pool."""

from __future__ import annotations

import os
import subprocess
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
    assert [s["name"] for s in op["steps"]][:3] == ["pending", "move", "wait-ends"]
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


def _qemu_io(path: Path, command: str) -> str:
    """Run one qemu-io command on the qcow2 file ``path`` (a read shares it with the VM that has it open);
    its output (a failed check raises)."""
    shared = ["-r", "-U"] if command.startswith("read") else []
    done = subprocess.run(["qemu-io", *shared, "-f", "qcow2", "-c", command, str(path)], capture_output=True,
                          text=True, check=False)
    said = done.stdout + done.stderr
    assert done.returncode == 0 and "fail" not in said.lower(), said
    return done.stdout


async def test_a_detached_volume_follows_a_compute_at_another_libvirt_site_with_its_data(client: Any) -> None:
    """Issue 23.2, "an unattached volume may move": compute A at lv-mva, a volume linked to it (bound there),
    detached, data written into it; a link to compute B at lv-mvb copies the file into lv-mvb's pool (export,
    convert, import through the scratch directory) and attaches it. Before, that link was 409."""
    async with client.app[keys.SESSIONS]() as session:
        sites = {s.name.split("/")[0]: s.name for s in (await session.exec(select(Site))).all()}
    ids = {}
    for name, body in (("vol", {"kind": "storage", "disk_gib": 1}),
                       ("a", {"vcpus": 1, "ram_mib": 64, "site": sites["lv-mva"]}),
                       ("b", {"vcpus": 1, "ram_mib": 64, "site": sites["lv-mvb"]})):
        made = await client.post(f"{API}/workloads", json={"name": f"follow-{name}", **body})
        assert made.status == 202, await made.text()
        await done(client, (await made.json())["operation"]["id"])
        ids[name] = (await made.json())["workload"]["id"]
    vol_id = ids["vol"]
    first = client.dirs["lv-mva"] / "volumes" / f"mv-{vol_id}.qcow2"
    linked = await client.post(f"{API}/workloads/{ids['a']}/links", json={"target_id": vol_id})
    assert linked.status == 202, await linked.text()
    await done(client, (await linked.json())["operation"]["id"])
    stop = await client.post(f"{API}/workloads/{ids['a']}/actions", json={"action": "stop"})
    await done(client, (await stop.json())["id"])
    link_id = (await linked.json())["link"]["id"]
    unlink = await client.delete(f"{API}/workloads/{ids['a']}/links/{link_id}")
    await done(client, (await unlink.json())["id"])
    _qemu_io(first, "write -P 0x5a 1M 2M")  # the data the volume holds now

    moved = await client.post(f"{API}/workloads/{ids['b']}/links", json={"target_id": vol_id})
    assert moved.status == 202, await moved.text()
    op = await done(client, (await moved.json())["operation"]["id"])
    names = [s["name"] for s in op["steps"]]
    assert names[:5] == ["pending", "depart", "export", "convert", "import"], names
    there = client.dirs["lv-mvb"] / "volumes" / f"mv-{vol_id}.qcow2"
    assert there.exists() and not first.exists()
    assert "read 2097152/2097152 bytes" in _qemu_io(there, "read -P 0x5a 1M 2M")  # the data arrived
    _qemu_io(there, "read -P 0 0 1M")  # and nothing else changed
    disks, _ = devices(domain_xml(f"mv-{ids['b']}", inactive=False))
    assert str(there) in disks
    row = await (await client.get(f"{API}/workloads/{vol_id}")).json()
    assert row["spec"]["placement"]["site"] == sites["lv-mvb"] and row["state_message"] == "online at lv-mvb/local"
    (link,) = await (await client.get(f"{API}/workloads/{ids['b']}/links")).json()
    assert link["attributes"]["state"] == "active", link
