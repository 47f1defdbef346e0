"""Residency through the placement explainer's create (issue 18, screen 4): the countries filled in on the
explainer reach the create it offers, so the created workload never lands in another country, and it keeps
the rule (``spec["residency"]``) for its later moves. Before, the explainer's dry run honoured residency but
its create dropped it: the create went to the cheapest site, abroad.

Two sim providers: sim-de in Germany (the cheaper) and sim-tw in Taiwan."""

from __future__ import annotations

import re
from typing import Any

import pytest

from metavmm.api.app import create_app
from metavmm.foundation.config import parse_config
from tests.api.ui.test_launch import _placed
from tests.api.ui.test_session import CSRF, _login
from tests.world import World, seed

CONFIG = """
providers:
  - {name: sim-tw, kind: sim, site_count: 1, hosts_per_site: 2, price_per_vcpu_hour: "0.05",
     sites: [{region: tw-1, zones: [tw-1a], country: TW}]}
  - {name: sim-de, kind: sim, site_count: 1, hosts_per_site: 2, price_per_vcpu_hour: "0.01",
     sites: [{region: de-1, zones: [de-1a], country: DE}]}
"""
ROW = re.compile(r'<tr data-candidate="([^"]+)" data-outcome="(\w+)"[^>]*>(.*?)</tr>', re.S)
SHAPE = {"vcpus": "1", "ram_mib": "512"}


@pytest.fixture
async def broker(aiohttp_client: Any, db_url: str) -> tuple[Any, World]:
    app = create_app(parse_config(CONFIG), db_url, sync=False)
    client = await aiohttp_client(app)
    w = await seed(app)
    await _login(client, w.tokens["alpha_member"])
    return client, w


async def _explain(client: Any, **query: str) -> tuple[str, dict[str, tuple[str, str]]]:
    page = await client.get("/ui/explain", params={**SHAPE, **query})
    html = await page.text()
    assert page.status == 200, html
    return html, {c: (outcome, re.sub(r"<[^>]+>", " ", row)) for c, outcome, row in ROW.findall(html)}


async def _sites(client: Any, w: World) -> dict[int, str]:
    body = await (await client.get("/api/v1/sites?limit=500", headers=w.auth("alpha_member"))).json()
    return {s["id"]: s["name"] for s in body["items"]}


async def test_a_create_from_the_explainer_keeps_its_residency(broker: tuple[Any, World]) -> None:
    client, w = broker
    html, rows = await _explain(client, name="anywhere")
    assert any("sim-de/" in t and o != "rejected" for o, t in rows.values()), rows  # Germany could take it
    csrf = CSRF.search(html).group(1)  # type: ignore[union-attr]
    anywhere = await client.post("/ui/workloads", allow_redirects=False, data={"csrf_token": csrf, "name": "anywhere",
                                                                               **SHAPE})
    sites = await _sites(client, w)
    placed = await _placed(client, w, anywhere.headers["Location"].rsplit("/", 1)[1])
    assert sites[placed["site_id"]].startswith("sim-de") and "residency" not in placed["spec"]  # the cheaper

    html, rows = await _explain(client, name="stays", residency="tw")
    abroad = {c: r for c, r in rows.items() if "sim-de/" in r[1]}
    assert abroad and all(o == "rejected" and "residency" in t and "DE" in t for o, t in abroad.values()), abroad
    assert '<input type="hidden" name="residency" value="tw">' in html  # the create below carries it
    for i in range(3):
        made = await client.post("/ui/workloads", allow_redirects=False, data={
            "csrf_token": csrf, "name": f"stays-{i}", **SHAPE, "residency": "tw"})
        assert made.status == 303, await made.text()
        body = await _placed(client, w, made.headers["Location"].rsplit("/", 1)[1])
        assert sites[body["site_id"]].startswith("sim-tw"), body
        assert body["spec"]["residency"] == ["TW"]
    # the same rule over REST; and it holds for the workload's later moves: a migration to Germany is refused
    rest = await client.post("/api/v1/workloads", headers=w.auth("alpha_member"),
                             json={"name": "rest-stays", **{k: int(v) for k, v in SHAPE.items()}, "residency": ["TW"]})
    assert rest.status == 202, await rest.text()
    kept = await _placed(client, w, (await rest.json())["workload"]["id"])
    assert sites[kept["site_id"]].startswith("sim-tw") and kept["spec"]["residency"] == ["TW"]
    de = next(name for name in sites.values() if name.startswith("sim-de"))
    moved = await client.post(f"/api/v1/workloads/{kept['id']}/migrate", headers=w.auth("alpha_member"),
                              json={"site": de})
    assert moved.status in (409, 422), await moved.text()
    assert "residency" in (await moved.json())["detail"]
    again = await (await client.get(f"/api/v1/workloads/{kept['id']}", headers=w.auth("alpha_member"))).json()
    assert again["site_id"] == kept["site_id"]

    # a country that is not one: the explainer's and the create's 400, nothing written
    before = (await (await client.get("/api/v1/workloads", headers=w.auth("alpha_member"))).json())["items"]
    assert (await client.get("/ui/explain", params={**SHAPE, "residency": "Taiwan"})).status == 400
    bad = await client.post("/ui/workloads", allow_redirects=False, data={
        "csrf_token": csrf, "name": "nowhere", **SHAPE, "residency": "Taiwan"})
    assert bad.status == 400 and "ISO 3166" in await bad.text()
    after = (await (await client.get("/api/v1/workloads", headers=w.auth("alpha_member"))).json())["items"]
    assert len(after) == len(before)
