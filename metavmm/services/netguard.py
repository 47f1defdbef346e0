"""Outbound fetches on a caller's behalf (image URLs, image lists) that cannot reach the broker's inside.

A URL is only as safe as the addresses it connects to, so the check is on addresses, not strings:
every address a name resolves to is checked (IPv4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``,
6to4 and Teredo are unwrapped to the IPv4 address they carry), the connection goes to exactly those
checked addresses (the resolver below hands aiohttp only what it checked, so there is no second
lookup to rebind), and redirects are followed by hand, each hop checked again. Anything that is not a
global unicast address is refused unless ``limits.outbound_allowed_networks`` lists it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from metavmm.foundation.config import LimitsConfig
from metavmm.foundation.errors import ValidationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class OutboundPolicy:
    allowed: tuple[IPNetwork, ...] = ()
    max_redirects: int = 5

    @classmethod
    def from_limits(cls, limits: LimitsConfig) -> OutboundPolicy:
        return cls(tuple(limits.outbound_allowed_networks), limits.outbound_max_redirects)


@dataclass
class _Current:
    policy: OutboundPolicy = field(default_factory=OutboundPolicy)


_current = _Current()


def configure(limits: LimitsConfig) -> None:
    """Set the process's policy from the federation file (the app does this at start)."""
    _current.policy = OutboundPolicy.from_limits(limits)


def current_policy() -> OutboundPolicy:
    return _current.policy


def embedded_ipv4(addr: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4, Teredo), if any."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return None
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if any(addr in net for net in NAT64):
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    return None


def refusal(addr: IPAddress, policy: OutboundPolicy) -> str | None:
    """Why the broker must not connect to ``addr``, or None when it may. An address that wraps an IPv4
    address is judged by the address it wraps (the packet ends there)."""
    inner = embedded_ipv4(addr)
    for target in [inner if inner is not None else addr]:
        if any(target.version == net.version and target in net for net in policy.allowed):
            continue
        for what, hit in (("loopback", target.is_loopback), ("link-local", target.is_link_local),
                          ("unspecified", target.is_unspecified), ("multicast", target.is_multicast),
                          ("private", target.is_private), ("reserved", target.is_reserved),
                          ("not globally routable", not target.is_global)):
            if hit:
                return f"{addr} is {what}" + (f" (it carries {target})" if target != addr else "")
    return None


def check_address(text: str, policy: OutboundPolicy, url: str) -> None:
    addr = ipaddress.ip_address(text.split("%", 1)[0])
    reason = refusal(addr, policy)
    if reason is not None:
        raise ValidationError(f"{url}: {reason}: refused (the broker does not fetch from internal addresses)")


class CheckedResolver(AbstractResolver):
    """Resolves once, refuses the whole name if any answer is internal, and returns only checked
    addresses: aiohttp connects to these, so DNS cannot answer differently the second time."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self.policy = policy
        self.inner = ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        answers = await self.inner.resolve(host, port, family)
        for answer in answers:
            check_address(answer["host"], self.policy, host)
        return answers

    async def close(self) -> None:
        await self.inner.close()


def check_url(url: str | URL, policy: OutboundPolicy) -> URL:
    """The scheme and, for an address literal, the address (names are checked by the resolver)."""
    parsed = URL(url) if isinstance(url, str) else url
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValidationError(f"{url}: only http(s) URLs with a host are fetched")
    host = parsed.host.strip("[]")
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return parsed
    check_address(host, policy, str(url))
    return parsed


@asynccontextmanager
async def guarded_get(url: str, *, timeout: aiohttp.ClientTimeout, policy: OutboundPolicy | None = None,
                      headers: Sequence[tuple[str, str]] = ()) -> AsyncIterator[aiohttp.ClientResponse]:
    """GET ``url`` through the checked resolver, following at most ``max_redirects`` redirects by hand,
    each hop's URL checked before it is fetched. Yields the final response."""
    policy = policy or current_policy()
    connector = aiohttp.TCPConnector(resolver=CheckedResolver(policy))
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as client:
        target = check_url(url, policy)
        for _hop in range(policy.max_redirects + 1):
            kwargs: dict[str, Any] = {"allow_redirects": False, "headers": list(headers)}
            async with client.get(target, **kwargs) as resp:
                location = resp.headers.get("Location")
                if resp.status in REDIRECTS and location:
                    target = check_url(target.join(URL(location)), policy)
                    continue
                yield resp
                return
        raise ValidationError(f"{url}: more than {policy.max_redirects} redirects")


async def check_public_url(url: str, policy: OutboundPolicy | None = None) -> None:
    """Refuse early (at publish time, a clear 400) a URL whose host is or resolves to an internal address;
    the fetch checks again, address by address and hop by hop."""
    policy = policy or current_policy()
    parsed = check_url(url, policy)
    resolver = CheckedResolver(policy)
    try:
        await resolver.resolve(parsed.host or "", parsed.port or 0, socket.AF_UNSPEC)
    except OSError:
        raise ValidationError(f"cannot resolve the host of {url}") from None
    finally:
        await resolver.close()
