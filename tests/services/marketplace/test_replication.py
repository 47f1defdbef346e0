"""Publish at one school, launch at another, on the real libvirt daemon; content identical after conversion."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import libvirt
import pytest
from prometheus_client import REGISTRY
from sqlmodel import select

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.api.rest.marketplace import endorser_key_path
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Image, ImageReplica, Operation, OperationState, Workload
from metavmm.drivers.registry import create_driver
from metavmm.foundation.config import LimitsConfig
from metavmm.foundation.errors import ChecksumMismatch, NoPlacement, NotFound, ValidationError
from metavmm.services.identity import operator_identity
from metavmm.services.marketplace.entries import ADMIN, ImageMeta
from metavmm.services.marketplace.imagelist import generate_key
from metavmm.services.marketplace.launch import LaunchIn, launch
from metavmm.services.marketplace.publish import publish
from metavmm.services.marketplace.replication import Replicator, _beside_hash, _copy_local, prune_expired, target_format
from metavmm.services.marketplace.stream import Expected
from metavmm.services.operations.engine import Engine
from metavmm.services.placement import Placer
from metavmm.services.sync import sync_all
from metavmm.services.workloads.service import WorkloadService
from metavmm.translators.costs import DiskFormat
from metavmm.translators.digest import copy_extents
from tests.auth_helpers import authorize
from tests.services.marketplace.conftest import Disks, Federation


def identical(a: Path, fmt_a: str, b: Path, fmt_b: str) -> bool:
    """qemu-img compare: the guest sees the same bytes in both disks."""
    res = subprocess.run(["qemu-img", "compare", "-f", fmt_a, "-F", fmt_b, str(a), str(b)], capture_output=True)
    return res.returncode == 0


def domain_state(uuid: str) -> int:
    conn = libvirt.open("qemu:///system")
    try:
        return conn.lookupByUUIDString(uuid).state()[0]
    finally:
        conn.close()


async def delete_vms(fed: Federation, vms: list[tuple[str, str]]) -> None:
    for provider, vm_id in vms:
        driver = create_driver(fed.cfg.provider(provider))
        try:
            await driver.delete_vm(vm_id)
        finally:
            await driver.close()


@contextlib.asynccontextmanager
async def running_engine(fed: Federation) -> AsyncIterator[Engine]:
    """The operations engine over the federation's catalog, running steps in this process."""
    engine = Engine(fed.maker, fed.cfg, fed.url)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


async def launched(fed: Federation, engine: Engine, image_ref: str, req: LaunchIn) -> tuple[Workload, Operation]:
    """Launch as the operator of the default project (the CLI's identity), then wait for the operation
    like a client following it would; the workload as it ended."""
    async with session_scope(fed.maker) as s:
        caller = await operator_identity(s)
    service = WorkloadService(fed.maker, fed.cfg, engine, Placer(fed.cfg))
    done = await launch(service, caller, image_ref, req)
    op = await engine.wait(done.operation.id, timeout_s=600)
    async with fed.maker() as s:
        workload = await s.get(Workload, done.workload.id)
    assert workload is not None and workload.observed_state == "running", workload
    return workload, op


def booted(op: Operation) -> str:
    """The disk the VM was created from: the replica the launch made, or the one it found and booted."""
    if "replica_image" in op.outputs:
        return str(op.outputs["replica_image"])
    return next(s["args"]["image"] for s in op.steps if s["action"] == "vm.create")


async def test_publish_vmdk_launch_at_another_school_as_identical_qcow2(federation: Federation, disks: Disks) -> None:
    async with session_scope(federation.maker) as s:
        image = await publish(s, ImageMeta(name="intro-linux", publisher="school-a", format="vmdk",
                                           visibility="federation", min_ram_mib=128), str(disks.vmdk))
    async with running_engine(federation) as engine:
        await _launch_twice(federation, image, disks, engine)
    await sync_all(federation.maker, federation.cfg)  # the inventory sees the replica file and keeps our row
    async with federation.maker() as s:
        replicas = (await s.exec(select(ImageReplica).where(ImageReplica.image_id == image.id))).all()
        assert [(r.format, r.state) for r in replicas] == [("qcow2", "available")]
        workloads = (await s.exec(select(Workload))).all()
        assert {w.name for w in workloads if w.managed} >= {"mkt-b-1", "mkt-b-2"}
        ops = (await s.exec(select(Operation).where(Operation.kind == "create").order_by(Operation.created_at))).all()
        assert [o.state for o in ops] == ["succeeded", "succeeded"]
        assert [s["action"] for s in ops[0].steps] == ["quota.hold", "image.replicate", "vm.create", "vm.wait",
                                                       "workload.record", "quota.commit"]


