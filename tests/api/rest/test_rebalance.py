"""The rebalance routes over a real (SQLite) catalog filled by the sim driver: dry run, load override,
maintenance set and cleared, and bad input answered with the right status."""

from __future__ import annotations

from typing import Any

import pytest

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.foundation.config import parse_config
from metavmm.services.sync import sync_all
from tests.auth_helpers import authorize

CONFIG = """
providers:
  - {kind: sim, name: home, hosts_per_site: 2, seed: 8}
rebalance:
  - {name: pool, sites: [home/sim-000], cooldown_s: 0}
"""
H0 = "sim-000-h00000"


@pytest.fixture
async def client(aiohttp_client: Any, sqlite_url: str) -> Any:
    cfg = parse_config(CONFIG)
    c = await aiohttp_client(create_app(cfg, sqlite_url, sync=False))
    assert all(r.error is None for r in await sync_all(c.server.app[keys.SESSIONS], cfg))
    await authorize(c, "admin")
    return c


async def test_dry_run_override_maintenance_bad_input_and_members(client: Any) -> None:
    resp = await client.post("/api/v1/rebalance/load-override", json={"host": H0, "cpu_pct": 97})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["override_cpu_pct"] == 97
    resp = await client.post("/api/v1/rebalance/dry-run", json={})
    assert resp.status == 200, await resp.text()
    (pol,) = (await resp.json())["policies"]
    hosts = {h["host"]: h for h in pol["hosts"]}
    assert hosts[f"home/sim-000/{H0}"]["state"] == "hot" and hosts[f"home/sim-000/{H0}"]["source"] == "override"
    assert pol["dry_run"] and pol["moves"] == []  # no VM on it: nothing to move, and nothing moved

    resp = await client.post("/api/v1/rebalance/maintenance", json={"host": f"home/{H0}", "maintenance": True,
                                                                   "reason": "disk swap"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["host"] == {"host": f"home/sim-000/{H0}", "maintenance": True, "maintenance_reason": "disk swap",
                            "override_cpu_pct": 97.0, "override_mem_pct": None}
    assert {h["host"]: h["state"] for h in body["drain"][0]["hosts"]}[f"home/sim-000/{H0}"] == "maintenance"
    resp = await client.post("/api/v1/rebalance/maintenance", json={"host": H0, "maintenance": False})
    assert resp.status == 200 and not (await resp.json())["host"]["maintenance"]

    for path, body, status in BAD:
        resp = await client.post(path, json=body)
        assert resp.status == status, await resp.text()
        assert (await resp.json())["detail"]
    await authorize(client, "member")
    resp = await client.post("/api/v1/rebalance/dry-run", json={})
    assert resp.status == 403


BAD = [
    ("/api/v1/rebalance/load-override", {"host": H0, "cpu_pct": 150}, 400),
    ("/api/v1/rebalance/load-override", {"host": "nowhere", "cpu_pct": 50}, 404),
    ("/api/v1/rebalance/maintenance", {"host": "nowhere", "maintenance": True}, 404),
    ("/api/v1/rebalance/dry-run", {"policy": "nope"}, 404),
    ("/api/v1/rebalance/run", {"extra": 1}, 400),
]

