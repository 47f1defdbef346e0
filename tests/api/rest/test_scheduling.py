"""REST endpoints of the scheduler over a real (SQLite) catalog filled by the sim driver."""

from __future__ import annotations

from typing import Any

import pytest

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.api.rest import scheduling
from metavmm.foundation.config import parse_config
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
                                                         "explain": True})
    body = await resp.json()
    assert resp.status == 200 and body["placed"] is True
    assert body["provider"] == "home" and body["host"] and body["price_per_hour"]
    assert [s["action"] for s in body["steps"]] == ["create", "verify"]
    none = await client.post("/api/v1/placements", json={"vcpus": 2, "ram_mib": 4096, "residency": ["JP"]})
    body = await none.json()
    assert body["placed"] is False
    assert body["summary"] == "0/7 candidates are available: 7 data residency"
    assert len(body["rejections"]) == 3


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