async def _launch_twice(federation: Federation, image: Any, disks: Disks, engine: Engine) -> None:
    vms: list[tuple[str, str]] = []
    moved = {"what": "image_replicate"}
    before = REGISTRY.get_sample_value("metavmm_data_bytes_total", moved) or 0.0
    try:
        first, op = await launched(federation, engine, image.id, LaunchIn(name="mkt-b-1", site="school-b",
                                                                          ram_mib=128))
        vms.append(("school-b-kvm", str(first.provider_resource_id)))
        replica = Path(booted(op))
        assert first.spec["placement"]["site"] == "school-b" and not op.outputs["replica_reused"]
        assert op.outputs["replica_format"] == "qcow2"
        assert replica.parent == federation.root / "b" / "images" and replica.suffix == ".qcow2"
        assert identical(disks.raw, "raw", replica, "qcow2")
        assert REGISTRY.get_sample_value("metavmm_data_bytes_total", moved) == before + replica.stat().st_size
        assert domain_state(str(first.provider_resource_id)) == libvirt.VIR_DOMAIN_RUNNING

        # no site named: the scheduler's movement cost prefers the site that already holds a replica
        second, op = await launched(federation, engine, "school-a/intro-linux", LaunchIn(name="mkt-b-2",
                                                                                         ram_mib=128))
        vms.append(("school-b-kvm", str(second.provider_resource_id)))
        assert second.spec["placement"]["site"] == "school-b" and booted(op) == str(replica)
        assert "image.replicate" not in [s["action"] for s in op.steps]
        assert REGISTRY.get_sample_value("metavmm_data_bytes_total", moved) == before + replica.stat().st_size

        with pytest.raises(ValidationError, match=r"needs at least 128 MiB RAM \(asked 64\)"):
            await launched(federation, engine, image.id, LaunchIn(name="too-small", site="school-a", ram_mib=64))
        async with federation.maker() as s:
            rep = (await s.exec(select(ImageReplica).where(ImageReplica.provider_image_id == str(replica)))).one()
        assert rep.checksum == hashlib.sha256(replica.read_bytes()).hexdigest()
    finally:
        await delete_vms(federation, vms)


@pytest.mark.parametrize("fmt", ["raw", "vmdk"])  # raw: staged copy; vmdk: converted straight from the file
async def test_replication_refuses_bytes_that_changed_since_publishing(federation: Federation, disks: Disks,
                                                                       fmt: str) -> None:
    path = disks.raw if fmt == "raw" else disks.vmdk
    async with session_scope(federation.maker) as s:
        image = await publish(s, ImageMeta(name="tampered", publisher="school-a", format=fmt,
                                           visibility="public"), str(path), register=True)
    with open(path, "r+b") as f:  # someone edits the registered file after publishing
        f.seek(path.stat().st_size - 4096)
        f.write(b"evil")
    with pytest.raises(ChecksumMismatch, match="SHA256 mismatch"):
        await Replicator(federation.maker, federation.cfg).replicate(image.id, "school-a", audience=ADMIN)
    images = federation.root / "a" / "images"
    assert [p.name for p in images.rglob("*") if p.is_file()] == []
    async with federation.maker() as s:
        assert (await s.exec(select(ImageReplica).where(ImageReplica.image_id == image.id))).all() == []


async def test_no_site_fits_an_arm_image(federation: Federation, disks: Disks) -> None:
    async with session_scope(federation.maker) as s:
        image = await publish(s, ImageMeta(name="arm-lab", publisher="school-a", format="qcow2", arch="aarch64",
                                           visibility="public"), str(disks.qcow2))
    with pytest.raises(NoPlacement, match="no aarch64"):
        async with running_engine(federation) as engine:
            await launched(federation, engine, image.id, LaunchIn(name="arm"))
    async with federation.maker() as s:
        assert (await s.exec(select(Workload).where(Workload.name == "arm"))).all() == []


