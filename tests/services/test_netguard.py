"""Outbound fetches refuse internal addresses: literals in every IPv6 disguise, names that resolve
inside, and redirect hops; a real local aiohttp server plays the attacker's redirector."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from metavmm.foundation.config import LimitsConfig
from metavmm.foundation.errors import ValidationError
from metavmm.services import netguard
from metavmm.services.marketplace.stream import stream_to_file
from metavmm.services.netguard import OutboundPolicy, check_public_url, guarded_get

STRICT = OutboundPolicy()
TIMEOUT = aiohttp.ClientTimeout(total=10)


@pytest.fixture(autouse=True)
def _restore_policy() -> Iterator[None]:
    yield
    netguard.configure(LimitsConfig())


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/x", "http://[::1]/x", "http://[::ffff:127.0.0.1]/x", "http://[::ffff:7f00:1]/x",
    "http://[64:ff9b::7f00:1]/x", "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/", "http://[2002:7f00:1::]/x",
    "http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/x", "http://10.1.2.3/x", "http://192.168.1.1/x",
    "http://172.16.0.1/x", "http://100.64.0.1/x", "http://0.0.0.0/x", "http://[::]/x", "http://[fd00::1]/x",
    "http://localhost/x",
])
async def test_internal_addresses_are_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="refused"):
        await check_public_url(url, STRICT)


async def test_a_public_address_passes_and_allowed_networks_open_a_hole() -> None:
    await check_public_url("http://8.8.8.8/x", STRICT)
    await check_public_url("http://[::ffff:8.8.8.8]/x", STRICT)
    site_mirror = OutboundPolicy(allowed=(ipaddress.ip_network("10.1.0.0/16"),))
    await check_public_url("http://10.1.2.3/x", site_mirror)
    with pytest.raises(ValidationError, match="refused"):
        await check_public_url("http://10.2.0.1/x", site_mirror)
    with pytest.raises(ValidationError, match="only http"):
        await check_public_url("file:///etc/passwd", STRICT)


@pytest.fixture
async def redirector() -> AsyncIterator[tuple[str, int]]:
    """A server on 127.0.0.2 (the allowed 'outside') whose /hop redirects to the broker's own 127.0.0.1,
    and a target on 127.0.0.1 that would answer if reached."""
    inside = web.Application()
    reached: list[str] = []

    async def secret(request: web.Request) -> web.Response:
        reached.append(request.path)
        return web.Response(body=b"instance credentials")

    inside.router.add_get("/secret", secret)
    inside_runner = web.AppRunner(inside)
    await inside_runner.setup()
    inside_site = web.TCPSite(inside_runner, "127.0.0.1", 0)
    await inside_site.start()
    inside_port = inside_site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    outside = web.Application()

    async def hop(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query.get("to", f"http://127.0.0.1:{inside_port}/secret"))

    async def disk(request: web.Request) -> web.Response:
        return web.Response(body=b"disk bytes")

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    outside.router.add_get("/hop", hop)
    outside.router.add_get("/loop", loop)
    outside.router.add_get("/disk", disk)
    outside_runner = web.AppRunner(outside)
    await outside_runner.setup()
    outside_site = web.TCPSite(outside_runner, "127.0.0.2", 0)
    await outside_site.start()
    port = outside_site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.2:{port}", inside_port
    finally:
        assert not reached, "the internal server was reached"
        await outside_runner.cleanup()
        await inside_runner.cleanup()


async def test_every_redirect_hop_is_checked(redirector: tuple[str, int], tmp_path: Path) -> None:
    outside, inside_port = redirector
    netguard.configure(LimitsConfig(outbound_allowed_networks=["127.0.0.2/32"]))
    async with guarded_get(f"{outside}/disk", timeout=TIMEOUT) as resp:  # the allowed host itself works
        assert await resp.read() == b"disk bytes"
    dest = tmp_path / "disk.raw"
    for to in (f"http://127.0.0.1:{inside_port}/secret", f"http://[::ffff:127.0.0.1]:{inside_port}/secret",
               f"http://localhost:{inside_port}/secret"):
        with pytest.raises(ValidationError, match="refused"):
            await stream_to_file(f"{outside}/hop?to={to}", dest, what="image")
        assert not dest.exists() and not list(tmp_path.iterdir())
    with pytest.raises(ValidationError, match="redirects"):
        await stream_to_file(f"{outside}/loop", dest, what="image")


async def test_names_connect_only_to_checked_addresses(redirector: tuple[str, int]) -> None:
    """``localhost`` resolves to loopback: refused by the resolver the connection itself uses; allowing
    loopback makes the same fetch work, so the connection does go through the checked answers."""
    _outside, inside_port = redirector
    with pytest.raises(ValidationError, match=r"(127\.0\.0\.1|::1) is loopback"):
        async with guarded_get(f"http://localhost:{inside_port}/nothing", timeout=TIMEOUT, policy=STRICT):
            pass
    loopback = OutboundPolicy(allowed=(ipaddress.ip_network("127.0.0.0/8"),
                                       ipaddress.ip_network("::1/128")))
    async with guarded_get(f"http://localhost:{inside_port}/nothing", timeout=TIMEOUT, policy=loopback) as resp:
        assert resp.status == 404


async def test_rest_publish_refuses_a_mapped_loopback_url(world: Any) -> None:
    client, w = world
    for url in ("http://[::ffff:127.0.0.1]:8080/disk", "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/"):
        resp = await client.post("/api/v1/marketplace/images", headers=w.auth("alpha_member"),
                                 json={"name": "x", "publisher": "alpha", "format": "raw", "url": url})
        assert resp.status == 400 and "refused" in (await resp.json())["detail"], (url, await resp.text())
