"""Issue 16: a publish killed between storing its blob and committing its row leaves a blob no entry
references; the broker sweeps such blobs (and the scratch files of uploads cut short) at start and
periodically, but never one younger than the grace period, which may be a publish still in flight.

The kills are real: a broker process (publish_runner.py) publishing an upload is SIGKILLed while the
bytes stream in, right after the blob entered the store, and after the row was flushed but not committed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from metavmm.api.app import create_app
from metavmm.catalog import db
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Image
from metavmm.foundation.config import parse_config
from metavmm.services.marketplace.entries import ImageMeta
from metavmm.services.marketplace.publish import blob_dir, publish
from metavmm.services.marketplace.sweep import sweep_blobs
from tests.polling import polls
from tests.services.marketplace.conftest import Disks
from tests.services.operations.test_intent_crash import kill_at

GRACE_S = 3600
LATER = 2 * GRACE_S  # seconds: a sweep "that much later" sees every file of the test older than the grace


def meta(name: str) -> ImageMeta:
    return ImageMeta(name=name, publisher="school-a", format="raw", visibility="federation")


def store_files() -> set[str]:
    """Everything in the store, scratch entries as ``.incoming/<name>``."""
    if not blob_dir().is_dir():
        return set()
    scratch = blob_dir() / ".incoming"
    return {p.name for p in blob_dir().iterdir() if p != scratch} | {
        f".incoming/{p.name}" for p in (scratch.iterdir() if scratch.is_dir() else ())}


async def rows(sessions: Any) -> list[str]:
    async with sessions() as s:
        return sorted(i.name for i in (await s.exec(select(Image))).all())


@pytest.mark.parametrize("point", ["streaming", "stored", "flushed"])
async def test_a_killed_publish_leaves_an_orphan_that_is_swept_after_the_grace(
        point: str, sessions: Any, db_url: str, disks: Disks) -> None:
    async with session_scope(sessions) as s:  # an entry that must survive every sweep
        kept = await publish(s, meta("kept"), str(disks.raw))
    kill_at("tests.services.marketplace.publish_runner", [db_url, str(disks.vmdk), "killed", point], point)

    assert await rows(sessions) == ["kept"]  # the killed publish committed nothing
    left = store_files() - {Path(kept.location).name}
    if point == "streaming":
        assert len(left) == 1 and next(iter(left)).startswith(".incoming/"), left
    else:
        digest = hashlib.sha256(disks.vmdk.read_bytes()).hexdigest()
        assert left == {f"{digest}.vmdk"}, left  # the orphan: bytes in the store, no row

    now = await sweep_blobs(sessions, grace_s=GRACE_S)  # young: it may be a publish in flight
    assert now.removed == [] and store_files() - {Path(kept.location).name} == left

    later = await sweep_blobs(sessions, grace_s=GRACE_S, now=time.time() + LATER)
    assert sorted(p.name for p in later.removed) == sorted(Path(f).name for f in left)
    assert store_files() == {Path(kept.location).name} and later.kept == 1
    assert Path(kept.location).read_bytes() == disks.raw.read_bytes()


async def test_a_blob_reused_by_a_new_publish_is_young_again(sqlite_sessions: Any, sqlite_url: str,
                                                             disks: Disks) -> None:
    """An old orphan whose bytes are published again becomes that entry's blob: the publish stamps it as
    it reuses it, so a sweep between the reuse and the commit leaves it alone."""
    kill_at("tests.services.marketplace.publish_runner",
            [sqlite_url, str(disks.raw), "killed", "stored"], "stored")
    (orphan,) = [blob_dir() / f for f in store_files() if not f.startswith(".incoming")]
    old = time.time() - LATER
    os.utime(orphan, (old, old))
    async with session_scope(sqlite_sessions) as s:
        image = await publish(s, meta("again"), str(disks.raw))
        assert image.location == str(orphan)
        swept = await sweep_blobs(sqlite_sessions, grace_s=GRACE_S)  # before the commit: no row references it
        assert swept.removed == [] and swept.young == 1
    assert orphan.read_bytes() == disks.raw.read_bytes()


async def test_the_broker_sweeps_at_start(aiohttp_client: Any, sqlite_url: str, disks: Disks) -> None:
    await db.upgrade_async(sqlite_url)
    sql = db.make_engine(sqlite_url)
    try:
        async with session_scope(db.make_sessionmaker(sql)) as s:
            kept = await publish(s, meta("kept"), str(disks.raw))
    finally:
        await sql.dispose()
    orphan, young, scratch = blob_dir() / f"{'a' * 64}.qcow2", blob_dir() / f"{'b' * 64}.raw", \
        blob_dir() / ".incoming" / "cut-upload.part"
    for path in (orphan, young, scratch):
        path.write_bytes(b"left by a killed publish")
    old = time.time() - LATER
    for path in (orphan, scratch, Path(kept.location)):
        os.utime(path, (old, old))
    config = parse_config(f"marketplace: {{blob_sweep_s: 3600, blob_sweep_grace_s: {GRACE_S}}}\n")
    await aiohttp_client(create_app(config, sqlite_url, sync=False))
    for _ in polls():
        if not orphan.exists() and not scratch.exists():
            break
        await asyncio.sleep(0.05)
    assert (orphan.exists(), scratch.exists(), young.exists(), Path(kept.location).exists()) == \
        (False, False, True, True)
