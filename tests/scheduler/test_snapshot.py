"""The snapshot read from a real catalog (SQLite and PostgreSQL): frozen, complete, prices normalised."""

from __future__ import annotations

import dataclasses
from datetime import date
from decimal import Decimal

import pytest
from sqlmodel import select

from metavmm.catalog import models as m
from metavmm.foundation.config import parse_config
from metavmm.scheduler.pipeline import Scheduler
from metavmm.scheduler.request import PlacementRequest
from metavmm.scheduler.snapshot import load_snapshot
from metavmm.services.sync import register_providers, sync_all

FED = """
federation: {currency: USD}
providers:
  - {name: home, kind: sim, hosts_per_site: 3, seed: 2, sites: [{region: r1, country: TW}]}
  - {name: eu, kind: sim, on_prem: false, hosts_per_site: 0, currency: EUR, sites: [{region: fra, country: DE}]}
prices:
  - provider: home
    region: r1
    currency: USD
    effective_date: 2026-01-01
    source: test
    items: [{flavor: custom, unit: vcpu-hour, amount: "0.01"}, {flavor: custom, unit: gib-hour, amount: "0.002"}]
"""


async def _filled(sessions) -> None:  # type: ignore[no-untyped-def]
    cfg = parse_config(FED)
    await register_providers(sessions, cfg)
    assert all(r.error is None for r in await sync_all(sessions, cfg))
    async with sessions() as s:
        home = (await s.exec(select(m.Host).where(m.Host.name == "r1-h00000"))).one()
        project = m.Project(name="physics")
        s.add(project)
        await s.flush()
        s.add(m.Quota(project_id=project.id, resource="vcpus", limit=Decimal(6)))
        s.add(m.Workload(kind="compute", name="old", project_id=project.id, site_id=home.site_id, host_id=home.id,
                         spec={"vcpus": 4, "ram_mib": 4096}))
        await s.commit()


async def test_loads_everything_frozen(sessions) -> None:  # type: ignore[no-untyped-def]
    await _filled(sessions)
    async with sessions() as s:
        snap = await load_snapshot(s, currency="USD")
    assert {site.name for site in snap.sites} == {"home/r1", "eu/fra"}
    home = snap.site_named("r1")
    assert len(home.hosts) == 3 and home.country == "TW" and home.hypervisors == frozenset({"kvm"})
    vcpu, gib = home.prices.families["custom"]
    assert vcpu.amount == Decimal("0.01") and vcpu.effective_date == date(2026, 1, 1) and gib.amount == Decimal("0.002")
    eu = snap.site_named("fra")
    assert not eu.hosts and eu.flavors and eu.prices.flavors["sim.small"].problem == \
        "price in EUR; no currency converter to compare with USD"
    assert snap.usage[snap.projects["physics"]]["vcpus"] == 4
    assert [w.name for w in snap.workloads] == ["old"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        home.hosts[0].cores = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        snap.projects["x"] = 1  # type: ignore[index]

    sched = Scheduler(snap)
    p = sched.place(PlacementRequest("q", 4, 1024, project="physics"))
    assert not p.placed and p.summary == "0/4 candidates are available: 4 quota vcpus"
    only_eu = sched.place(PlacementRequest("e", 1, 1024, public_only=True))
    assert "currency not comparable" in only_eu.summary


async def test_converter_is_applied(sessions) -> None:  # type: ignore[no-untyped-def]
    await _filled(sessions)
    async with sessions() as s:
        snap = await load_snapshot(s, currency="USD", to_currency=lambda a, c: a * Decimal("1.08"))
    eu = snap.site_named("fra")
    small = eu.prices.flavors["sim.small"]
    assert small.currency == "EUR" and small.amount == small.original_amount * Decimal("1.08")
    p = Scheduler(snap).place(PlacementRequest("e", 1, 1024, public_only=True))
    assert p.placed and p.site == "eu/fra" and p.flavor == "sim.small"
