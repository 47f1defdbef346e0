"""The dashboard's event stream (``/ui/events``) checks its session while it is open, not only at connect.

A logout in one tab ends the stream another tab of the same browser holds (an ``end`` event, then the
response closes); an admin whose role is lowered while their stream is open stops receiving other projects'
events; a project's stream never carries another project's events. Read over plain HTTP, as a browser's
EventSource reads it (``Accept: text/event-stream``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.catalog.db import session_scope
from metavmm.foundation.config import parse_config
from metavmm.services.identity import set_membership
from tests.api.ui.test_session import CSRF, _browser
from tests.polling import polls
from tests.world import World, seed

CONFIG = """
metrics: {events_poll_s: 0.05, events_recheck_s: 0.2}
providers:
  - {name: sim-a, kind: sim, site_count: 2, hosts_per_site: 2}
"""
ENDED = ("succeeded", "failed", "cancelled", "rolled_back")
Frame = tuple[str, dict[str, Any]]


@pytest.fixture
async def broker(aiohttp_client: Any, db_url: str) -> tuple[Any, World]:
    app = create_app(parse_config(CONFIG), db_url, sync=False)
    client = await aiohttp_client(app)
    return client, await seed(app)


async def open_stream(client: Any, sid: str) -> Any:
    resp = await client.get("/ui/events", cookies={"metavmm_session": sid},
                            headers={"Accept": "text/event-stream"}, allow_redirects=False)
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    return resp


async def read_until(resp: Any, until: Any, timeout_s: float = 120) -> list[Frame]:
    """SSE frames (event, data) until ``until(frame)`` holds, or the response's end (a None frame closes the
    list). A safety net against a hang, not a speed assertion: the stream ends in well under a second."""
    seen: list[Frame] = []
    kind, data = "message", ""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                raw = await resp.content.readline()
                if not raw:
                    seen.append(("<closed>", {}))
                    return seen
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()
                elif line == "" and data:
                    seen.append((kind, json.loads(data)))
                    kind, data = "message", ""
                    if until(seen[-1]):
                        return seen
    except TimeoutError:
        raise AssertionError(f"the stream neither ended nor sent the awaited event: {seen[-5:]}") from None


async def create(client: Any, w: World, who: str, name: str) -> str:
    """A workload created over REST, its operation run to its end: the operation's id."""
    resp = await client.post("/api/v1/workloads", json={"name": name, "vcpus": 1, "ram_mib": 512},
                             headers=w.auth(who))
    assert resp.status == 202, await resp.text()
    op_id = str((await resp.json())["operation"]["id"])
    for _ in polls():
        op = await (await client.get(f"/api/v1/operations/{op_id}", headers=w.auth(who))).json()
        if op["state"] in ENDED:
            return op_id
        await asyncio.sleep(0.05)
    raise AssertionError(f"the create of {name} did not end")


def ended(op_id: str) -> Any:
    return lambda f: f[0] == "operation" and f[1]["operation"] == op_id and f[1]["message"] in ENDED


async def test_logging_out_in_one_tab_ends_the_other_tabs_stream(broker: tuple[Any, World]) -> None:
    client, w = broker
    sid = await _browser(client, "alpha_member", w)
    other_tab = await open_stream(client, sid)
    op_id = await create(client, w, "alpha_member", "seen-live")
    assert any(f[0] == "operation" for f in await read_until(other_tab, ended(op_id)))  # the stream is live

    page = await client.get("/ui/workloads", cookies={"metavmm_session": sid})
    csrf = CSRF.search(await page.text()).group(1)  # type: ignore[union-attr]
    out = await client.post("/ui/logout", data={"csrf_token": csrf}, cookies={"metavmm_session": sid},
                            allow_redirects=False)
    assert out.status == 303
    tail = await read_until(other_tab, lambda f: False)
    assert tail[-1][0] == "<closed>", tail
    (end,) = [f for f in tail if f[0] == "end"]
    assert "log in again" in end[1]["reason"]
    late = [f for f in tail if f[0] in ("operation", "progress", "workload")]  # queued before the logout only:
    assert all(op_id in json.dumps(f[1]) or f[1].get("name") == "seen-live" for f in late), late  # its last state
    again = await client.get("/ui/events", cookies={"metavmm_session": sid},
                             headers={"Accept": "text/event-stream"}, allow_redirects=False)
    assert again.status == 302  # EventSource's reconnect lands on the login page, not on a stream


async def test_another_projects_events_never_arrive_even_after_a_role_is_lowered(
        broker: tuple[Any, World]) -> None:
    client, w = broker
    beta = await open_stream(client, await _browser(client, "beta_member", w))
    admin = await open_stream(client, await _browser(client, "admin", w))
    alpha_op = await create(client, w, "alpha_member", "alpha-one")
    beta_op = await create(client, w, "beta_member", "beta-one")
    beta_saw = await read_until(beta, ended(beta_op))
    assert not any(alpha_op in json.dumps(f[1]) for f in beta_saw)  # never alpha's, though both ran
    await read_until(admin, ended(alpha_op))  # an admin sees every project's ...

    async with session_scope(client.app[keys.SESSIONS]) as session:  # ... until their role is lowered
        await set_membership(session, w.ids["user_admin"], w.ids["ops"], "member")
    await asyncio.sleep(0.6)  # past events_recheck_s: the stream has asked who its session is now
    second = await create(client, w, "alpha_member", "alpha-two")
    ops_op = await create(client, w, "admin", "ops-one")  # the (now) member's own project still streams
    admin_saw = await read_until(admin, ended(ops_op))
    assert not any(second in json.dumps(f[1]) for f in admin_saw), admin_saw
    beta.close()
    admin.close()
