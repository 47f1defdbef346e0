"""A 3-seat class on a real libvirt daemon (QEMU TCG), through the cluster service and the running engine:
one qcow2 overlay per seat over one base image, every seat running with its own MAC, a seat reset to a
fresh overlay, and a delete that leaves no domain and no overlay, seed or console file behind."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlmodel import select

from bench.libvirt_hosts import LibvirtHosts
from metavmm.catalog import db
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Image, ImageReplica, Operation, Site
from metavmm.foundation.config import parse_config
from metavmm.services.clusters import ClusterRequest, ClusterService
from metavmm.services.identity import Identity, operator_identity
from metavmm.services.operations import store
from metavmm.services.operations.engine import Engine
from metavmm.services.placement import Placer
from metavmm.services.sync import sync_all
from metavmm.services.workloads.service import WorkloadService
from tests.services.operations import test_libvirt_flows as base

PRICES = "".join(
    f"  - {{provider: lv{i}, region: host{i}, currency: USD, effective_date: 2026-01-01, source: test rates, items: "
    "[{flavor: custom, unit: vcpu-hour, amount: 0.01}, {flavor: custom, unit: gib-hour, amount: 0.002}]}\n"
    for i in (0, 1))


@pytest.fixture
async def engine(libvirt_hosts: LibvirtHosts, qemu_img_shim: None, tmp_path: Path) -> AsyncIterator[Engine]:
    """A catalog synced from the two libvirt daemons, with on-prem prices (the placement compares prices)."""
    work = libvirt_hosts.root / "work" / tmp_path.name
    work.mkdir(parents=True)
    extra = "scheduler: {cpu_allocation_ratio: 8}\nprices:\n" + PRICES  # room for 3 seats on one host
    config = parse_config(libvirt_hosts.federation_yaml(work) + extra)
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    await db.upgrade_async(url)
    sql = db.make_engine(url)
    sessions = db.make_sessionmaker(sql)
    assert [r.error for r in await sync_all(sessions, config)] == [None, None]
    try:
        yield Engine(sessions, config, url)
    finally:
        await sql.dispose()


async def ended(sessions: store.Sessions, ops: list[Operation], timeout_s: float = 240) -> list[Operation]:
    async def poll() -> list[Operation]:
        while True:
            now = [await store.get(sessions, op.id) for op in ops]
            if all(op.state in store.TERMINAL for op in now):
                return now
            await asyncio.sleep(0.1)

    return await asyncio.wait_for(poll(), timeout_s)


def domain(uri: str, name: str) -> tuple[str, str, str]:
    """(state, disk path, MAC) of a domain."""
    xml = subprocess.run(["virsh", "-c", uri, "dumpxml", name], capture_output=True, text=True, check=True).stdout
    state = subprocess.run(["virsh", "-c", uri, "domstate", name], capture_output=True, text=True).stdout.strip()
    return state, xml.split("<source file='")[1].split("'")[0], xml.split("<mac address='")[1].split("'")[0]


def backing(disk: str) -> str:
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", disk], capture_output=True,
                                     text=True, check=True).stdout)
    return str(info.get("full-backing-filename") or info.get("backing-filename"))


async def class_setup(engine: Engine, disk: Path) -> tuple[ClusterService, Identity, str]:
    """The cluster service over ``engine``, its operator, and the id of an image whose replica at every
    site is ``disk`` (one file both hosts read)."""
    async with session_scope(engine.sessions) as s:
        image = Image(name=disk.stem, visibility="public", publisher="tests", format="qcow2")
        s.add(image)
        await s.flush()
        for site in (await s.exec(select(Site))).all():
            s.add(ImageReplica(image_id=image.id, site_id=site.id or 0, format="qcow2", provider_image_id=str(disk)))
        caller = await operator_identity(s)
        image_id = image.id
    return ClusterService(WorkloadService(engine.sessions, engine.config, engine, Placer(engine.config))), caller, \
        image_id


async def test_a_class_of_three_linked_clones_runs_resets_and_leaves_nothing(
        engine: Engine, libvirt_hosts: LibvirtHosts) -> None:
    clusters, caller, image_id = await class_setup(engine, libvirt_hosts.base_image)
    await engine.start(run_steps=True, poll_s=0.05)
    try:
        view = await clusters.create(caller, ClusterRequest(name="lv-lab", seats=3, vcpus=1, ram_mib=64,
                                                            image=image_id))
        done = await ended(engine.sessions, list(view.operations))
        assert [op.state for op in done] == ["succeeded"] * 3, [op.error for op in done]
        view = await clusters.get(caller, view.cluster.id)
        assert view.running == 3
        providers = {seat.workload.spec["placement"]["provider"] for seat in view.seats}
        assert len(providers) == 1  # the class is on one host's site
        uri = libvirt_hosts.uris[int(providers.pop().removeprefix("lv"))]
        disks = {}
        for seat in view.seats:
            state, disk, mac = domain(uri, f"mv-{seat.workload.id}")
            assert state == "running" and mac == seat.mac
            assert backing(disk) == str(libvirt_hosts.base_image)  # a linked clone: an overlay over the base
            disks[seat.serial] = disk
        assert len(set(disks.values())) == 3

        reset = await clusters.reset_seat(caller, view.cluster.id, 2)
        (after,) = await ended(engine.sessions, [reset])
        assert after.state == "succeeded", after.error
        state, disk, mac = domain(uri, f"mv-{view.seats[1].workload.id}")
        assert state == "running" and mac == view.seats[1].mac and backing(disk) == str(libvirt_hosts.base_image)
        assert disk != disks[2] and not Path(disks[2]).exists()  # a fresh overlay; the old one is gone

        gone = await ended(engine.sessions, await clusters.delete(caller, view.cluster.id))
        assert [op.state for op in gone] == ["succeeded"] * 3, [op.error for op in gone]
    finally:
        await engine.stop()
    for i, u in enumerate(libvirt_hosts.uris):
        assert base.domains(u) == {}
        left = [p.name for p in (libvirt_hosts.storage(i) / "disks").glob("*")] \
            if (libvirt_hosts.storage(i) / "disks").exists() else []
        assert left == [], left
