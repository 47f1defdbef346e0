"""The classes screen over plain HTTP: its forms are REST's bodies, so every refusal is the API's own answer.

A bad class from the form shows exactly the message and status ``POST /api/v1/clusters`` answers for the
same body (the REST model's checks and the cluster service's), with the form kept and nothing written; a
roster upload is read as the CLI reads ``--roster`` and reaches the seats as REST's roster lines; another
project's member sees none of alpha's classes and gets REST's 404 for every page and action of one; a
reader gets no forms and REST's 403; a POST without the session's CSRF token changes nothing.
"""

from __future__ import annotations

import html
import re
from typing import Any

import aiohttp
from sqlmodel import select

from metavmm.api import keys
from metavmm.catalog.models import Cluster, Site, Workload
from tests.api.ui.test_session import CSRF, _csrf, _login
from tests.world import World

API = "/api/v1"
ERROR = re.compile(r'<p class="error" role="alert" id="(?:create|cluster)-error" data-status="(\d+)">\d+: (.*?)</p>',
                   re.S)
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIRosterKey ada@laptop"


def _form(csrf: str, fields: dict[str, str], roster: str | None = None) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("csrf_token", csrf)
    for key, value in fields.items():
        form.add_field(key, value)
    if roster is not None:
        form.add_field("roster", roster.encode(), filename="roster.txt", content_type="text/plain")
    return form


async def _count(w: World) -> tuple[int, int]:
    async with w.app[keys.SESSIONS]() as s:
        return len((await s.exec(select(Workload))).all()), len((await s.exec(select(Cluster))).all())


async def test_a_refused_class_shows_the_apis_message_and_status(world: tuple[Any, World]) -> None:
    client, w = world
    await _login(client, w.tokens["alpha_member"])
    csrf = await _csrf(client)
    before = await _count(w)
    base = {"name": "lab", "seats": "2", "vcpus": "1", "ram_mib": "64"}
    for change in ({"seats": "0"}, {"name": "Bad Name"}, {"hostname_pattern": "{n.real}"}, {"cidr": "10.0.0.1/24"},
                   {"seats": "12"}, {"network_id": w.ids["workload"]}, {"vcpus": "many"}, {"strategy": "scatter"}):
        fields = {**base, **change}
        page = await client.post("/ui/clusters", data=_form(csrf, fields), allow_redirects=False)
        text = await page.text()
        shown = ERROR.search(text)
        assert shown is not None, (change, page.status, text[:2000])
        body = {k: int(v) if k in ("seats", "vcpus", "ram_mib") and v.isdigit() else v for k, v in fields.items()}
        rest = await client.post(f"{API}/clusters", json=body, headers=w.auth("alpha_member"))
        answer = await rest.json()
        assert (page.status, int(shown.group(1)), html.unescape(shown.group(2))) \
            == (rest.status, rest.status, answer["detail"]), change
        for key, value in fields.items():  # the form is kept as typed
            assert f'value="{html.escape(value)}"' in text or f'value="{value}" selected' in text \
                or key in ("strategy", "network_id")
    expired = await client.post("/ui/clusters", data=_form(csrf, {**base, "expires_in_hours": "-1"}),
                                allow_redirects=False)
    assert expired.status == 400 and "is in the past" in await expired.text()
    assert await _count(w) == before


async def test_a_roster_upload_gives_seats_their_owners_and_keys(world: tuple[Any, World]) -> None:
    client, w = world
    await _login(client, w.tokens["alpha_member"])
    csrf = await _csrf(client)
    roster = f"# name [ssh key]\nada {KEY}\nbob\n"
    made = await client.post("/ui/clusters", data=_form(csrf, {
        "name": "room", "seats": "3", "vcpus": "1", "ram_mib": "64", "cidr": "10.9.0.0/24",
        "hostname_pattern": "room-{n:02d}", "expires_in_hours": "2"}, roster), allow_redirects=False)
    assert made.status == 303, await made.text()
    cid = made.headers["Location"].rsplit("/", 1)[1]
    rest = await (await client.get(f"{API}/clusters/{cid}", headers=w.auth("alpha_member"))).json()
    assert [(s["hostname"], s["owner"], s["address"]) for s in rest["seats"]] == [
        ("room-01", "ada", "10.9.0.10/24"), ("room-02", "bob", "10.9.0.11/24"), ("room-03", "", "10.9.0.12/24")]
    assert rest["template"]["roster"] == ["ada", "bob"] and rest["expires_at"]
    async with w.app[keys.SESSIONS]() as s:
        ada = await s.get(Workload, rest["seats"][0]["workload_id"])
        assert ada is not None and ada.spec.get("ssh_key") == KEY
    page = await (await client.get(f"/ui/clusters/{cid}")).text()
    assert [m for m in re.findall(r'data-hostname="([^"]+)"', page)] == ["room-01", "room-02", "room-03"]
    bad = await client.post("/ui/clusters", data=_form(csrf, {"name": "room2", "seats": "1", "vcpus": "1",
                                                               "ram_mib": "64"}, "name,colour\nada,red\n"))
    assert bad.status == 400 and "roster header: columns are name, ssh_key, password, password_hash" \
        in html.unescape(await bad.text())
    too_many = await client.post("/ui/clusters", data=_form(csrf, {"name": "room3", "seats": "1", "vcpus": "1",
                                                                    "ram_mib": "64"}, "ada\nbob\n"))
    rest_too_many = await client.post(f"{API}/clusters", headers=w.auth("alpha_member"), json={
        "name": "room3", "seats": 1, "vcpus": 1, "ram_mib": 64, "roster": [{"owner": "ada"}, {"owner": "bob"}]})
    assert too_many.status == rest_too_many.status == 400
    assert (await rest_too_many.json())["detail"] in html.unescape(await too_many.text())


