"""Measured link rates: each ordered pair keeps its newest samples only, sums up as their median, and a
transfer that moved nothing (or took no time) is no sample; on both catalogs (the trim is one DELETE with
a sub-select)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import select

from metavmm.catalog.models import LinkSample, Provider
from metavmm.foundation.config import SchedulerSettings
from metavmm.services import linkrates

MIB = 2**20


async def test_a_pair_keeps_its_newest_samples_and_their_median(sessions: Any) -> None:
    for i in range(1, linkrates.HISTORY + 6):  # i MiB/s: 1 .. HISTORY + 5
        await linkrates.record(sessions, source="a", target="b", kind="cold_migrate", size_bytes=i * MIB, seconds=1.0)
    await linkrates.record(sessions, source="b", target="a", kind="dr_replicate", size_bytes=300 * MIB, seconds=2.0)
    assert await linkrates.record(sessions, source="a", target="b", kind="cold_migrate", size_bytes=0,
                                  seconds=1.0) is None
    assert await linkrates.record(sessions, source="a", target="b", kind="cold_migrate", size_bytes=MIB,
                                  seconds=0.0) is None
    async with sessions() as session:
        kept = (await session.exec(select(LinkSample).where(LinkSample.source == "a"))).all()
        rates = await linkrates.measured(session)
    assert sorted(s.bytes // MIB for s in kept) == list(range(6, linkrates.HISTORY + 6))  # the oldest 5 dropped
    ab = rates["a", "b"]
    assert (ab.samples, ab.median_mib_per_s, ab.last_mib_per_s, ab.kinds) == \
        (linkrates.HISTORY, (15 + 16) / 2, linkrates.HISTORY + 5, ("cold_migrate",))
    assert 0 <= ab.age_s() < 600 and ab.age_s(ab.last_at + timedelta(hours=2)) == 7200
    ba = rates["b", "a"]
    assert (ba.samples, ba.median_mib_per_s, ba.kinds) == (1, 150.0, ("dr_replicate",))
    assert set(rates) == {("a", "b"), ("b", "a")}


async def test_links_pair_every_provider_with_the_configured_and_measured_rates(sessions: Any) -> None:
    async with sessions() as session:
        session.add_all([Provider(name="lab", kind="libvirt", on_prem=True),
                         Provider(name="aws", kind="aws", on_prem=False)])
        await session.commit()
    await linkrates.record(sessions, source="lab", target="aws", kind="cold_migrate", size_bytes=80 * MIB,
                           seconds=4.0)
    async with sessions() as session:
        rows = await linkrates.links(session, SchedulerSettings(wan_mib_per_s=40, transfer_mib_per_s=400))
    got = {(r.source, r.target): (r.configured.mib_per_s, r.measured and r.measured.median_mib_per_s) for r in rows}
    assert got == {("aws", "aws"): (400, None), ("aws", "lab"): (40, None), ("lab", "aws"): (40, 20.0),
                   ("lab", "lab"): (400, None)}
    assert datetime.now(UTC) - next(r for r in rows if r.measured).measured.last_at < timedelta(minutes=10)  # type: ignore[union-attr]
