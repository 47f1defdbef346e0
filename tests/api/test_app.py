"""The application shell: health, readiness, error rendering, REST route validation."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from metavmm.api.app import create_app
from metavmm.api.errors import error_middleware
from metavmm.api.rest.framework import RestModule, add_module
from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import NotFound

SIM_ONLY = """
providers:
  - {name: sim-a, kind: sim, site_count: 2, hosts_per_site: 3}
"""


async def test_health_ready_and_index(aiohttp_client: Any, sqlite_url: str) -> None:
    app = create_app(parse_config(SIM_ONLY), sqlite_url, sync=False)
    client = await aiohttp_client(app)
    health = await client.get("/healthz")
    assert health.status == 200 and (await health.json())["status"] == "ok"
    ready = await client.get("/readyz")
    body = await ready.json()
    assert ready.status == 200 and body["database"] == "ok"
    assert body["providers"]["sim-a"] == {"kind": "sim", "synced_at": None, "error": None}
    index = await client.get("/api/v1/")
    assert (await index.json())["api"] == "v1"
    assert index.headers["X-Request-Id"]


async def test_every_answer_says_server_and_request_id(aiohttp_client: Any, sqlite_url: str) -> None:
    """Server (metavmm and OCCI/1.2) on every answer, whoever made it: a handler, an error the root middleware
    rendered, a redirect it let through, a file; OCCI's Accept outside /api/ only; the request id on each."""
    client = await aiohttp_client(create_app(parse_config(SIM_ONLY), sqlite_url, sync=False))
    answers = {
        "health": await client.get("/healthz"),
        "rest 401": await client.get("/api/v1/whoami"),
        "rest 404": await client.get("/api/v1/nowhere"),
        "occi 401": await client.get("/compute/"),
        "redirect": await client.get("/", headers={"Accept": "text/html"}, allow_redirects=False),
        "file": await client.get("/ui/static/ui.css"),
    }
    assert [a.status for a in answers.values()] == [200, 401, 404, 401, 302, 200]
    for what, answer in answers.items():
        assert answer.headers["Server"].endswith("OCCI/1.2"), what
        assert ("Accept" in answer.headers) == (not answer.url.path.startswith("/api/")), what
    assert all(a.headers.get("X-Request-Id") for w, a in answers.items() if w != "redirect")


async def test_unknown_path_is_problem_json(aiohttp_client: Any, sqlite_url: str) -> None:
    client = await aiohttp_client(create_app(parse_config(SIM_ONLY), sqlite_url, sync=False))
    resp = await client.get("/api/v1/nothing-here")
    assert resp.status == 404
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["status"] == 404


class Query(BaseModel):
    limit: int = Field(default=10, ge=1, le=100)
    tag: list[str] = []


class Body(BaseModel):
    name: str = Field(min_length=1)
    vcpus: int = Field(ge=1)


class Echo(BaseModel):
    name: str
    vcpus: int
    limit: int
    tag: list[str]


def _echo_app() -> web.Application:
    mod = RestModule("test")

    @mod.route("POST", "/echo", summary="echo", query=Query, body=Body, response=Echo, status=201)
    async def echo(_request: web.Request, query: Query, body: Body) -> Echo:
        return Echo(name=body.name, vcpus=body.vcpus, limit=query.limit, tag=query.tag)

    @mod.route("GET", "/missing", summary="always 404")
    async def missing(_request: web.Request) -> None:
        raise NotFound("no such thing: 42")

    @mod.route("GET", "/boom", summary="a bug")
    async def boom(_request: web.Request) -> None:
        raise RuntimeError("secret internals")

    app = web.Application(middlewares=[error_middleware])
    add_module(app, mod)
    return app


async def test_rest_route_validates_and_renders(aiohttp_client: Any) -> None:
    client = await aiohttp_client(_echo_app())
    ok = await client.post("/echo?limit=5&tag=a&tag=b", json={"name": "vm", "vcpus": 2})
    assert ok.status == 201
    assert await ok.json() == {"name": "vm", "vcpus": 2, "limit": 5, "tag": ["a", "b"]}

    bad_query = await client.post("/echo?limit=0", json={"name": "vm", "vcpus": 2})
    assert bad_query.status == 400
    assert "query parameter limit" in (await bad_query.json())["detail"]

    bad_body = await client.post("/echo", json={"name": "", "vcpus": 0})
    detail = (await bad_body.json())["detail"]
    assert bad_body.status == 400 and "body name" in detail and "body vcpus" in detail

    not_json = await client.post("/echo", data=b"{nope", headers={"Content-Type": "application/json"})
    assert not_json.status == 400 and "not valid JSON" in (await not_json.json())["detail"]

    wrong_type = await client.post("/echo", data=b"x", headers={"Content-Type": "text/plain"})
    assert wrong_type.status == 415


async def test_errors_are_typed_and_never_leak_tracebacks(aiohttp_client: Any) -> None:
    client = await aiohttp_client(_echo_app())
    missing = await client.get("/missing")
    assert missing.status == 404 and (await missing.json())["detail"] == "no such thing: 42"
    boom = await client.get("/boom")
    text = await boom.text()
    assert boom.status == 500
    assert "secret internals" not in text and "Traceback" not in text


async def test_out_of_range_numbers_are_400_not_500(aiohttp_client: Any) -> None:
    mod = RestModule("overflow")

    @mod.route("GET", "/big", summary="a query the database cannot hold")
    async def big(_request: web.Request) -> None:
        raise OverflowError("Python int too large to convert to SQLite INTEGER")

    app = web.Application(middlewares=[error_middleware])
    add_module(app, mod)
    client = await aiohttp_client(app)
    resp = await client.get("/big")
    assert resp.status == 400 and "out of the range" in (await resp.json())["detail"]