async def test_another_project_and_a_reader(world: tuple[Any, World]) -> None:
    client, w = world
    made = await client.post(f"{API}/clusters", headers=w.auth("alpha_member"), json={
        "name": "alpha-lab", "seats": 2, "vcpus": 1, "ram_mib": 64})
    assert made.status == 202, await made.text()
    cid = (await made.json())["id"]
    await _login(client, w.tokens["beta_member"])
    listing = await (await client.get("/ui/clusters")).text()
    assert "alpha-lab" not in listing and cid not in listing and "No classes in this project." in listing
    csrf = await _csrf(client)
    for path in (f"/ui/clusters/{cid}", f"/ui/clusters/{cid}/teardown", f"/ui/clusters/{cid}/seats/1"):
        page = await client.get(path)
        assert page.status == 404 and "alpha-lab" not in await page.text()
    for path, data in ((f"/ui/clusters/{cid}/scale", {"seats": "3"}), (f"/ui/clusters/{cid}/seats/1/reset", {}),
                       (f"/ui/clusters/{cid}/teardown", {"confirm": "alpha-lab"})):
        refused = await client.post(path, data={"csrf_token": csrf, **data}, allow_redirects=False)
        assert refused.status == 404, (path, refused.status)
    await _login(client, w.tokens["alpha_reader"])
    listing = await (await client.get("/ui/clusters")).text()
    assert "alpha-lab" in listing and 'id="create-form"' not in listing
    detail = await (await client.get(f"/ui/clusters/{cid}")).text()
    assert 'id="scale-form"' not in detail and "teardown-link" not in detail and 'class="reset"' not in detail
    csrf = CSRF.search(listing).group(1)  # type: ignore[union-attr]
    refused = await client.post(f"/ui/clusters/{cid}/scale", data={"csrf_token": csrf, "seats": "3"})
    assert refused.status == 403
    await _login(client, w.tokens["alpha_member"])
    for data in ({"confirm": "alpha-la"}, {}):  # a teardown not confirmed by the class's name deletes nothing
        page = await client.post(f"/ui/clusters/{cid}/teardown", data={"csrf_token": await _csrf(client), **data})
        assert page.status == 400 and "to confirm its teardown" in html.unescape(await page.text())
    no_token = await client.post(f"/ui/clusters/{cid}/teardown", data={"confirm": "alpha-lab"})
    assert no_token.status == 403
    still = await client.get(f"{API}/clusters/{cid}", headers=w.auth("alpha_member"))
    assert still.status == 200 and len((await still.json())["seats"]) == 2


SITE_ROW = re.compile(r'<tr data-site="([^"]*)"><th scope="row">[^<]*</th>\s*<td>.*?</td>\s*'
                      r'<td class="site-range">([^<]*)</td>\s*<td class="site-seats">([^<]*)</td></tr>', re.S)


async def test_a_class_over_two_sites_shows_each_sites_range_and_seats(world: tuple[Any, World]) -> None:
    """Where a class spreads over sites, its page shows each site's class network, address range and the
    seats there (REST's ``sites``, which the page renders); another project's member sees neither."""
    client, w = world
    async with w.app[keys.SESSIONS]() as s:
        sites = sorted((await s.exec(select(Site.name))).all())
    assert len(sites) == 2
    ranges = {sites[0]: "10.51.0.0/24", sites[1]: "10.52.0.0/24"}
    made = await client.post(f"{API}/clusters", headers=w.auth("alpha_member"), json={
        "name": "apart", "seats": 3, "vcpus": 1, "ram_mib": 64, "sites": sites, "max_per_site": 2, "cidrs": ranges})
    assert made.status == 202, await made.text()
    shown = await made.json()
    at: dict[str, list[dict[str, Any]]] = {}
    for seat in shown["seats"]:
        at.setdefault(seat["site"], []).append(seat)
    assert sorted(len(v) for v in at.values()) == [1, 2] and set(at) == set(sites)
    networks = shown["template"]["networks"]
    assert shown["sites"] == [{"site": site, "network_id": networks[site], "cidr": ranges[site],
                               "seats": [s["serial"] for s in at[site]]} for site in sites]
    for seat in shown["seats"]:  # each seat's address is in its own site's range
        assert seat["address"].startswith(ranges[seat["site"]][:-5] + ".")
    await _login(client, w.tokens["alpha_member"])
    page = await client.get(f"/ui/clusters/{shown['id']}")
    assert page.status == 200
    text = await page.text()
    assert [m.groups() for m in SITE_ROW.finditer(text)] == [
        (site, ranges[site], ", ".join(s["hostname"] for s in at[site])) for site in sites], text
    for site in sites:
        assert f'href="/ui/workloads/{networks[site]}"' in text
    for seat in shown["seats"]:  # and each seat's row names its site (ui.js keeps the sites' seats live by it)
        assert f'<tr data-seat="{seat["serial"]}" data-site="{seat["site"]}"' in text
    await _login(client, w.tokens["beta_member"])
    other = await client.get(f"/ui/clusters/{shown['id']}")
    assert other.status == 404 and "10.51.0" not in await other.text()
    rest = await client.get(f"{API}/clusters/{shown['id']}", headers=w.auth("beta_member"))
    assert rest.status == 404
