"""The placer's snapshot cache: reused while the catalog's fingerprint holds, reloaded when it changes."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlmodel import select

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Image, ImageReplica, Price, Site
from metavmm.foundation.config import parse_config
from metavmm.services.placement import Placer
from metavmm.services.sync import sync_all

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
