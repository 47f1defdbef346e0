"""The catalog's change counters and the read cache on top of them: a commit through the watched engine
ends what was read before it, a rollback does not, and the time bound ends the rest."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlmodel import select

from metavmm.catalog.changes import ANY, Changes, TtlCache
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Project, User


async def test_commits_end_cached_reads_rollbacks_and_other_tables_do_not(sessions: Any) -> None:
    engine = sessions.kw["bind"]
    changes = Changes().watch(engine)
    now = [100.0]
    projects = TtlCache[str](changes, ("project",), ttl_s=5, clock=lambda: now[0])
    everything = TtlCache[str](changes, (ANY,), ttl_s=5, clock=lambda: now[0])
    for cache in (projects, everything):
        cache.put("k", "v", cache.version())
        assert cache.get("k") == "v"

    async with sessions() as s:  # a write rolled back changes nothing
        s.add(Project(name="never"))
        await s.flush()
        await s.rollback()
    assert projects.get("k") == "v" and everything.get("k") == "v"

    async with session_scope(sessions) as s:  # the ORM's INSERT, committed
        s.add(Project(name="p1"))
    assert projects.get("k") is None and everything.get("k") is None

    version = projects.version()  # a read that started before a commit is not kept
    async with session_scope(sessions) as s:  # a statement outside the ORM's unit of work counts too
        await s.exec(update(Project).where(Project.name == "p1").values(name="p2"))  # type: ignore[call-overload]
    projects.put("k", "stale", version)
    assert projects.get("k") is None

    projects.put("k", "v", projects.version())
    async with session_scope(sessions) as s:  # another table: only the cache of everything ends
        everything.put("k", "v", everything.version())
        s.add(User(name="u1"))
    assert projects.get("k") == "v" and everything.get("k") is None

    now[0] += 5  # the time bound (what another process's commits rely on)
    assert projects.get("k") is None
    projects.put("k", "v", projects.version(), until=now[0] + 1)  # an earlier end (a token's expiry) wins
    now[0] += 1
    assert projects.get("k") is None


def test_a_disabled_or_full_cache() -> None:
    changes = Changes()
    off = TtlCache[int](changes, (ANY,), ttl_s=0)
    off.put("k", 1, off.version())
    assert off.get("k") is None
    small = TtlCache[int](changes, (ANY,), ttl_s=5, max_entries=2)
    for i in range(3):
        small.put(i, i, small.version())
    assert len(small.entries) <= 2 and small.get(2) == 2
    changes.bump(["workload"])
    assert small.get(2) is None


async def test_the_project_lock_is_not_a_change(sessions: Any) -> None:
    from metavmm.services.quotas import lock_project

    changes = Changes().watch(sessions.kw["bind"])
    async with session_scope(sessions) as s:
        s.add(Project(name="locked"))
    before = changes.version(("project",))
    async with session_scope(sessions) as s:
        project = (await s.exec(select(Project).where(Project.name == "locked"))).one()
        await lock_project(s, project.id or 0)
    assert changes.version(("project",)) == before


async def test_misses_at_one_version_share_one_read_and_a_commit_starts_another() -> None:
    """read_through (issue 23 item 15): callers missing while a read of the key runs at the same version get
    its answer; one arriving after a commit to the cache's tables reads again; an error reaches every caller
    of the read and nothing is kept; a caller that goes away leaves the read to the others."""
    import asyncio

    changes = Changes()
    cache = TtlCache[str](changes, ("project",), ttl_s=5)
    reads: list[asyncio.Event] = []

    async def read() -> tuple[str | None, None]:
        gate = asyncio.Event()
        reads.append(gate)
        n = len(reads)
        await gate.wait()
        return f"read {n}", None

    first = [asyncio.ensure_future(cache.read_through("k", read)) for _ in range(5)]
    for _ in range(3):  # each caller, then the read's own task, get to run
        await asyncio.sleep(0)
    assert len(reads) == 1 and cache.shared == 4
    changes.bump(["project"])  # committed while the read runs: what it returns may predate that commit
    after = asyncio.ensure_future(cache.read_through("k", read))
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(reads) == 2
    first[0].cancel()  # its caller went away: the others still get the read
    for gate in reads:
        gate.set()
    assert [await f for f in first[1:]] == ["read 1"] * 4 and await after == "read 2"
    assert cache.get("k") == "read 2"  # the read from before the commit was not kept

    async def broken() -> tuple[str | None, None]:
        await asyncio.sleep(0)
        raise RuntimeError("the catalog is away")

    changes.bump(["project"])
    failing = [asyncio.ensure_future(cache.read_through("k", broken)) for _ in range(3)]
    results = await asyncio.gather(*failing, return_exceptions=True)
    assert [str(r) for r in results] == ["the catalog is away"] * 3 and cache.get("k") is None
    assert not cache.reading  # nothing left running
