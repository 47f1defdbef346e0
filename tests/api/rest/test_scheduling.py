"""REST endpoints of the scheduler over a real (SQLite) catalog filled by the sim driver."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func
from sqlmodel import select

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.api.rest import scheduling
from metavmm.catalog.models import Operation, Workload
from metavmm.drivers.sim import SimDriver
from metavmm.foundation.config import parse_config
from metavmm.foundation.records import HostInfo
from metavmm.services.sync import sync_all
from tests.auth_helpers import authorize

CONFIG = """
federation: {name: test, currency: USD}
providers:
  - name: home
    kind: sim
    site_count: 2
    hosts_per_site: 3
    seed: 3
    sites:
      - {region: r1, country: TW}
      - {region: r2, country: TW}
  - name: cloud
    kind: sim
    on_prem: false
    hosts_per_site: 0
    price_per_vcpu_hour: "0.05"
    sites:
      - {region: us1, country: US}
policies:
  - name: overflow
    when_utilisation_above: 0.5
    allowed_providers: [cloud]
    monthly_budget: "100"
"""


@pytest.fixture
async def client(aiohttp_client: Any, sqlite_url: str) -> Any:
    cfg = parse_config(CONFIG)
    c = await aiohttp_client(create_app(cfg, sqlite_url, sync=False))
    results = await sync_all(c.server.app[keys.SESSIONS], cfg)
    assert all(r.error is None for r in results)
    await authorize(c, "admin")
    return c


async def test_placement_dry_run_explains(client: Any) -> None:
    resp = await client.post("/api/v1/placements", json={"name": "vm", "vcpus": 2, "ram_mib": 4096,
                                                         "providers": ["home"], "explain": True})
    body = await resp.json()
    assert resp.status == 200 and body["placed"] is True
    assert body["provider"] == "home" and body["host"] and body["price_per_hour"]
    assert [(s["name"], s["action"]) for s in body["steps"]] == [
        ("create", "vm.create"), ("wait-running", "vm.wait"), ("record", "workload.record")]
    create = body["steps"][0]
    assert create["args"]["host"] == body["host"] and create["args"]["workload_id"] is None  # a dry run
    assert create["compensate"] == "vm.delete" and body["steps"][-1]["commit"] is True
    assert body["burst"]["outcome"] == "pinned"  # the request names its provider: no policy applies
    summary = body["placement"]
    assert summary["host"] == body["host"] and summary["cost_per_hour"]["currency"] == "USD"
    assert summary["burst"] == body["burst"] and 1 <= len(summary["alternatives"]) <= 3
    # explain: every candidate once, chosen, passed (how much costlier) or rejected (needed vs free)
    outcomes = {e["candidate"]: e["outcome"] for e in body["explanation"]}
    assert len(outcomes) == len(body["explanation"]) and outcomes[body["host"]] == "chosen"
    assert len([e for e in body["explanation"] if e["kind"] == "host"]) == 6  # home: 2 sites x 3 hosts
    assert all(e["cost_difference_per_hour"] is not None for e in body["explanation"] if e["outcome"] == "passed")
    none = await client.post("/api/v1/placements", json={"vcpus": 2, "ram_mib": 4096, "residency": ["JP"]})
    body = await none.json()
    assert body["placed"] is False
    # on-prem first (the cloud is not on-prem), then the policy's cloud: each answer is in the summary
    assert body["summary"] == ("0/7 candidates are available: 6 data residency, 1 not on-prem; policy overflow: "
                               "0/7 candidates are available: 6 provider not allowed, 1 data residency")
    assert len(body["rejections"]) >= 3 and body["burst"]["outcome"] == "unplaced"
    first = body["placement"]["alternatives"][0]
    assert first["lost"] == "filter" and first["code"] == "data residency" and "JP" in first["reason"]


async def test_a_described_foreign_guest_shows_its_virt_v2v_steps(client: Any) -> None:
    """A dry run may describe an image instead of naming one: an ESXi guest on the KVM home sites needs
    virt-v2v, so the plan fetches, fixes and imports it before the create."""
    body = await (await client.post("/api/v1/placements", json={
        "vcpus": 1, "ram_mib": 1024, "providers": ["home"], "image_format": "vmdk", "image_hypervisor": "esxi",
        "image_size_bytes": 2 << 30, "boot_marker": "login:"})).json()
    assert body["placed"] is True, body["summary"]
    assert [s["action"] for s in body["steps"]][:4] == ["image.fetch", "disk.v2v", "image.import", "vm.create"]
    assert body["seconds_to_ready"] > 600  # virt-v2v's fixed start-up alone is 600 s
    bad = await client.post("/api/v1/placements", json={"vcpus": 1, "ram_mib": 1, "boot_marker": "[x"})
    assert bad.status == 400 and "not a valid regex" in (await bad.json())["detail"]


async def test_batch_and_bad_input(client: Any) -> None:
    reqs = [{"name": f"w{i}", "vcpus": 1, "ram_mib": 1024} for i in range(20)]
    resp = await client.post("/api/v1/placements/batch", json={"requests": reqs})
    body = await resp.json()
    assert resp.status == 200 and body["placed"] == 20 and body["task_classes"] == 1
    bad = await client.post("/api/v1/placements", json={"vcpus": 0, "ram_mib": 1})
    assert bad.status == 400 and "body vcpus" in (await bad.json())["detail"]


async def test_migration_plan_and_unknown_host(client: Any) -> None:
    resp = await client.post("/api/v1/migrations/plan", json={"kind": "evacuate-site", "site": "r1"})
    body = await resp.json()
    assert resp.status == 200 and body["dry_run"] is True and body["kind"] == "evacuate-site"
    missing = await client.post("/api/v1/migrations/plan", json={"kind": "evacuate-host", "host": "nope"})
    assert missing.status == 404


async def test_policies_and_replay(client: Any) -> None:
    pols = await (await client.get("/api/v1/policies")).json()
    assert pols[0]["name"] == "overflow" and pols[0]["return_below"] == pytest.approx(0.4)
    trace = [{"at": i * 10, "name": f"j{i}", "vcpus": 16, "ram_mib": 8192, "hours": 1} for i in range(30)]
    resp = await client.post("/api/v1/policies/overflow/replay", json={"trace": trace})
    body = await resp.json()
    assert resp.status == 200 and body["requests"] == 30
    assert body["burst"] > 0 and float(body["public_cost"]) > 0
    assert sum(body["destinations"].values()) == 30
    assert (await client.post("/api/v1/policies/none/replay", json={"trace": trace})).status == 404


def test_routes_declare_roles() -> None:
    roles = {(r.method, r.path): r.extra.get("role") for r in scheduling.api.routes}
    assert roles == {("POST", "/placements"): "member", ("POST", "/placements/batch"): "member",
                     ("POST", "/migrations/plan"): "admin", ("GET", "/policies"): "reader",
                     ("POST", "/policies/{name}/replay"): "member"}


async def test_evacuation_plan_moves_catalog_workloads(client: Any) -> None:
    from sqlmodel import select

    from metavmm.catalog import models as m

    async with client.server.app[keys.SESSIONS]() as s:
        host = (await s.exec(select(m.Host).where(m.Host.name == "r1-h00000"))).one()
        s.add(m.Workload(kind="compute", name="db-1", site_id=host.site_id, host_id=host.id,
                         spec={"vcpus": 2, "ram_mib": 2048, "disk_gib": 10}))
        await s.commit()
    resp = await client.post("/api/v1/migrations/plan", json={"kind": "evacuate-host", "host": "r1-h00000"})
    body = await resp.json()
    assert resp.status == 200, body
    assert [m["workload"] for m in body["moves"]] == ["db-1"]
    move = body["moves"][0]
    assert move["target_host"] != "r1-h00000" and move["seconds"] > 0
    assert move["steps"][0]["action"] in ("live-migrate", "export")
    assert body["summary"].startswith("evacuate-host r1-h00000: 1 moves")


# --- the dry run is the create's own decision ------------------------------------------------------------------

TRANSIT = """
federation: {name: test, currency: USD}
providers:
  - {name: home, kind: sim, site_count: 1, hosts_per_site: 1, seed: %d, sites: [{region: r1, country: TW}]}
