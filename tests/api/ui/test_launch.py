"""Launching a marketplace image at a chosen site from the dashboard, over plain HTTP.

The launch page lists every site with the scheduler's verdict for the image and shape, the feasible ones
with their price per hour; launching at one goes through the workload service as REST's launch does, and
lands there; a site that cannot take the launch is refused on the page with the scheduler's reason, and
nothing is written.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Image
from metavmm.foundation.config import parse_config
from tests.api.ui.browser import CONFIG
from tests.api.ui.test_session import CSRF, _csrf, _login
from tests.world import World, seed

ROW = re.compile(r'<tr data-site="([^"]+)" data-feasible="(true|false)" data-price="([^"]*)"[^>]*>(.*?)</tr>', re.S)


@pytest.fixture
async def broker(aiohttp_client: Any, db_url: str) -> tuple[Any, World, str]:
    """A broker of two sim providers (sim-a at 0.02 a vCPU-hour, sim-b at 0.015) and a published image."""
    app = create_app(parse_config(CONFIG), db_url, sync=False)
    client = await aiohttp_client(app)
    w = await seed(app)
    await _login(client, w.tokens["alpha_member"])
    form = aiohttp.FormData()
    for key, value in (("csrf_token", await _csrf(client)), ("name", "course"), ("publisher", "alpha-school"),
                       ("format", "raw"), ("visibility", "project")):
        form.add_field(key, value)
    form.add_field("disk", b"x" * 4096, filename="disk.raw", content_type="application/octet-stream")
    done = await client.post("/ui/marketplace/publish", data=form, allow_redirects=False)
    assert done.status == 303, await done.text()
    return client, w, done.headers["Location"].rsplit("=", 1)[1]


def _sites(page: str) -> dict[str, tuple[bool, str, str]]:
    """site -> (feasible, price per hour, the row's text)."""
    return {site: (ok == "true", price, re.sub(r"<[^>]+>", " ", row)) for site, ok, price, row in ROW.findall(page)}


async def _workloads(client: Any, w: World) -> list[dict[str, Any]]:
    body = await (await client.get("/api/v1/workloads?limit=200", headers=w.auth("alpha_member"))).json()
    return list(body["items"])


async def test_the_launch_form_offers_feasible_sites_with_prices_and_launches_there(
        broker: tuple[Any, World, str]) -> None:
    client, w, image = broker
    marketplace = await (await client.get("/ui/marketplace")).text()
    assert f'href="/ui/marketplace/{image}/launch"' in marketplace
    page = await client.get(f"/ui/marketplace/{image}/launch?name=picked&vcpus=2&ram_mib=1024")
    html = await page.text()
    assert page.status == 200, html
    sites = _sites(html)
    assert set(sites) == {"sim-a/sim-000", "sim-a/sim-001", "sim-b/sim-000"}
    feasible = {s: Decimal(p) for s, (ok, p, _) in sites.items() if ok}
    # the sims' own prices for 2 vCPUs: sim-a 0.02 a vCPU-hour, sim-b 0.015 (as the prices page says)
    assert feasible.get("sim-b/sim-000") == Decimal("0.030"), sites
    assert all(p == Decimal("0.04") for s, p in feasible.items() if s.startswith("sim-a/")), sites
    assert len(feasible) >= 2 and "best" in sites["sim-b/sim-000"][2]
    chosen = next(s for s in feasible if s.startswith("sim-a/"))  # not the cheapest: the choice is the user's

    csrf = CSRF.search(html).group(1)  # type: ignore[union-attr]
    launched = await client.post(f"/ui/marketplace/{image}/launch", allow_redirects=False, data={
        "csrf_token": csrf, "name": "picked", "vcpus": "2", "ram_mib": "1024", "site": chosen})
    assert launched.status == 303, await launched.text()
    wid = launched.headers["Location"].rsplit("/", 1)[1]
    rest = await (await client.get(f"/api/v1/workloads/{wid}", headers=w.auth("alpha_member"))).json()
    where = rest["spec"]["placement"]
    assert where["site"] == chosen and rest["spec"]["image_id"] == image, rest
    assert Decimal(where["price_per_hour"]) == feasible[chosen], where


async def test_a_site_that_cannot_take_the_launch_is_refused_with_the_reason(broker: tuple[Any, World, str]) -> None:
    client, w, image = broker
    async with session_scope(client.app[keys.SESSIONS]) as session:  # an ARM course image
        row = await session.get(Image, image)
        row.arch = "aarch64"
        session.add(row)
    page = await client.get(f"/ui/marketplace/{image}/launch?name=arm&vcpus=2&ram_mib=1024")
    html = await page.text()
    assert page.status == 200, html
    sites = _sites(html)
    # the sims' hosts (seed 0): sim-a/sim-000 has x86_64 hosts only; the other two sites have ARM ones
    assert {s for s, (ok, _, _) in sites.items() if ok} == {"sim-a/sim-001", "sim-b/sim-000"}, sites
    _, price, row = sites["sim-a/sim-000"]
    reason = row.split("cannot:", 1)[1].strip()
    assert price == "" and "aarch64" in reason, row
    assert 'value="sim-a/sim-000"' not in html  # not offered
    before = len(await _workloads(client, w))

    csrf = CSRF.search(html).group(1)  # type: ignore[union-attr]
    for target, words in (("sim-a/sim-000", f"(there: {reason})"), ("nowhere/none", "no site named nowhere/none")):
        resp = await client.post(f"/ui/marketplace/{image}/launch", allow_redirects=False, data={
            "csrf_token": csrf, "name": "arm", "vcpus": "2", "ram_mib": "1024", "site": target})
        text = await resp.text()
        assert resp.status == 409 and f"cannot launch at {target}: no placement for arm" in text and words in text, \
            text[-2000:]
        assert 'value="sim-b/sim-000"' in text  # the page keeps offering the sites that can take it
    assert len(await _workloads(client, w)) == before  # nothing written

    none = await (await client.get(f"/ui/marketplace/{image}/launch?vcpus=40&ram_mib=1024")).text()
    assert 'id="no-site"' in none and "no price" in none  # no sim flavor has 40 vCPUs
    assert (await client.post(f"/ui/marketplace/{image}/launch", allow_redirects=False, data={
        "csrf_token": "x", "name": "arm", "vcpus": "1", "ram_mib": "512"})).status == 403
    bad = await client.get(f"/ui/marketplace/{image}/launch?vcpus=0&ram_mib=x")
    assert bad.status == 400 and "vcpus" in await bad.text()
    assert (await client.get("/ui/marketplace/00000000-0000-0000-0000-000000000000/launch")).status == 404
