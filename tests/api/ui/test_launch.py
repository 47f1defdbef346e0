"""Launching a marketplace image at a chosen site from the dashboard, over plain HTTP.

The launch page lists every site with the scheduler's verdict for the image and shape, the feasible ones
with their price per hour; launching at one goes through the workload service as REST's launch does, and
lands there; a site that cannot take the launch is refused on the page with the scheduler's reason, and
nothing is written.
"""

from __future__ import annotations

import asyncio
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
from tests.polling import polls
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


async def _placed(client: Any, w: World, workload_id: str) -> dict[str, Any]:
    """The workload once its create ended and it has a host (REST's view)."""
    for _ in polls():
        body = await (await client.get(f"/api/v1/workloads/{workload_id}", headers=w.auth("alpha_member"))).json()
        if body["host_id"] is not None and body["observed_state"] == "running":
            return dict(body)
        await asyncio.sleep(0.05)
    raise AssertionError(f"workload {workload_id} was never placed: {body}")


async def test_placement_groups_narrow_the_sites_offered_and_hold_at_launch(broker: tuple[Any, World, str]) -> None:
    """The launch form takes every compute field REST's create takes: with an affinity group whose member
    runs at one site, that site alone is offered (the others say the group rules them out), a launch elsewhere
    is refused and writes nothing, and the launch the scheduler places joins the member's host; the SSH key and
    user data sent with the launch reach the driver. (Before, the form dropped the groups: every site was offered.)"""
    client, w, image = broker
    html = await (await client.get(f"/ui/marketplace/{image}/launch?name=lab-1&vcpus=1&ram_mib=512")).text()
    csrf = CSRF.search(html).group(1)  # type: ignore[union-attr]
    key, data = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUIlaunch teacher@school", "#cloud-config\nruncmd: [echo hi]\n"
    first = await client.post(f"/ui/marketplace/{image}/launch", allow_redirects=False, data={
        "csrf_token": csrf, "name": "lab-1", "vcpus": "1", "ram_mib": "512", "site": "sim-a/sim-000",
        "affinity_group": "lab", "ssh_key": key, "user_data": data})
    assert first.status == 303, await first.text()
    member = await _placed(client, w, first.headers["Location"].rsplit("/", 1)[1])
    assert member["spec"]["affinity_group"] == "lab" and member["spec"]["placement"]["site"] == "sim-a/sim-000"
    ops = await (await client.get(f"/api/v1/operations?target_id={member['id']}",
                                  headers=w.auth("alpha_member"))).json()
    create = next(s for op in ops["items"] for s in op["steps"] if s["action"] == "vm.create")
    assert (create["args"]["ssh_key"], create["args"]["user_data"]) == (key, data)

    page = await client.get(f"/ui/marketplace/{image}/launch?name=lab-2&vcpus=1&ram_mib=512&affinity_group=lab")
    html = await page.text()
    assert page.status == 200, html
    sites = _sites(html)
    assert {s for s, (ok, _, _) in sites.items() if ok} == {"sim-a/sim-000"}, sites
    for other in ("sim-a/sim-001", "sim-b/sim-000"):
        assert "affinity group lab" in sites[other][2], sites[other]
    assert '<input type="hidden" name="affinity_group" value="lab">' in html  # the launch keeps the group
    before = len(await _workloads(client, w))
    refused = await client.post(f"/ui/marketplace/{image}/launch", allow_redirects=False, data={
        "csrf_token": csrf, "name": "lab-2", "vcpus": "1", "ram_mib": "512", "site": "sim-b/sim-000",
        "affinity_group": "lab", "ssh_key": key})
    text = await refused.text()
    assert refused.status == 409 and "affinity group lab" in text, text[-2000:]
    assert key in text  # the form comes back as sent
    assert len(await _workloads(client, w)) == before
    joined = await client.post(f"/ui/marketplace/{image}/launch", allow_redirects=False, data={
        "csrf_token": csrf, "name": "lab-2", "vcpus": "1", "ram_mib": "512", "site": "", "affinity_group": "lab"})
    assert joined.status == 303, await joined.text()
    second = await _placed(client, w, joined.headers["Location"].rsplit("/", 1)[1])
    assert second["host_id"] == member["host_id"] and second["spec"]["affinity_group"] == "lab"
    bad = await client.get(f"/ui/marketplace/{image}/launch?vcpus=1&ram_mib=512&affinity_group=Bad+Name")
    assert bad.status == 400 and "affinity_group" in await bad.text()