%s
operations: {reconcile_interval_s: 0}
"""
CLOUD = """  - name: cloud
    kind: sim
    on_prem: false
    hosts_per_site: 0
    price_per_vcpu_hour: "0.05"
    sites: [{region: us1, country: TW}]
"""


async def _home_host() -> tuple[int, HostInfo]:
    """A seed whose one simulated home host is x86_64 with 8 to 22 vCPUs free (after three 2-vCPU creates
    what is left fits a priced sim flavor, at most 16 vCPUs), and that host."""
    for seed in range(500):
        cfg = parse_config(TRANSIT % (seed, ""))
        hosts = (await SimDriver(cfg.provider("home")).inventory()).hosts  # type: ignore[arg-type]
        if hosts[0].cpu_arch == "x86_64" and 8 <= hosts[0].cpu_cores - hosts[0].vcpus_used <= 22:
            return seed, hosts[0]
    raise AssertionError("no seed gives an x86_64 host with that room")


async def _transit_client(aiohttp_client: Any, url: str, federation: str) -> Any:
    cfg = parse_config(federation)
    client = await aiohttp_client(create_app(cfg, url, sync=False))
    app = client.server.app
    assert all(r.error is None for r in await sync_all(app[keys.SESSIONS], cfg))
    await app[keys.OPERATIONS].stop()  # creates stay pending: in transit, invisible to the hosts' numbers
    await authorize(client, "member", project="alpha")
    return client


async def _dry(client: Any, **body: Any) -> dict[str, Any]:
    resp = await client.post("/api/v1/placements", json={"name": "vm", "ram_mib": 512, **body})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def _create(client: Any, **body: Any) -> Any:
    return await client.post("/api/v1/workloads", json={"name": "vm", "ram_mib": 512, **body})


async def _rows(client: Any) -> tuple[int, int]:
    async with client.server.app[keys.SESSIONS]() as s:
        return ((await s.exec(select(func.count()).select_from(Workload))).one(),
                (await s.exec(select(func.count()).select_from(Operation))).one())


async def test_dry_run_counts_creates_in_transit_as_the_next_create_does(aiohttp_client: Any,
                                                                          sqlite_url: str) -> None:
    seed, host = await _home_host()
    free = host.cpu_cores - host.vcpus_used
    client = await _transit_client(aiohttp_client, sqlite_url, TRANSIT % (seed, ""))
    for i in range(3):  # 3 x 2 vCPUs placed on the host, not yet created: the catalog's numbers omit them
        resp = await _create(client, name=f"t{i}", vcpus=2)
        assert resp.status == 202 and (await resp.json())["workload"]["spec"]["placement"]["host"] == host.name
    left = free - 6
    rows = await _rows(client)

    too_big = await _dry(client, vcpus=left + 1)
    assert rows == await _rows(client)  # a dry run writes nothing
    assert too_big["placed"] is False and too_big["burst"]["outcome"] == "no-policy"
    want = f"cpu: need {left + 1} vCPU, free at best {left}"
    assert [r["message"] for r in too_big["rejections"] if r["candidate"] == "home/r1"] == [want]
    refused = await _create(client, vcpus=left + 1)
    body = await refused.json()
    assert refused.status == 409 and body["reasons"]["home/r1"] == [want]  # the create sees the same
    assert rows == await _rows(client)
    home = next(a for a in too_big["placement"]["alternatives"] if a["candidate"] == "home/r1")
    assert home["lost"] == "filter" and home["filter"] == "capacity" and home["reason"] == want
    assert home["numbers"]["free_vcpus"] == left and home["numbers"]["need_vcpus"] == left + 1

    fits = await _dry(client, vcpus=left)
    assert fits["placed"], fits["summary"]
    assert fits["host"] == host.name
    created = await _create(client, vcpus=left)
    assert created.status == 202
    stored = (await created.json())["workload"]["spec"]["placement"]
    assert stored == fits["placement"]  # the workload keeps exactly what the dry run said
    assert stored["host"] == host.name
    assert stored["cost_per_hour"] == {"amount": stored["price_per_hour"], "currency": "USD"}
    gone = await _dry(client, vcpus=1)  # now the host is full, in transit
    assert gone["placed"] is False and "free at best 0" in gone["summary"] + str(gone["rejections"])


async def test_dry_run_shows_the_burst_policy_overflow_in_transit_creates_cause(aiohttp_client: Any,
                                                                                 sqlite_url: str) -> None:
    seed, host = await _home_host()
    threshold = (host.vcpus_used + 6.5) / host.cpu_cores  # 3 creates of 2 vCPUs stay home; one more vCPU does not
    policy = CLOUD + (f"policies:\n  - {{name: overflow, when_utilisation_above: {threshold}, "
                      "allowed_providers: [cloud], monthly_budget: \"1000\"}")
    client = await _transit_client(aiohttp_client, sqlite_url, TRANSIT % (seed, policy))
    before = await _dry(client, vcpus=1)
    assert before["provider"] == "home" and before["burst"]["outcome"] == "on-prem"
    assert before["burst"]["utilisation"] == pytest.approx((host.vcpus_used + 1) / host.cpu_cores, abs=1e-4)
    for i in range(3):
        resp = await _create(client, name=f"t{i}", vcpus=2)
        assert (await resp.json())["workload"]["spec"]["placement"]["provider"] == "home"
    after = await _dry(client, vcpus=1)
    assert after["provider"] == "cloud" and after["burst"]["outcome"] == "burst"
    assert after["burst"]["policy"] == "overflow" and after["burst"]["threshold"] == pytest.approx(threshold)
    assert after["burst"]["utilisation"] == pytest.approx((host.vcpus_used + 7) / host.cpu_cores, abs=1e-4)
    home = after["placement"]["alternatives"][0]
    assert home["lost"] == "burst" and home["candidate"] == host.name
    assert Decimal(home["cost_difference_per_hour"]) < 0  # home was cheaper: the policy, not the price, decided
    created = await _create(client, vcpus=1)
    stored = (await created.json())["workload"]["spec"]["placement"]
    assert stored["provider"] == "cloud" and stored == after["placement"]
