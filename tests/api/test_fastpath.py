"""Replayed OCCI answers (metavmm.api.fastpath, issue 16 item 14, issue 23 item 14) keep what a routed request
has: the token is checked on every request (a revoked or expired one is refused at once), an answer never
reaches another caller, a write through the broker shows on the next GET, and each replay is logged, counted
and stamped like any answer."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from metavmm.api import keys
from metavmm.api.app import HTTP_LIMITS, create_app
from metavmm.api.fastpath import REPLAYS
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import ApiToken, Workload
from metavmm.foundation.config import parse_config
from metavmm.services import metrics
from metavmm.services.identity import hash_secret, mint_token
from tests.world import ALPHA_MARK, SIM, seed

API = "/api/v1"
TEXT = {"Accept": "text/plain"}


def _path(w: Any) -> str:
    return f"/compute/{w.ids['workload']}"


async def _replayed(client: Any, w: Any, path: str, headers: dict[str, str], times: int = 3) -> bytes:
    """GET ``path`` ``times`` times; the answers after the first are replays (asserted), all equal."""
    hits = w.app[REPLAYS].hits
    bodies = []
    for _ in range(times):
        resp = await client.get(path, headers=headers)
        assert resp.status == 200, await resp.text()
        bodies.append(await resp.read())
    assert w.app[REPLAYS].hits >= hits + times - 1
    assert len(set(bodies)) == 1
    return bodies[0]


async def test_a_revoked_token_is_refused_on_the_next_request(world: Any) -> None:
    client, w = world
    minted = await (await client.post(f"{API}/tokens", headers=w.auth("alpha_member"), json={"name": "t"})).json()
    bearer = {**TEXT, "Authorization": f"Bearer {minted['secret']}"}
    await _replayed(client, w, _path(w), bearer)
    assert (await client.delete(f"{API}/tokens/{minted['id']}", headers=w.auth("alpha_member"))).status == 204
    refused = await client.get(_path(w), headers=bearer)
    assert refused.status == 401 and ALPHA_MARK not in await refused.text()
    assert (await client.get(_path(w), headers={**TEXT, **w.auth("alpha_reader")})).status == 200


async def test_an_expired_token_is_refused_when_it_expires(world: Any) -> None:
    """A token valid for one more second: replayed while valid, refused the moment it expires (the replay's end
    is never past the token's expiry)."""
    client, w = world
    async with session_scope(w.app[keys.SESSIONS]) as s:
        row, secret = await mint_token(s, user_id=w.ids["user_alpha_member"], project_id=w.ids["alpha"],
                                       role="member")
        row.expires_at = datetime.now(UTC) + timedelta(seconds=1)
        s.add(row)
    bearer = {**TEXT, "Authorization": f"Bearer {secret}"}
    await _replayed(client, w, _path(w), bearer, times=2)
    async with session_scope(w.app[keys.SESSIONS]) as s:
        expires = (await s.get(ApiToken, row.id)).expires_at  # type: ignore[union-attr]
    await asyncio.sleep(max(0.0, (expires.replace(tzinfo=UTC) - datetime.now(UTC)).total_seconds()) + 0.05)
    hits = w.app[REPLAYS].hits
    refused = await client.get(_path(w), headers=bearer)
    assert refused.status == 401, await refused.text()
    assert w.app[REPLAYS].hits == hits
    assert hash_secret(secret) not in str(w.app[REPLAYS].entries)


@pytest.mark.parametrize("attacker", ["beta_member", "beta_padmin"])
async def test_another_projects_token_on_the_same_path_never_gets_the_replay(world: Any, attacker: str) -> None:
    """As an attacker would: the victim's answer is cached and replayed; the same path, Accept, User-Agent and
    host with another project's token is that project's 404, never the victim's rendering; no token, a made-up
    token and the victim's token with one character changed are 401."""
    client, w = world
    headers = {**TEXT, "User-Agent": "curl/8", **w.auth("alpha_member")}
    body = await _replayed(client, w, _path(w), headers)
    assert ALPHA_MARK.encode() in body
    theirs = await client.get(_path(w), headers={**headers, **w.auth(attacker)})
    assert theirs.status == 404 and ALPHA_MARK not in await theirs.text()
    again = await client.get(_path(w), headers={**headers, **w.auth(attacker)})  # its own 404, replayed
    assert again.status == 404 and ALPHA_MARK not in await again.text()
    token = w.tokens["alpha_member"]
    for forged in ("", "Bearer mvm_" + "A" * 43, f"Bearer {token[:-1]}{'A' if token[-1] != 'A' else 'B'}",
                   f"Basic {token}"):
        resp = await client.get(_path(w), headers={**headers, "Authorization": forged})
        assert resp.status == 401 and ALPHA_MARK not in await resp.text(), (forged, resp.status)
    assert (await client.get(_path(w), headers=headers)).status == 200  # the victim still is answered


async def test_an_update_shows_on_the_next_get(world: Any) -> None:
    client, w = world
    headers = {**TEXT, **w.auth("alpha_member")}
    await _replayed(client, w, _path(w), headers)
    renamed = await client.post(_path(w), headers={**headers, "Content-Type": "text/plain"},
                                data='X-OCCI-Attribute: occi.core.title="renamed-by-occi"\n')
    assert renamed.status == 200, await renamed.text()
    assert 'occi.core.title="renamed-by-occi"' in await (await client.get(_path(w), headers=headers)).text()
    put = await client.put(f"{API}/workloads/{w.ids['workload']}", headers=w.auth("alpha_member"),
                           json={"name": "renamed-by-rest"})
    if put.status == 405:  # (no REST rename: the catalog directly, through the broker's engine)
        async with session_scope(w.app[keys.SESSIONS]) as s:
            (await s.get(Workload, w.ids["workload"])).name = "renamed-by-rest"  # type: ignore[union-attr]
    assert 'occi.core.title="renamed-by-rest"' in await (await client.get(_path(w), headers=headers)).text()


async def test_a_replay_is_stamped_logged_and_counted(aiohttp_client: Any, sqlite_url: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Served with the options `metavmm serve` uses (its access log), a replay has its own request id (the
    client's when plain) in the answer and the access log line, the OCCI Server header, and a count in the
    request metrics under the entity's route."""
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    app = create_app(parse_config(SIM), sqlite_url, sync=False)
    server = TestServer(app)
    await server.start_server(**HTTP_LIMITS)  # (aiohttp_client's server_kwargs do not reach the runner)
    client = await aiohttp_client(server)
    w = await seed(app)
    await app[keys.OPERATIONS].stop()
    created = await client.post(f"{API}/workloads", json={"name": ALPHA_MARK, "vcpus": 1, "ram_mib": 512},
                                headers=w.auth("alpha_member"))
    assert created.status == 202, await created.text()
    w.ids["workload"] = (await created.json())["workload"]["id"]
    headers = {**TEXT, **w.auth("alpha_member")}
    await _replayed(client, w, _path(w), headers, times=2)
    key = ("GET", "/compute/{id}", "200")
    before = metrics.HTTP.counts[key][0]
    hits = w.app[REPLAYS].hits
    ids = []
    for rid in ("client-chosen-id-1", None, None, "not a plain id!"):
        resp = await client.get(_path(w), headers={**headers, **({"X-Request-Id": rid} if rid else {})})
        assert resp.status == 200
        assert resp.headers["Server"].endswith("OCCI/1.2") and "text/occi" in resp.headers["Accept"]
        ids.append(resp.headers["X-Request-Id"])
    assert w.app[REPLAYS].hits == hits + 4
    assert ids[0] == "client-chosen-id-1" and len(set(ids)) == 4 and "not a plain id!" not in ids
    assert metrics.HTTP.counts[key][0] == before + 4
    logged = [r for r in caplog.records if r.name == "aiohttp.access" and _path(w) in r.getMessage()]
    assert [getattr(r, "request_id", None) for r in logged][-4:] == ids
    assert w.tokens["alpha_member"] not in caplog.text


async def test_a_missing_entity_is_replayed_per_caller_and_ends_when_it_appears(world: Any) -> None:
    client, w = world
    missing = "/compute/00000000-0000-4000-8000-000000000002"
    headers = {**TEXT, **w.auth("alpha_member")}
    hits = w.app[REPLAYS].hits
    for _ in range(3):
        assert (await client.get(missing, headers=headers)).status == 404
    assert w.app[REPLAYS].hits == hits + 2
    async with session_scope(w.app[keys.SESSIONS]) as s:
        row = await s.get(Workload, w.ids["workload"])
        assert row is not None
        s.add(Workload(**{**row.model_dump(), "id": missing.rsplit("/", 1)[1], "name": "appeared-now"}))
    found = await client.get(missing, headers=headers)
    assert found.status == 200 and "appeared-now" in await found.text()


async def test_a_change_by_another_process_shows_within_the_read_cache_bound(world: Any, db_url: str) -> None:
    """A replay ends when the read-cache entry it was answered from would: a rename committed by another process
    (its own engine: the broker sees none of its commits) shows once ``federation.read_cache_s`` has passed since
    the catalog read, not later for having been replayed."""
    from metavmm.catalog.db import make_engine, make_sessionmaker

    client, w = world
    now = [1000.0]
    for clocked in (w.app[keys.OCCI_READS], w.app[REPLAYS]):
        clocked.clock = lambda: now[0]
    w.app[keys.OCCI_READS].clear()
    headers = {**TEXT, **w.auth("alpha_member")}
    await _replayed(client, w, _path(w), headers)
    engine = make_engine(db_url)
    try:
        async with session_scope(make_sessionmaker(engine)) as s:
            (await s.get(Workload, w.ids["workload"])).name = "renamed-elsewhere"  # type: ignore[union-attr]
    finally:
        await engine.dispose()
    now[0] += w.app[keys.CONFIG].federation.read_cache_s / 2
    reader = {**TEXT, **w.auth("alpha_reader")}  # a caller whose replay starts from the read cache's older entry
    for who in (headers, reader, reader):
        assert "renamed-elsewhere" not in await (await client.get(_path(w), headers=who)).text()  # within the bound
    now[0] += w.app[keys.CONFIG].federation.read_cache_s / 2
    for who in (headers, reader):
        assert 'occi.core.title="renamed-elsewhere"' in await (await client.get(_path(w), headers=who)).text()
