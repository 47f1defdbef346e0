"""Measured link rates (issue 18): a real cold migration between two sim providers, run by the engine inside
the app, records the rate of its disk's transfer; ``GET /api/v1/links`` reads it next to the configured rate
(any role, nothing of the project whose workload moved), and the overview's federation map shows it in
the SVG's ``data-measured-*`` attributes."""

from __future__ import annotations

import asyncio
from typing import Any

from lxml import etree
from sqlmodel import select

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog.models import LinkSample
from metavmm.foundation.config import parse_config
from metavmm.services.sync import sync_all
from tests.api.test_observability import _create
from tests.api.ui.test_session import _browser, _page
from tests.polling import polls
from tests.world import seed

API = "/api/v1"
CONFIG = """
providers:
  - {kind: sim, name: sima, site_count: 1, hosts_per_site: 2}
  - {kind: sim, name: simb, site_count: 1, hosts_per_site: 2}
operations: {reconcile_interval_s: 0, retry_base_s: 0.01}
scheduler: {wan_mib_per_s: 25, transfer_mib_per_s: 100}
"""
NS = {"s": "http://www.w3.org/2000/svg"}


async def _done(client: Any, op_id: str, headers: dict[str, str]) -> dict[str, Any]:
    for _ in polls():
        body = await (await client.get(f"{API}/operations/{op_id}", headers=headers)).json()
        if body["state"] in ("succeeded", "failed", "cancelled", "rolled_back"):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"operation {op_id} did not finish: {body}")


async def test_a_cold_migration_records_its_rate_for_rest_and_the_map(aiohttp_client: Any, sqlite_url: str) -> None:
    app = create_app(parse_config(CONFIG), sqlite_url, sync=False)
    client = await aiohttp_client(app)
    w = await seed(app)
    await sync_all(app[keys.SESSIONS], app[keys.CONFIG])
    member = w.auth("alpha_member")

    before = await (await client.get(f"{API}/links", headers=member)).json()
    assert {(r["source"], r["target"]): (r["configured_mib_per_s"], r["measured"]) for r in before} == {
        ("sima", "sima"): (100, None), ("sima", "simb"): (25, None), ("simb", "sima"): (25, None),
        ("simb", "simb"): (100, None)}

    created = await _create(client, w, "alpha_member", "mover")
    wid = created["workload"]["id"]
    sites = {s["id"]: s["name"]
             for s in (await (await client.get(f"{API}/sites?limit=500", headers=member)).json())["items"]}
    workload = await (await client.get(f"{API}/workloads/{wid}", headers=member)).json()
    here = sites[workload["site_id"]].split("/")[0]
    there = "simb" if here == "sima" else "sima"
    target = next(name for name in sites.values() if name.startswith(f"{there}/"))
    resp = await client.post(f"{API}/workloads/{wid}/migrate", json={"site": target, "mode": "cold"}, headers=member)
    assert resp.status == 202, await resp.text()
    op = await _done(client, (await resp.json())["operation"]["id"], member)
    assert op["state"] == "succeeded", op

    async with app[keys.SESSIONS]() as s:
        (sample,) = (await s.exec(select(LinkSample))).all()
    assert (sample.source, sample.target, sample.kind) == (here, there, "cold_migrate")
    assert sample.bytes > 0 and sample.seconds > 0
    rate = round(sample.bytes / 2**20 / sample.seconds, 1)

    # REST: a member and an admin read the same federation-wide figures; nothing names the project's workload
    for who in ("alpha_member", "beta_member", "admin"):
        resp = await client.get(f"{API}/links", headers=w.auth(who))
        assert resp.status == 200, await resp.text()
        text = await resp.text()
        assert wid not in text and "mover" not in text and op["id"] not in text
        rows = {(r["source"], r["target"]): r for r in await resp.json()}
        measured = rows[here, there]["measured"]
        assert rows[here, there]["configured_mib_per_s"] == 25
        assert measured | {"last_at": "", "age_s": 0} == {
            "median_mib_per_s": rate, "samples": 1, "last_mib_per_s": rate, "last_at": "", "age_s": 0,
            "kinds": ["cold_migrate"]}
        assert 0 <= measured["age_s"] < 600
        assert rows[there, here]["measured"] is None and rows[here, here]["measured"] is None
    assert (await client.get(f"{API}/links")).status == 401

    # the overview's map: the measured figures beside the configured ones, on the pair's line
    page = await _page(client, await _browser(client, "beta_member", w), "/ui/")
    html = await page.text()
    svg = etree.fromstring(html[html.index('<svg xmlns="http://www.w3.org/2000/svg" class="fedmap"'):
                                html.index("</svg>") + 6].encode())
    (line,) = svg.findall(".//s:g[@data-from]", NS)
    forward = "forward" if line.get("data-from") == here else "back"
    assert line.get("class") == "link measured" and line.get("data-mib-per-s") == "25"
    assert (float(line.get(f"data-measured-{forward}-mib-per-s")), line.get(f"data-measured-{forward}-samples")) == \
        (rate, "1")
    assert 0 <= int(line.get(f"data-measured-{forward}-age-s")) < 600
    assert line.get(f"data-measured-{'back' if forward == 'forward' else 'forward'}-mib-per-s") is None
    assert f"measured {here}→{there} {rate:g} MiB/s (median of 1" in "".join(line.itertext())
