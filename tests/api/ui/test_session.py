"""Dashboard sessions over plain HTTP: the root redirect beside OCCI, login, cookie flags, CSRF, roles, logout;
sessions kept in the catalog (another broker on the same catalog and a restarted one honour the cookie;
logout, expiry, a revoked token and a removed membership end it)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from sqlmodel import select

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog.models import UiSession, aware, utcnow
from metavmm.foundation.config import parse_config
from metavmm.services import dashboard_sessions
from metavmm.services.identity import hash_secret
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


def _sid(client: Any) -> str:
    """The session cookie of the last login, then a fresh jar (so the next login is another browser's)."""
    sid = str(client.session.cookie_jar.filter_cookies(client.make_url("/ui/"))["metavmm_session"].value)
    client.session.cookie_jar.clear()
    return sid


async def _browser(client: Any, who: str, world: World) -> str:
    """Log ``who`` in as a browser of its own would: the session id its cookie holds."""
    await _login(client, world.tokens[who])
    return _sid(client)


async def _page(client: Any, sid: str, path: str = "/ui/workloads") -> Any:
    return await client.get(path, cookies={"metavmm_session": sid}, allow_redirects=False)


async def _sessions(app: Any) -> list[UiSession]:
    async with app[keys.SESSIONS]() as session:
        return list((await session.exec(select(UiSession))).all())


async def test_a_session_is_served_by_another_broker_and_survives_a_restart(aiohttp_client: Any,
                                                                             db_url: str) -> None:
    app_a = create_app(parse_config(SIM), db_url, sync=False)
    client_a = await aiohttp_client(app_a)
    world = await seed(app_a)
    assert (await _login(client_a, world.tokens["alpha_member"])).status == 303
    sid = _sid(client_a)
    rows = await _sessions(app_a)
    assert [r.id_sha256 for r in rows] == [hash_secret(sid)]  # the catalog keeps a digest, not the cookie
    assert rows[0].token_id == world.ids["token_alpha_member"] and rows[0].project_id == world.ids["alpha"]

    client_b = await aiohttp_client(create_app(parse_config(SIM), db_url, sync=False))  # a second broker
    page = await _page(client_b, sid)
    assert page.status == 200 and "alpha_member · alpha · member" in await page.text()
    csrf = CSRF.search(await page.text()).group(1)  # type: ignore[union-attr]
    created = await client_b.post("/ui/workloads", data={"vcpus": "1", "ram_mib": "512", "name": "via-b",
                                                         "csrf_token": csrf},
                                  cookies={"metavmm_session": sid}, allow_redirects=False)
    assert created.status == 303  # the CSRF token of a session opened on A is honoured on B

    await client_a.close()  # broker A stops; a new process comes up on the same catalog
    client_c = await aiohttp_client(create_app(parse_config(SIM), db_url, sync=False))
    assert (await _page(client_c, sid)).status == 200

    out = await client_b.post("/ui/logout", data={"csrf_token": csrf}, cookies={"metavmm_session": sid},
                              allow_redirects=False)
    assert out.status == 303
    for client in (client_b, client_c):
        refused = await _page(client, sid)
        assert refused.status == 302 and refused.headers["Location"].startswith("/ui/login")
    assert await _sessions(app_a) == []


async def test_revoking_the_token_or_the_membership_ends_its_sessions(ui: tuple[Any, World]) -> None:
    client, world = ui
    member = await _browser(client, "alpha_member", world)
    reader = await _browser(client, "alpha_reader", world)
    beta = await _browser(client, "beta_member", world)
    assert len(await _sessions(client.app)) == 3  # a login per browser, each its own row

    revoked = await client.delete(f"/api/v1/tokens/{world.ids['token_alpha_member']}", headers=world.auth("admin"))
    assert revoked.status == 204
    removed = await client.delete(f"/api/v1/projects/{world.ids['alpha']}/members/{world.ids['user_alpha_reader']}",
                                  headers=world.auth("admin"))
    assert removed.status == 204
    rows = await _sessions(client.app)
    assert [r.id_sha256 for r in rows] == [hash_secret(beta)]  # the rows went at once, not at the next click
    for sid in (member, reader):
        assert (await _page(client, sid)).status == 302
    assert (await _page(client, beta)).status == 200


async def test_expired_and_idle_sessions_are_refused_and_deleted(ui: tuple[Any, World]) -> None:
    client, world = ui
    old = await _browser(client, "alpha_member", world)
    idle = await _browser(client, "alpha_member", world)
    async with client.app[keys.SESSIONS]() as session:
        for sid, field, when in ((old, "expires_at", utcnow() - timedelta(seconds=1)),
                                 (idle, "last_seen_at", utcnow() - dashboard_sessions.IDLE - timedelta(seconds=1))):
            row = await session.get(UiSession, hash_secret(sid))
            setattr(row, field, when)
            session.add(row)
        await session.commit()
    for sid in (old, idle):
        refused = await _page(client, sid)
        assert refused.status == 302 and refused.headers["Location"].startswith("/ui/login")
    assert await _sessions(client.app) == []
    forged = await client.post("/ui/workloads", data={"vcpus": "1"}, cookies={"metavmm_session": "x" * 200},
                               allow_redirects=False)
    assert forged.status == 403


async def test_a_user_keeps_a_bounded_number_of_sessions(ui: tuple[Any, World]) -> None:
    client, world = ui
    first = await _browser(client, "alpha_member", world)
    await _login(client, world.tokens["alpha_member"])
    assert (await _login(client, world.tokens["alpha_member"])).status == 303  # a re-login replaces its row
    assert len(await _sessions(client.app)) == 2
    for _ in range(dashboard_sessions.MAX_PER_USER + 3):
        await _login(client, world.tokens["alpha_member"])
        newest = _sid(client)
    assert (await _page(client, first)).status == 302  # the oldest went
    rows = await _sessions(client.app)
    assert len(rows) == dashboard_sessions.MAX_PER_USER and hash_secret(newest) in {r.id_sha256 for r in rows}


async def test_a_request_marks_the_session_seen_at_most_once_a_minute(ui: tuple[Any, World]) -> None:
    client, world = ui
    sid = await _browser(client, "alpha_member", world)
    (row,) = await _sessions(client.app)
    assert (await _page(client, sid)).status == 200
    (same,) = await _sessions(client.app)
    assert same.last_seen_at == row.last_seen_at  # a page view within the minute writes nothing
    async with client.app[keys.SESSIONS]() as session:
        stale = await session.get(UiSession, hash_secret(sid))
        stale.last_seen_at = utcnow() - dashboard_sessions.TOUCH_EVERY - timedelta(seconds=5)
        session.add(stale)
        await session.commit()
    assert (await _page(client, sid)).status == 200
    (seen,) = await _sessions(client.app)
    assert (utcnow() - aware(seen.last_seen_at)).total_seconds() < 30


async def test_a_busy_catalog_does_not_fail_a_page_view(ui: tuple[Any, World], monkeypatch: pytest.MonkeyPatch) -> None:
    """The last-seen write is best effort: while another writer holds the catalog past the wait, the page is
    served (200, not the 500 error page a failed write gave) and the time is written by a later request."""
    from sqlalchemy import update

    from metavmm.catalog import db

    client, world = ui
    sid = await _browser(client, "alpha_member", world)
    async with client.app[keys.SESSIONS]() as session:
        stale = await session.get(UiSession, hash_secret(sid))
        stale.last_seen_at = old = utcnow() - dashboard_sessions.TOUCH_EVERY - timedelta(seconds=5)
        session.add(stale)
        await session.commit()
    monkeypatch.setattr(db, "WRITER_WAIT_S", 0.3)
    async with client.app[keys.SESSIONS]() as holder:  # another writer's open transaction
        await holder.exec(update(UiSession).where(UiSession.user_id == -1).values(role="x"))  # type: ignore[call-overload]
        page = await _page(client, sid)
        assert page.status == 200, await page.text()
        await holder.rollback()
    (row,) = await _sessions(client.app)
    assert aware(row.last_seen_at) == old  # not written while busy ...
    assert (await _page(client, sid)).status == 200
    (row,) = await _sessions(client.app)
    assert (utcnow() - aware(row.last_seen_at)).total_seconds() < 30  # ... and written once the catalog is free
