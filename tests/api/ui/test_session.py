"""Dashboard sessions over plain HTTP: the root redirect beside OCCI, login, cookie flags, CSRF, roles, logout."""

from __future__ import annotations

import re
from typing import Any

import pytest

from metavmm.api.app import create_app
from metavmm.foundation.config import parse_config
from tests.world import SIM, World, seed

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
async def ui(aiohttp_client: Any, sqlite_url: str) -> tuple[Any, World]:
    app = create_app(parse_config(SIM), sqlite_url, sync=False)
    client = await aiohttp_client(app)
    return client, await seed(app)


async def _login(client: Any, token: str, next_: str = "/ui/") -> Any:
    page = await client.get("/ui/login")
    csrf = CSRF.search(await page.text()).group(1)  # type: ignore[union-attr]
    return await client.post("/ui/login", data={"csrf_token": csrf, "token": token, "next": next_},
                             allow_redirects=False)


async def _csrf(client: Any) -> str:
    return CSRF.search(await (await client.get("/ui/workloads")).text()).group(1)  # type: ignore[union-attr]


async def test_a_browser_is_sent_to_the_dashboard_and_occi_clients_are_not(ui: tuple[Any, World]) -> None:
    client, _ = ui
    browser = await client.get("/", headers={"Accept": "text/html,application/xhtml+xml"}, allow_redirects=False)
    assert browser.status == 302 and browser.headers["Location"] == "/ui/"
    for headers in ({"Accept": "text/occi"}, {"Accept": "text/plain"}, {}):
        resp = await client.get("/", headers=headers, allow_redirects=False)
        assert resp.status == 404 and "OCCI" in resp.headers.get("Server", "")
    assert (await client.post("/", data="x", allow_redirects=False)).status == 404
    assert (await client.get("/-/", headers={"Accept": "text/plain"})).status == 401  # OCCI's query interface


async def test_login_gives_an_opaque_strict_cookie_and_only_local_redirects(ui: tuple[Any, World]) -> None:
    client, world = ui
    anonymous = await client.get("/ui/workloads?offset=5", allow_redirects=False)
    assert anonymous.status == 302 and anonymous.headers["Location"] == "/ui/login?next=/ui/workloads?offset%3D5"
    bad = await _login(client, "mvm_not-a-token")
    assert bad.status == 401 and "unknown, revoked or expired" in await bad.text()
    assert (await client.post("/ui/login", data={"token": world.tokens["alpha_member"]})).status == 403  # no CSRF
    assert (await _login(client, world.tokens["expired"])).status == 401
    resp = await _login(client, world.tokens["alpha_member"], next_="//evil.example/ui/")
    assert resp.status == 303 and resp.headers["Location"] == "/ui/"
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
    assert world.tokens["alpha_member"] not in cookie
    page = await client.get("/ui/workloads")
    assert page.status == 200 and "alpha_member · alpha · member" in await page.text()


async def test_csrf_roles_and_logout(ui: tuple[Any, World]) -> None:
    client, world = ui
    await _login(client, world.tokens["alpha_reader"])
    csrf = await _csrf(client)
    form = {"vcpus": "1", "ram_mib": "512", "name": "from-ui"}
    assert (await client.post("/ui/workloads", data=form, allow_redirects=False)).status == 403
    denied = await client.post("/ui/workloads", data={**form, "csrf_token": csrf}, allow_redirects=False)
    assert denied.status == 403 and "needs the member role" in await denied.text()  # REST's rule, REST's words

    await _login(client, world.tokens["alpha_member"])
    csrf = await _csrf(client)
    assert (await client.post("/ui/workloads", data={**form, "csrf_token": "x" + csrf},
                              allow_redirects=False)).status == 403
    created = await client.post("/ui/workloads", data={**form, "csrf_token": csrf}, allow_redirects=False)
    assert created.status == 303 and created.headers["Location"].startswith("/ui/workloads/")
    bad = await client.post("/ui/workloads", data={"vcpus": "0", "ram_mib": "x", "csrf_token": csrf},
                            allow_redirects=False)
    assert bad.status == 400 and "vcpus" in await bad.text()
    assert (await client.get("/ui/workloads/00000000-0000-0000-0000-000000000000")).status == 404

    old = client.session.cookie_jar.filter_cookies(client.make_url("/ui/"))["metavmm_session"].value
    assert (await client.post("/ui/logout", data={"csrf_token": csrf}, allow_redirects=False)).status == 303
    replay = await client.get("/ui/", cookies={"metavmm_session": old}, allow_redirects=False)
    assert replay.status == 302 and replay.headers["Location"].startswith("/ui/login")


async def test_assets_are_served_by_name_only(ui: tuple[Any, World]) -> None:
    client, _ = ui
    css = await client.get("/ui/static/ui.css")
    assert css.status == 200 and css.content_type == "text/css"
    assert (await client.get("/ui/static/..%2F__init__.py")).status == 404
    assert (await client.get("/ui/static/missing.js")).status == 404
