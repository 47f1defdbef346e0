"""Reconciling provider inventory into the catalog, on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from sqlmodel import select

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Flavor, Host, Price, Provider, Site, Workload
from metavmm.foundation.config import parse_config
from metavmm.foundation.records import FlavorInfo, HostInfo, Inventory, SiteInfo, VmInfo, VmState
from metavmm.services.observer import apply_inventory, upsert_provider
from metavmm.services.sync import sync_all

CFG = parse_config("""
providers:
  - name: lab
    kind: sim
    sites: [{region: r1, country: TW, zones: [r1a]}]
""")

HOST = HostInfo(name="h1", region="r1", zone="r1a", hypervisor_type="kvm", cpu_arch="x86_64", cpu_vendor="Intel",
                cpu_model="Icelake-Server", cpu_features=("avx2", "sse4.2", "vmx", "weird-feature"), cpu_cores=64,
                memory_mib=262144, gpus={"A30": 2}, nested_virt=True)


async def _apply(sessions, inv: Inventory) -> None:  # type: ignore[no-untyped-def]
    async with session_scope(sessions) as s:
        row = await upsert_provider(s, CFG.providers[0], ["live_migration"])
        await apply_inventory(s, row, inv, CFG.providers[0].sites)


async def test_hosts_flavors_and_vms_are_reconciled(sessions) -> None:  # type: ignore[no-untyped-def]
    inv = Inventory(
        sites=(SiteInfo("r1", ("r1a",)),), hosts=(HOST, replace(HOST, name="h2")),
        flavors=(FlavorInfo("f.big", vcpus=8, ram_mib=32768, gpu_model="A30", gpu_count=1),),
        vms=(VmInfo("vm-ours", "a", "r1", VmState.RUNNING, host="h1", workload_id=None),),
    )
    await _apply(sessions, inv)
    async with sessions() as s:
        site = (await s.exec(select(Site))).one()
        assert (site.name, site.country) == ("lab/r1", "TW")
        h1 = (await s.exec(select(Host).where(Host.name == "h1"))).one()
        assert h1.cpu_traits == ["HW_CPU_X86_AVX2", "HW_CPU_X86_SSE42", "HW_CPU_X86_VMX"]
        assert "weird-feature" in h1.cpu_features and h1.gpus == {"A30": 2} and h1.zone_id is not None
        vm = (await s.exec(select(Workload))).one()
        assert vm.managed is False and vm.host_id == h1.id and vm.observed_state == "running"
        first_ids = (h1.id, vm.id)

    # h2 and the VM disappear, the flavor goes away: marked, never deleted; ids stay stable.
    await _apply(sessions, replace(inv, hosts=(replace(HOST, cpu_cores=96),), vms=(), flavors=()))
    async with sessions() as s:
        hosts = {h.name: h for h in (await s.exec(select(Host))).all()}
        assert hosts["h1"].id == first_ids[0] and hosts["h1"].cpu_cores == 96
        assert hosts["h2"].state == "gone"
        vm = (await s.exec(select(Workload))).one()
        assert vm.id == first_ids[1] and vm.present is False and vm.observed_state == "gone"
        assert (await s.exec(select(Flavor))).one().present is False


async def test_sync_all_records_failures_per_provider(sessions) -> None:  # type: ignore[no-untyped-def]
    cfg = parse_config("""
providers:
  - {name: good, kind: sim, site_count: 2, hosts_per_site: 3}
  - {name: broken, kind: libvirt, endpoint: "test+unix:///nonexistent/socket"}
prices:
  - provider: broken
    region: local
    currency: TWD
    effective_date: 2026-07-01
    source: centre cost model
    items: [{flavor: m1.highmem4, vcpus: 4, ram_gib: 32, amount: "6.68"}]
""")
    results = {r.provider: r for r in await sync_all(sessions, cfg)}
    assert results["good"].error is None and results["good"].counts.hosts == 6
    assert results["broken"].error and "broken: connect:" in results["broken"].error
    async with sessions() as s:
        rows = {p.name: p for p in (await s.exec(select(Provider))).all()}
        assert rows["broken"].sync_error == results["broken"].error and rows["good"].synced_at
        price = (await s.exec(select(Price).where(Price.provider_id == rows["broken"].id))).one()
        assert (price.amount, price.currency, price.source) == (Decimal("6.68"), "TWD", "centre cost model")
        assert len((await s.exec(select(Host))).all()) == 6

    # A second sync replaces prices from the same source instead of piling them up.
    await sync_all(sessions, cfg)
    async with sessions() as s:
        assert len((await s.exec(select(Price).where(Price.source == "centre cost model"))).all()) == 1