async def test_a_signed_list_carries_an_image_from_one_broker_to_another_over_http(
        aiohttp_client: Any, federation: Federation, disks: Disks, tmp_path: Path) -> None:
    # Site A: its own broker and catalog; a teacher uploads a VDI over REST; the site signs its list.
    # Another site fetches the list and the blob without credentials, so only public entries travel.
    site_a = await aiohttp_client(create_app(federation.cfg, f"sqlite:///{tmp_path / 'a.db'}", sync=False))
    await authorize(site_a, "member", project="school-a")
    fields = {"name": "databases", "publisher": "school-a", "format": "vdi", "visibility": "public",
              "os": "Debian", "os_version": "12", "tags": ["course", "sql"], "access_ports": ["22/tcp", "5432/tcp"],
              "min_ram_mib": "64"}
    resp = await site_a.put("/api/v1/marketplace/uploads", params=[(k, v) for k, vs in fields.items()
                                                                    for v in (vs if isinstance(vs, list) else [vs])],
                            data=disks.vdi.read_bytes(), headers={"Content-Type": "application/octet-stream"})
    assert resp.status == 201, await resp.text()
    published = await resp.json()
    assert published["format"] == "vdi" and published["access_ports"] == ["22/tcp", "5432/tcp"]
    _, public = generate_key(endorser_key_path())
    list_url = str(site_a.make_url("/api/v1/marketplace/imagelist?publisher=school-a"))

    # Site B (the federation fixture's catalog, behind its own broker) subscribes with A's key over REST,
    # imports the list over HTTP, replicates and launches at its own libvirt host.
    # Both sites are on this machine: B's limits let it fetch from loopback, as a real federation
    # lists its peers' private networks in limits.outbound_allowed_networks.
    peers = LimitsConfig(outbound_allowed_networks=["127.0.0.0/8", "::1/128"])
    site_b = await aiohttp_client(create_app(federation.cfg.model_copy(update={"limits": peers}), federation.url,
                                             sync=False))
    await authorize(site_b, "admin", project="school-b")
    resp = await site_b.post("/api/v1/marketplace/subscriptions", json={
        "name": "school-a", "url": list_url, "public_key_pem": public.read_text(), "endorser": "school-a"})
    assert resp.status == 201, await resp.text()
    resp = await site_b.post("/api/v1/marketplace/subscriptions/school-a/sync")
    assert resp.status == 200 and (await resp.json())["added"] == 1, await resp.text()
    found = await (await site_b.get("/api/v1/marketplace/images", params={"tag": "sql", "port": "5432/tcp"})).json()
    assert found["total"] == 1 and found["items"][0]["sha256"] == published["sha256"]
    image_id = found["items"][0]["id"]
    assert image_id != published["id"]  # each site's catalog has its own entry, tied by checksums

    resp = await site_b.post(f"/api/v1/marketplace/images/{image_id}/replicate", json={"site": "school-b"})
    replica = await resp.json()
    assert resp.status == 200 and not replica["reused"] and replica["format"] == "qcow2", replica
    assert identical(disks.vdi, "vdi", Path(replica["provider_image_id"]), "qcow2")
    vms: list[tuple[str, str]] = []
    try:
        resp = await site_b.post(f"/api/v1/marketplace/images/{image_id}/launch",
                                 json={"name": "mkt-http", "ram_mib": 64})
        out = await resp.json()
        assert resp.status == 202, out
        op = await site_b.app[keys.OPERATIONS].wait(out["operation"]["id"], timeout_s=600)
        assert op.state == OperationState.SUCCEEDED
        shown = await (await site_b.get(f"/api/v1/workloads/{out['workload']['id']}")).json()
        async with federation.maker() as s:
            row = await s.get(Workload, out["workload"]["id"])
        vms.append(("school-b-kvm", str(row.provider_resource_id if row else op.outputs["vm_id"])))
        assert shown["observed_state"] == "running" and shown["spec"]["placement"]["site"] == "school-b"
        assert booted(op) == replica["provider_image_id"]  # the replica made above: booted as it is
        assert domain_state(vms[-1][1]) == libvirt.VIR_DOMAIN_RUNNING
    finally:
        await delete_vms(federation, vms)


