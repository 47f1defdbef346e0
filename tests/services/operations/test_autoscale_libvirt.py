"""A small auto-scaling group on a real libvirt daemon (QEMU TCG): it starts with one member of the tiny
image, grows to two when the members' CPU (read from libvirt: CPU time between two samples) fires a rule,
shrinks back to one on a pushed metric, and its delete leaves no domain and no disk behind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from bench.libvirt_hosts import LibvirtHosts
from metavmm.catalog import db
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Image, ImageReplica, Operation, Site, utcnow
from metavmm.foundation.config import parse_config
from metavmm.services.autoscale.service import AutoscaleService, GroupRequest
from metavmm.services.identity import operator_identity
from metavmm.services.operations import store
from metavmm.services.operations.engine import Engine
from metavmm.services.placement import Placer
from metavmm.services.sync import sync_all
from metavmm.services.workloads.service import WorkloadService
from tests.services.operations import test_libvirt_flows as base
from tests.services.operations.test_cluster_libvirt import PRICES, ended


@pytest.fixture
async def engine(libvirt_hosts: LibvirtHosts, qemu_img_shim: None, tmp_path: Path) -> AsyncIterator[Engine]:
    work = libvirt_hosts.root / "work" / tmp_path.name
    work.mkdir(parents=True)
    config = parse_config(libvirt_hosts.federation_yaml(work) + "scheduler: {cpu_allocation_ratio: 8}\nprices:\n"
                          + PRICES)
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    await db.upgrade_async(url)
    sql = db.make_engine(url)
    sessions = db.make_sessionmaker(sql)
    assert [r.error for r in await sync_all(sessions, config)] == [None, None]
    try:
        yield Engine(sessions, config, url)
    finally:
        await sql.dispose()


async def test_a_group_grows_from_one_to_two_on_libvirt_and_back(engine: Engine, libvirt_hosts: LibvirtHosts) -> None:
    async with session_scope(engine.sessions) as s:
        image = Image(name="tiny", visibility="public", publisher="tests", format="qcow2")
        s.add(image)
        await s.flush()
        for site in (await s.exec(select(Site))).all():
            s.add(ImageReplica(image_id=image.id, site_id=site.id or 0, format="qcow2",
                               provider_image_id=str(libvirt_hosts.base_image)))
        caller = await operator_identity(s)
        image_id = image.id
    svc = AutoscaleService(WorkloadService(engine.sessions, engine.config, engine, Placer(engine.config)))
    await engine.start(run_steps=True, poll_s=0.05)

    async def settle(ops: list[str]) -> list[Operation]:
        done = await ended(engine.sessions, [await store.get(engine.sessions, op) for op in ops])
        assert [op.state for op in done] == ["succeeded"] * len(ops), [op.error for op in done]
        return done

    try:
        busy = {"name": "cpu-any", "type": "metric", "metric": "cpu", "above": -1}  # fires once CPU is known
        view = await svc.create(caller, GroupRequest(name="lv-web", min_size=1, max_size=2, vcpus=1, ram_mib=64,
                                                     image=image_id, rules=(busy,), cooldown_out_s=0,
                                                     cooldown_in_s=0))
        assert view.last_decision is not None
        await settle(view.last_decision.operations)
        gid, now = view.group.id, utcnow()
        # the first reading of a libvirt member is its CPU time so far: no rate yet, nothing fires
        assert await svc.evaluate(caller, gid, now=now) is None
        out = await svc.evaluate(caller, gid, now=now + timedelta(seconds=5))
        assert out is not None and (out.action, out.rule, out.desired_after) == ("scale-out", "cpu-any", 2)
        assert out.value is not None and 0 <= out.value <= 100
        await settle(out.operations)
        view = await svc.get(caller, gid)
        assert view.running == 2
        uris = {m.workload.id: libvirt_hosts.uris[int((m.provider or "lv0").removeprefix("lv"))] for m in view.members}
        for wid, uri in uris.items():
            assert base.state(uri, f"mv-{wid}") == "running"

        idle = {"name": "idle", "type": "metric", "metric": "requests", "below": 1}
        await svc.update(caller, gid, rules=[idle])
        await svc.push_metric(caller, gid, "requests", 0)
        inn = await svc.evaluate(caller, gid, now=now + timedelta(seconds=10))
        assert inn is not None and (inn.action, inn.rule, inn.desired_after) == ("scale-in", "idle", 1)
        (removed,) = inn.members
        assert removed["serial"] == 2  # same price on-prem: the newest goes
        await settle(inn.operations)
        assert f"mv-{removed['workload_id']}" not in base.domains(uris[removed["workload_id"]]).values()

        await settle([op.id for op in await svc.delete(caller, gid)])
    finally:
        await engine.stop()
        await svc.cpu.close()
    for i, u in enumerate(libvirt_hosts.uris):
        assert base.domains(u) == {}
        disks = libvirt_hosts.storage(i) / "disks"
        assert [p.name for p in disks.glob("*")] == [] if disks.exists() else True
