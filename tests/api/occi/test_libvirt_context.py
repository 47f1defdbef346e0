"""Contextualization on the real libvirt daemon (qemu:///system, TCG), through OCCI and REST.

A compute created with an SSH key and user data gets a NoCloud seed ISO attached to its domain as a
read-only cdrom; the ISO, read back with xorriso (not with our code), holds the user data byte for byte
and the key in meta-data's public-keys. The guest here is an empty disk that runs no cloud-init, so the
test stops at what the guest would read: the seed in the domain.
"""

from __future__ import annotations

import asyncio
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import libvirt
import yaml
from yarl import URL

from tests.api.occi import test_libvirt_lifecycle as lifecycle
from tests.api.occi.conftest import INFRA, JSONH, os_tpl_id, settled
from tests.drivers.conftest import ssh_public_key
from tests.polling import polls

URI, lv_client, storage_dir = lifecycle.URI, lifecycle.lv_client, lifecycle.storage_dir  # the real daemon's fixtures
API = "/api/v1"
CREDENTIALS = "http://schemas.ogf.org/occi/infrastructure/credentials#ssh_key"
USER_DATA_MIXIN = "http://schemas.ogf.org/occi/infrastructure/compute#user_data"


def seed_of(domain: str) -> Path:
    """The file behind the domain's read-only cdrom (as libvirt reports the running domain)."""
    conn = libvirt.open(URI)
    try:
        doc = ET.fromstring(conn.lookupByName(domain).XMLDesc())
    finally:
        conn.close()
    cdroms = doc.findall("devices/disk[@device='cdrom']")
    assert len(cdroms) == 1 and cdroms[0].find("readonly") is not None, ET.tostring(doc).decode()
    return Path(cdroms[0].find("source").get("file", ""))  # type: ignore[union-attr]


def seed_files(iso: Path, dest: Path) -> dict[str, bytes]:
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(dest)], check=True,
                   capture_output=True)
    return {p.name: p.read_bytes() for p in dest.iterdir()}


def check_seed(domain: str, tmp: Path, key: str, user_data: str) -> Path:
    iso = seed_of(domain)
    files = seed_files(iso, tmp)
    assert files["user-data"] == user_data.encode()
    meta = yaml.safe_load(files["meta-data"])
    assert meta["public-keys"] == [key] and meta["instance-id"] == domain.removeprefix("mv-")
    return iso


async def test_occi_key_and_user_data_reach_the_domain_seed(lv_client: Any, tmp_path: Path) -> None:
    client = lv_client
    key = ssh_public_key("occi@partner")
    user_data = "#cloud-config\nruncmd:\n  - echo 'occi-context-marker' > /dev/ttyS0\n"
    vm = await client.post("/compute/", headers=JSONH, json={
        "kind": f"{INFRA}compute", "id": "_", "title": "ctx-occi",
        "mixins": [await os_tpl_id(client, "tiny"), CREDENTIALS, USER_DATA_MIXIN],
        "attributes": {"occi.compute.cores": 1, "occi.compute.memory": 0.0625,
                       "occi.credentials.ssh.publickey": key, "occi.compute.userdata": user_data}})
    assert vm.status == 201, await vm.text()
    wl_id = (await vm.json())["id"]
    client.created.append(wl_id)
    path = URL(vm.headers["Location"]).path
    assert (await settled(client, path))["attributes"]["occi.compute.state"] == "active"
    iso = check_seed(f"mv-{wl_id}", tmp_path / "occi", key, user_data)
    ops = await (await client.get(f"{API}/operations", params={"target_id": wl_id})).json()
    create = next(s for s in ops["items"][0]["steps"] if s["action"] == "vm.create")
    assert "marker" not in " ".join(create.get("log", [])) and "marker" not in create.get("detail", "")
    assert (await client.delete(path)).status == 204
    await lifecycle._until_undefined(f"mv-{wl_id}")
    for _ in polls():  # the seed goes with the domain
        if not iso.exists():
            break
        await asyncio.sleep(0.05)
    assert not iso.exists()


async def test_rest_key_and_user_data_reach_the_domain_seed(lv_client: Any, tmp_path: Path) -> None:
    client = lv_client
    key = ssh_public_key("rest@partner")
    user_data = "#!/bin/sh\necho rest-context-marker > /dev/ttyS0\n"
    resp = await client.post(f"{API}/workloads", json={"name": "ctx-rest", "vcpus": 1, "ram_mib": 64,
                                                       "image_id": "tiny", "ssh_key": key, "user_data": user_data})
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    wl_id = body["workload"]["id"]
    client.created.append(wl_id)
    for _ in polls():
        op = await (await client.get(f"{API}/operations/{body['operation']['id']}")).json()
        if op["state"] not in ("pending", "running"):
            break
        await asyncio.sleep(0.1)
    assert op["state"] == "succeeded", op
    check_seed(f"mv-{wl_id}", tmp_path / "rest", key, user_data)
    bad = await client.post(f"{API}/workloads", json={"name": "bad", "vcpus": 1, "ram_mib": 64, "image_id": "tiny",
                                                      "ssh_key": "not a key"})
    assert bad.status == 400 and "OpenSSH public key" in await bad.text()
    storage = await client.post(f"{API}/workloads", json={"name": "disk", "kind": "storage", "disk_gib": 1,
                                                          "user_data": "#cloud-config\n"})
    assert storage.status == 400 and "only a compute boots" in await storage.text()
    gone = await client.delete(f"{API}/workloads/{wl_id}")
    assert gone.status == 202
    await lifecycle._until_undefined(f"mv-{wl_id}")
