"""On-prem cost as a real price in its own currency: a centre's TWD cost model is converted with the
federation file's rate table and compared with a public cloud's USD prices by the create's own Placer
(it was refused as 'no currency converter' before, so home work could only burst or fail)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.foundation.config import parse_config
from metavmm.services.sync import sync_all
from tests.auth_helpers import authorize

CONFIG = """
federation: {name: test, currency: USD}
currency: {base: USD, date: 2026-11-01, source: "fixed for the test", rates: {TWD: "0.03125"}}
providers:
  - {name: home, kind: sim, site_count: 1, hosts_per_site: 3, seed: 3, price_per_vcpu_hour: "0.64", currency: TWD,
     sites: [{region: r1, country: TW}]}
  - {name: cloud, kind: sim, on_prem: false, hosts_per_site: 0, price_per_vcpu_hour: "0.05",
     sites: [{region: us1, country: TW}]}
discounts:
  - {provider: cloud, factor: "0.5", valid_from: 2026-01-01, source: "reserved for the test"}
"""


async def test_an_on_prem_price_in_twd_is_a_real_price_in_the_placement(aiohttp_client: Any, sqlite_url: str) -> None:
    cfg = parse_config(CONFIG)
    client = await aiohttp_client(create_app(cfg, sqlite_url, sync=False))
    assert all(r.error is None for r in await sync_all(client.server.app[keys.SESSIONS], cfg))
    await authorize(client, "member")
    resp = await client.post("/api/v1/placements", json={"name": "vm", "vcpus": 2, "ram_mib": 2048,
                                                         "explain": True})
    body = await resp.json()
    assert resp.status == 200 and body["placed"], body["summary"]
    # 0.64 TWD per vCPU-hour at 1 TWD = 0.03125 USD is 0.02 USD: home's 2 vCPUs cost 0.04 USD/h, less than the
    # cloud's 0.05 per vCPU-hour, even at its reserved half price (0.05 USD/h for 2 vCPUs)
    assert body["provider"] == "home" and Decimal(body["price_per_hour"]) == Decimal("0.04")
    cloud = next(e for e in body["explanation"] if e["site"] == "cloud/us1")
    assert cloud["outcome"] == "passed" and Decimal(cloud["price_per_hour"]) == Decimal("0.05")
    assert not any("no currency converter" in str(e["reason"]) for e in body["explanation"])