async def test_expired_replicas_are_pruned_once_no_vm_is_built_on_them(federation: Federation, disks: Disks) -> None:
    fields = dict(name="lab", publisher="school-a", visibility="public")
    async with session_scope(federation.maker) as s:
        v1 = await publish(s, ImageMeta(**fields, format="qcow2"), str(disks.qcow2))
    async with running_engine(federation) as engine:
        workload, op = await launched(federation, engine, v1.id, LaunchIn(name="mkt-prune", site="school-a",
                                                                           ram_mib=64))
    vms = [("school-a-kvm", str(workload.provider_resource_id))]
    replica = booted(op)
    try:
        async with session_scope(federation.maker) as s:
            await publish(s, ImageMeta(**fields, format="vdi"), str(disks.vdi), grace=timedelta(0))
        report = await prune_expired(federation.maker, federation.cfg)
        assert report.removed == [] and report.kept == {replica: "a VM disk is built on it"}
        assert Path(replica).is_file()
    finally:
        await delete_vms(federation, vms)
    report = await prune_expired(federation.maker, federation.cfg)
    assert report.removed == [replica] and not Path(replica).exists()
    async with federation.maker() as s:
        rep = (await s.exec(select(ImageReplica).where(ImageReplica.image_id == v1.id))).one()
        assert (rep.state, rep.present) == ("deleted", False)


def test_each_hypervisor_gets_a_format_it_boots() -> None:
    assert target_format("vmdk", "kvm") == DiskFormat.QCOW2
    assert target_format("raw", "qemu") == DiskFormat.RAW  # already bootable: no conversion
    assert target_format("qcow2", "esxi") == DiskFormat.VMDK
    assert target_format("vdi", "hyperv") == DiskFormat.VHDX
    assert target_format("vpc", "hyperv") == DiskFormat.VPC
    assert target_format("vmdk", "xen") == DiskFormat.RAW


async def test_a_source_rewritten_during_the_copy_is_refused_and_the_copy_deleted(tmp_path: Path) -> None:
    """The copy and the hash read the source separately: a write in between (here the same byte again, so
    the digests still match) must refuse the replica, or the copy could hold bytes that were never hashed."""
    src, out = tmp_path / "disk.raw", tmp_path / "copy.raw"
    src.write_bytes(os.urandom(3 << 20))
    expected = Expected(sha256=hashlib.sha256(src.read_bytes()).hexdigest())

    async def copy_then_rewrite() -> int:
        written = await asyncio.to_thread(copy_extents, src, out)
        with open(src, "r+b") as f:
            first = f.read(1)
            f.seek(0)
            f.write(first)
        return written

    with pytest.raises(ChecksumMismatch, match="changed while it was replicated"):
        await _beside_hash(src, Image(name="rewritten"), expected, copy_then_rewrite(), out)
    assert not out.exists()
    digests = await _copy_local(src, Image(name="quiet"), out, expected)  # untouched: accepted, identical
    assert digests.sha256 == expected.sha256 and out.read_bytes() == src.read_bytes()
    with pytest.raises(NotFound, match="is not a file"):  # a registered file deleted since: a 404, not a 500
        await _copy_local(tmp_path / "gone.raw", Image(name="gone"), tmp_path / "x.raw", expected)


async def test_a_flipped_byte_stops_the_copy_beside_the_hash_and_leaves_nothing(tmp_path: Path) -> None:
    src, out = tmp_path / "disk.raw", tmp_path / "copy.raw"
    content = bytearray(os.urandom(3 << 20))
    expected = Expected(sha256=hashlib.sha256(content).hexdigest())
    content[(3 << 20) // 2] ^= 1  # one bit of the published bytes changed since publishing
    src.write_bytes(content)
    stopped = asyncio.Event()

    async def slow_copy() -> None:  # still working when the hash finds the mismatch: it must be stopped
        out.write_bytes(b"partial")
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            stopped.set()
            raise

    with pytest.raises(ChecksumMismatch, match="SHA256 mismatch"):
        await _beside_hash(src, Image(name="flipped"), expected, slow_copy(), out)
    assert stopped.is_set() and not out.exists()
    with pytest.raises(ChecksumMismatch, match="SHA256 mismatch"):  # the real kernel copy: refused, deleted
        await _copy_local(src, Image(name="flipped"), out, expected)
    assert not out.exists()
