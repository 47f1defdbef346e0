"""Hostile request bodies and headers over the real app: never a 500, never a traceback; a 400 or 413
that names the limit (issue 16, robustness items 7-9)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from metavmm.api import jsonbody, keys
from metavmm.api.app import HTTP_LIMITS
from metavmm.foundation.config import LimitsConfig
from metavmm.foundation.errors import Conflict, NotFound, PayloadTooLarge, ValidationError
from metavmm.services.identity import Identity
from metavmm.services.workloads.requests import CreateRequest

API = "/api/v1"
HUGE_INT = b'{"name": "x", "vcpus": ' + b"9" * 5000 + b', "ram_mib": 512}'
DEEP = b"[" * 100_000 + b"]" * 100_000
OCCI_JSON = {"Content-Type": "application/occi+json", "Accept": "application/occi+json"}


def test_the_loader_bounds_size_depth_and_numbers() -> None:
    small = jsonbody.JsonLimits(max_bytes=1024, max_depth=3, max_number_digits=20)
    assert jsonbody.loads(b'{"a": [1, 2.5, "[[[[[[ not nesting"]}', limits=small) == {
        "a": [1, 2.5, "[[[[[[ not nesting"]}
    with pytest.raises(ValidationError, match=r"nests 4 levels.*limits\.json_max_depth"):
        jsonbody.loads(b"[[[[1]]]]", limits=small)
    with pytest.raises(ValidationError, match=r"21 characters long.*limits\.json_max_number_digits"):
        jsonbody.loads(b"[" + b"1" * 21 + b"]", limits=small)
    with pytest.raises(ValidationError, match="characters long"):
        jsonbody.loads(b"[1." + b"1" * 30 + b"]", limits=small)
    with pytest.raises(PayloadTooLarge, match=r"limits\.json_max_bytes"):
        jsonbody.loads(b" " * 2000, limits=small)
    with pytest.raises(ValidationError, match="NaN is not a JSON value"):
        jsonbody.loads(b"[NaN]", limits=small)
    with pytest.raises(ValidationError, match="not valid JSON"):
        jsonbody.loads(b'{"a": "unterminated', limits=small)
    assert jsonbody.JsonLimits.from_limits(LimitsConfig(json_max_depth=5)).max_depth == 5


@pytest.mark.parametrize(("body", "status", "words"), [
    (HUGE_INT, 400, "json_max_number_digits"),
    (DEEP, 400, "json_max_depth"),
    (b'{"name": "' + b"a" * (2 << 20) + b'"}', 413, "larger than"),
])
async def test_rest_bodies_are_bounded(world: Any, body: bytes, status: int, words: str) -> None:
    client, w = world
    resp = await client.post(f"{API}/workloads", data=body,
                             headers=w.auth("alpha_member") | {"Content-Type": "application/json"})
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json" and words in (await resp.json())["detail"]


@pytest.mark.parametrize(("body", "words"), [
    (b'{"kind": "http://schemas.ogf.org/occi/infrastructure#compute", "attributes": {"occi.compute.cores": '
     + b"9" * 5000 + b"}}", "json_max_number_digits"),
    (DEEP, "json_max_depth"),
])
async def test_occi_json_bodies_are_bounded(world: Any, body: bytes, words: str) -> None:
    client, w = world
    resp = await client.post("/compute/", data=body, headers=w.auth("alpha_member") | OCCI_JSON)
    assert resp.status == 400, await resp.text()
    assert words in await resp.text()


async def test_a_normal_body_still_parses(world: Any) -> None:
    client, w = world
    resp = await client.post(f"{API}/workloads", data=json.dumps({"name": "ok", "vcpus": 1, "ram_mib": 512}),
                             headers=w.auth("alpha_member") | {"Content-Type": "application/json"})
    assert resp.status == 202, await resp.text()


async def _raw(client: Any, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(request)
        await writer.drain()
        return await reader.read(4096)
    finally:
        writer.close()


@pytest.mark.parametrize("header", [b"X-Bad: a\x00b", b"Authorization: Bearer mvm_secret\x00x", b"X-Ctl: \x01"])
async def test_a_nul_byte_in_a_header_is_one_log_line(world: Any, caplog: pytest.LogCaptureFixture,
                                                      header: bytes) -> None:
    client, _w = world
    caplog.set_level(logging.DEBUG)
    for _ in range(3):
        answer = await _raw(client, b"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400"), answer[:80]
    server = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert len(server) == 3 and all(r.exc_info is None and r.levelno == logging.INFO for r in server), server
    assert "refused a malformed request" in server[0].getMessage()
    assert "Traceback" not in caplog.text and "mvm_secret" not in caplog.text


@pytest.mark.parametrize(("method", "path"), [("DELETE", f"{API}/whoami"), ("PUT", f"{API}/workloads"),
                                              ("PATCH", f"{API}/openapi.json")])
async def test_rest_405_carries_allow(world: Any, method: str, path: str) -> None:
    client, w = world
    resp = await client.request(method, path, headers=w.auth("admin"))
    assert resp.status == 405, await resp.text()
    allow = {m.strip() for m in resp.headers["Allow"].split(",")}
    assert "GET" in allow and method not in allow
    assert resp.content_type == "application/problem+json"


async def test_the_access_log_redacts_secrets_in_urls(caplog: pytest.LogCaptureFixture) -> None:
    """The runner options `metavmm serve` uses (HTTP_LIMITS) log requests without their secrets."""
    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/x", ok)
    runner = web.AppRunner(app, **HTTP_LIMITS)  # type: ignore[arg-type]
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{port}/x?page=2&access_token=eyJhbGciOi.secret&api_key=k3y"
            async with http.get(url, headers={"Referer": "https://bob:pw@portal.example/?token=t0k",
                                              "Authorization": "Bearer mvm_abc"}) as resp:
                assert resp.status == 200
    finally:
        await runner.cleanup()
    lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert len(lines) == 1 and "page=2" in lines[0] and "access_token=***" in lines[0], lines
    for secret in ("eyJhbGciOi", "k3y", "t0k", "bob:pw", "mvm_abc"):
        assert secret not in caplog.text


async def test_an_admin_cannot_drop_their_own_last_admin_membership(world: Any) -> None:
    client, w = world
    me, ops = w.ids["user_admin"], w.ids["ops"]
    removed = await client.delete(f"{API}/projects/{ops}/members/{me}", headers=w.auth("admin"))
    assert removed.status == 409 and "last admin membership" in (await removed.json())["detail"]
    demoted = await client.put(f"{API}/projects/{ops}/members/{me}", headers=w.auth("admin"), json={"role": "member"})
    assert demoted.status == 409
    whoami = await client.get(f"{API}/whoami", headers=w.auth("admin"))
    assert (await whoami.json())["role"] == "admin"
    # with a second admin membership, dropping one is fine
    second = await client.put(f"{API}/projects/{w.ids['beta']}/members/{me}", headers=w.auth("admin"),
                              json={"role": "admin"})
    assert second.status == 200, await second.text()
    assert (await client.delete(f"{API}/projects/{ops}/members/{me}", headers=w.auth("admin"))).status == 204


async def test_creating_at_another_projects_id_answers_as_if_absent(world: Any) -> None:
    """A create (OCCI PUT /compute/{id}) at an id another project uses is a 404, like an id no one uses
    would be for an update: the caller learns nothing about the other project."""
    _client, w = world
    service = w.app[keys.WORKLOADS]
    beta = Identity(w.ids["user_beta_member"], "beta_member", w.ids["beta"], "beta", "member", "token")
    with pytest.raises(NotFound, match="no workload"):
        await service.create(beta, CreateRequest(workload_id=w.ids["workload"], vcpus=1, ram_mib=64))
    alpha = Identity(w.ids["user_alpha_member"], "alpha_member", w.ids["alpha"], "alpha", "member", "token")
    with pytest.raises(Conflict, match="already exists"):  # the owner may know its own ids
        await service.create(alpha, CreateRequest(workload_id=w.ids["workload"], vcpus=1, ram_mib=64))
