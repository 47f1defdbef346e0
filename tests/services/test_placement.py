"""The placer's snapshot cache: reused while the catalog's fingerprint holds, reloaded when it changes."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from sqlmodel import select

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Image, ImageReplica, Price, Site, Workload
from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import NoPlacement, ValidationError
from metavmm.services.placement import Placer
from metavmm.services.sync import sync_all
from tests.polling import polls

CONFIG = parse_config("""
providers:
  - {name: sim-a, kind: sim, site_count: 2, hosts_per_site: 2}
""")


async def _snapshot(placer: Placer, sessions: Any) -> object:
    async with sessions() as session:
        snap, _ = await placer.snapshot(session)
    return snap


async def test_snapshot_is_reused_until_the_catalog_changes(sqlite_sessions: Any) -> None:
    sessions = sqlite_sessions
    await sync_all(sessions, CONFIG)
    placer = Placer(CONFIG)
    first = await _snapshot(placer, sessions)
    assert await _snapshot(placer, sessions) is first and (placer.hits, placer.misses) == (1, 1)

    async with session_scope(sessions) as s:  # a price changed outside a sync (an import)
        price = (await s.exec(select(Price).order_by(Price.id))).first()
        assert price is not None
        price.amount = Decimal(price.amount) + 1
    after_price = await _snapshot(placer, sessions)
    assert after_price is not first and placer.misses == 2

    async with session_scope(sessions) as s:  # a replica appeared (replication finished)
        image = Image(name="img", visibility="federation", format="qcow2")
        s.add(image)
        await s.flush()
        site = (await s.exec(select(Site))).first()
        assert site is not None and site.id is not None
        s.add(ImageReplica(image_id=image.id, site_id=site.id, format="qcow2", provider_image_id="x"))
    after_replica = await _snapshot(placer, sessions)
    assert after_replica is not after_price and placer.misses == 3

    await sync_all(sessions, CONFIG)  # a new inventory: hosts' numbers may differ
    assert await _snapshot(placer, sessions) is not after_replica and placer.misses == 4
    assert await _snapshot(placer, sessions) is not None and placer.hits == 2

    placer.cache = False  # the benchmark's "before": a fresh snapshot every time
    await _snapshot(placer, sessions)
    assert placer.misses == 5



async def test_the_image_arch_decides_the_host_arch(sqlite_sessions: Any) -> None:
    """A create's request carries no arch of its own (the workload service passes the flavor's, or none):
    an arm64 image goes to an aarch64 host, or is refused naming aarch64, never placed on x86_64."""
    from metavmm.catalog.models import Host
    from metavmm.scheduler.request import ImageRef, PlacementRequest

    sessions = sqlite_sessions
    await sync_all(sessions, CONFIG)
    async with session_scope(sessions) as s:
        image = Image(name="arm-guest", visibility="federation", format="qcow2", arch="arm64",
                      location="/srv/images/arm-guest.qcow2")
        s.add(image)
        await s.flush()
        image_id = image.id
        archs = {h.name: h.cpu_arch for h in (await s.exec(select(Host))).all()}
    placer = Placer(CONFIG)
    async with sessions() as session:
        planned = await placer.dry_run(session, PlacementRequest("arm", 1, 512, image=ImageRef(image_id)),
                                       providers=frozenset({"sim-a"}))
    p = planned.placement
    assert p.request.cpu_arch == "aarch64"
    if "aarch64" in archs.values():
        assert p.placed and archs[p.host] == "aarch64", p.summary
    else:
        assert not p.placed and "aarch64" in p.summary


async def test_a_replica_deleted_and_another_added_elsewhere_is_a_change(sqlite_sessions: Any) -> None:
    """SQLite gives the new row the deleted one's id: count and largest id alone would not see it."""
    sessions = sqlite_sessions
    await sync_all(sessions, CONFIG)
    async with session_scope(sessions) as s:
        image = Image(name="img", visibility="federation", format="qcow2")
        s.add(image)
        await s.flush()
        first, second = (await s.exec(select(Site).order_by(Site.id))).all()[:2]
        s.add(ImageReplica(image_id=image.id, site_id=first.id or 0, format="qcow2", provider_image_id="x"))
    placer = Placer(CONFIG)
    before = await _snapshot(placer, sessions)
    async with session_scope(sessions) as s:
        old = (await s.exec(select(ImageReplica))).one()
        old_id = old.id
        await s.delete(old)
    async with session_scope(sessions) as s:
        new = ImageReplica(image_id=image.id, site_id=second.id or 0, format="qcow2", provider_image_id="y")
        s.add(new)
        await s.flush()
        assert new.id == old_id  # the rowid SQLite reuses
    assert await _snapshot(placer, sessions) is not before and placer.misses == 2


async def test_placement_groups_keep_members_apart_or_together(sqlite_sessions: Any) -> None:
    """A new member of an anti-affinity group goes to a host no member runs on (and finds none when every
    host has one); a new member of an affinity group goes to its members' host; another project's group of
    the same name does not count. Through the one workload service and a running engine on the sim."""
    from metavmm.services.identity import get_or_create_project, operator_identity
    from metavmm.services.operations import store
    from metavmm.services.operations.engine import Engine
    from metavmm.services.workloads.requests import CreateRequest
    from metavmm.services.workloads.service import WorkloadService

    one_site = parse_config("providers:\n  - {name: sim-a, kind: sim, site_count: 1, hosts_per_site: 2, seed: 8}\n")
    sessions = sqlite_sessions
    await sync_all(sessions, one_site)
    engine = Engine(sessions, one_site, "sqlite://")
    async with session_scope(sessions) as s:
        await get_or_create_project(s, "other")
        ops, other = await operator_identity(s), await operator_identity(s, "other")
    service = WorkloadService(sessions, one_site, engine, Placer(one_site))
    await engine.start(run_steps=True, poll_s=0.05)

    async def create(name: str, caller: Any = None, **groups: str) -> Workload:
        done = await service.create(caller or ops, CreateRequest(name=name, vcpus=1, ram_mib=256, **groups))
        for _ in polls():
            op = await store.get(sessions, done.operation.id)
            if op.state in store.TERMINAL:
                break
            await asyncio.sleep(0.05)
        assert op.state == "succeeded", op.error
        async with sessions() as s:
            row = await s.get(Workload, done.workload.id)
        assert row is not None and row.host_id is not None
        return row

    try:
        first = await create("db-1", anti_affinity_group="db")
        second = await create("db-2", anti_affinity_group="db")
        assert second.host_id != first.host_id and second.spec["anti_affinity_group"] == "db"
        with pytest.raises(NoPlacement, match="host excluded"):
            await service.create(ops, CreateRequest(name="db-3", vcpus=1, ram_mib=256, anti_affinity_group="db"))
        theirs = await create("db-x", other, anti_affinity_group="db")  # their group, not ours
        assert theirs.host_id in (first.host_id, second.host_id)
        app = await create("app", affinity_group="stack", strategy="spread")
        loner = await create("loner")  # where the default strategy puts the next compute: not app's host
        assert loner.host_id != app.host_id
        for i in range(3):  # the group keeps them on app's host
            assert (await create(f"db-{i}", affinity_group="stack")).host_id == app.host_id
        with pytest.raises(ValidationError, match="affinity_group 'Not A Group!'"):
            await service.create(ops, CreateRequest(name="x", vcpus=1, ram_mib=256, affinity_group="Not A Group!"))
        with pytest.raises(ValidationError, match="is in no placement group"):
            await service.create(ops, CreateRequest(name="n", kind="network", anti_affinity_group="db"))
    finally:
        await engine.stop()
