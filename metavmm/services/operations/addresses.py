"""Addresses of a site's clone network for cold-migrated workloads: draw one, lease it safely.

The draw reads what is taken (live leases of the network, every present workload's ``spec["ip"]``,
the gateway and DNS servers) and picks a free host address at random. Safety against a concurrent
migration does not rest on that read: the lease row is written in the same transaction as the
migration's plan, under a unique (network, address) constraint, and the loser of a race gets an
IntegrityError and draws again (:func:`with_leases`). A batch of migrations (an evacuation) draws
one address per move and writes every lease with every plan in one transaction; its draws exclude
each other (``exclude``), and a batch that lost any draw is drawn again as a whole. A lease is dead once its operation
ended and its workload no longer carries the address (rolled back, moved elsewhere, deleted); the
next draw deletes dead leases of its network before picking.
"""

from __future__ import annotations

import ipaddress
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import AddressLease, Operation, Workload
from metavmm.foundation.config import CloneNetwork, SiteConfig
from metavmm.foundation.errors import Conflict
from metavmm.services.operations.store import ACTIVE, Sessions

T = TypeVar("T")

DRAW_ATTEMPTS = 8  # a draw lost to a concurrent migration is retried this often
_ENUMERATE_UP_TO = 4096  # networks this small are enumerated; larger ones are sampled


def clone_network(provider_cfg: Any, region: str) -> CloneNetwork | None:
    """The clone network of ``provider_cfg``'s site ``region``, if the federation file gives one."""
    sites: list[SiteConfig] = getattr(provider_cfg, "sites", None) or []
    return next((s.clone_network for s in sites if s.region == region), None)


async def _taken(sessions: Sessions, net: CloneNetwork) -> set[ipaddress.IPv4Address]:
    """Addresses of ``net`` in use; deletes the network's dead leases on the way."""
    key = str(net.cidr)
    async with session_scope(sessions) as session:
        rows = (await session.exec(
            select(AddressLease, Operation.state, Workload.present, Workload.spec)
            .join(Operation, col(Operation.id) == AddressLease.operation_id, isouter=True)
            .join(Workload, col(Workload.id) == AddressLease.workload_id, isouter=True)
            .where(AddressLease.network == key))).all()
        dead = [lease.id for lease, state, present, spec in rows
                if state not in ACTIVE and not (present and (spec or {}).get("ip") == lease.address)]
        if dead:
            await session.exec(delete(AddressLease).where(col(AddressLease.id).in_(dead)))  # type: ignore[call-overload]
        live = {lease.address for lease, *_ in rows if lease.id not in dead}
        specs = (await session.exec(select(Workload.spec).where(col(Workload.present).is_(True)))).all()
    used = live | {str(s.get("ip")) for s in specs if s and s.get("ip")}
    used |= {str(a) for a in ([net.gateway] if net.gateway else []) + list(net.dns)}
    out = set()
    for text in used:
        try:
            out.add(ipaddress.IPv4Address(text))
        except ValueError:
            continue  # a spec ip of another family or malformed: not in this network anyway
    return out


async def draw(sessions: Sessions, net: CloneNetwork, *, where: str,
               exclude: frozenset[ipaddress.IPv4Address] = frozenset()) -> ipaddress.IPv4Address:
    """A host address of ``net`` nobody holds (nor ``exclude``: the draws of the same transaction, not
    written yet); Conflict (409) naming ``where`` when none is left."""
    taken = await _taken(sessions, net) | exclude
    first, last = int(net.cidr.network_address) + 1, int(net.cidr.broadcast_address) - 1
    usable = last - first + 1
    if usable > _ENUMERATE_UP_TO:
        for _ in range(64):
            candidate = ipaddress.IPv4Address(random.randint(first, last))
            if candidate not in taken:
                return candidate
        first_free = next((a for a in net.cidr.hosts() if a not in taken), None)  # nearly full: scan once
        free = [first_free] if first_free is not None else []
    else:
        free = [a for a in (ipaddress.IPv4Address(i) for i in range(first, last + 1)) if a not in taken]
    if not free:
        raise Conflict(f"clone network {net.cidr} of {where} has no free address: all {usable} host addresses "
                       "are taken by workloads, the gateway or DNS servers")
    return random.choice(free)


async def _leased(sessions: Sessions, lease: AddressLease) -> bool:
    async with sessions() as session:
        query = select(AddressLease.id).where(AddressLease.network == lease.network,
                                              AddressLease.address == lease.address)
        return (await session.exec(query)).first() is not None


async def draw_lease(sessions: Sessions, net: CloneNetwork, *, where: str, workload_id: str,
                     drawn: list[AddressLease]) -> AddressLease:
    """Draw an address of ``net`` that neither the catalog nor ``drawn`` (this transaction's draws so far)
    holds; its lease, naming a fresh operation id (the plan's), is appended to ``drawn`` and returned.
    The caller writes the lease in the transaction of that plan, inside :func:`with_leases`."""
    mine = frozenset(ipaddress.IPv4Address(d.address) for d in drawn if d.network == str(net.cidr))
    address = await draw(sessions, net, where=where, exclude=mine)
    lease = AddressLease(network=str(net.cidr), address=str(address), workload_id=workload_id,
                         operation_id=str(uuid.uuid4()))
    drawn.append(lease)
    return lease


async def with_leases(sessions: Sessions, attempt: Callable[[list[AddressLease]], Awaitable[T]], *,
                      where: str) -> T:
    """Run ``attempt(drawn)``, which draws leases (:func:`draw_lease` into ``drawn``) and writes them with
    their plans in one transaction; when that transaction fails because a concurrent migration leased
    one of the addresses first, draw everything again (up to :data:`DRAW_ATTEMPTS` times)."""
    for _ in range(DRAW_ATTEMPTS):
        drawn: list[AddressLease] = []
        try:
            return await attempt(drawn)
        except IntegrityError:
            if not drawn or not any([await _leased(sessions, lease) for lease in drawn]):
                raise  # another constraint failed: not a lost draw
    raise Conflict(f"clone network of {where}: {DRAW_ATTEMPTS} draws in a row lost to concurrent "
                   "migrations; try again")
