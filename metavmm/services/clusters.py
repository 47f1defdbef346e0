"""Virtual clusters: a class of identical computes (seats) created, scaled, reset and torn down in one request.

A cluster is not a second create path. Its seats are ordinary compute workloads that the one workload
service creates (:meth:`WorkloadService.create_in`), all of them inside one of its project transactions:

1. the whole class is checked against the quota at once (:func:`quotas.check` with the seat count), so a
   class that does not fit is refused with the class's numbers and nothing is written;
2. the batch placement (:class:`~metavmm.scheduler.batch.BatchPlanner`, over the placer's snapshot and
   in-transit ledger) chooses the one site that holds every seat; each seat's create then pins that site
   and the scheduler picks its host with the class's spread or pack strategy;
3. each seat gets its serial ``n``, a host name from the pattern (``lab-{n:02d}``), the ``n``-th address
   of the network's range and a MAC unique in the catalog; cloud-init sets them, as for migrated clones
   (``CreateRequest.guest``); a roster gives seats their own owner name, SSH key or user data;
4. the cluster row, its seat rows and the OCCI cluster mixin (a partner lists the class at the mixin's
   location) are written in the same transaction; the engine then runs the seats' operations, as many
   at once as its concurrency allows.

A scale adds seats with the lowest free serials or removes the highest, so every other seat keeps its
name, address and MAC. A reset deletes one seat's VM and creates it again from the plan that first
created it (on libvirt: a fresh qcow2 overlay over the same base image). A delete, or the expiry, deletes
every seat (and the network the cluster created) through the workload service.
"""

from __future__ import annotations

import csv
import hashlib
import io
import ipaddress
import json
import logging
import re
import secrets
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import delete as sa_delete
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.db import session_scope
from metavmm.catalog.eventlog import add_last
from metavmm.catalog.models import (
    Cluster,
    ClusterSeat,
    OcciMixin,
    Operation,
    OperationState,
    Project,
    Site,
    Workload,
    WorkloadKind,
    WorkloadLink,
    utcnow,
)
from metavmm.foundation.errors import Conflict, NoPlacement, NotFound, ValidationError
from metavmm.scheduler.batch import BatchPlanner, BatchResult
from metavmm.scheduler.pipeline import Scheduler
from metavmm.scheduler.plan import Step
from metavmm.scheduler.request import ImageRef, PlacementRequest
from metavmm.services import quotas
from metavmm.services.identity import Identity, operator_identity
from metavmm.services.operations import store as op_store
from metavmm.services.placement import in_transit, lock_placement
from metavmm.services.scope import can_see
from metavmm.services.workloads.requests import CreateRequest, LinkSpec, check_ssh_key, check_user_data
from metavmm.services.workloads.service import Shape, WorkloadService, is_uuid, scoped_key
from metavmm.translators.cloudinit import SHA512_CRYPT, combinable, sha512_crypt, with_password

log = logging.getLogger(__name__)

MAX_SEATS = 500
PASSWORD_MAX = 256
CLUSTER_SCHEME = "http://schemas.metavmm.dev/occi/cluster#"
"""The scheme of a cluster's OCCI mixin (term: the cluster's name); OCCI renders such mixins as the
broker's (not a user tag a client may associate or delete)."""
COMPUTE_KIND = "http://schemas.ogf.org/occi/infrastructure#compute"
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
_PATTERN_FIELD = re.compile(r"\{n(?::0?[1-9]?d)?\}|\{cluster\}")
DEFAULT_PATTERN = "{cluster}-{n:02d}"


@dataclass(frozen=True)
class Seat:
    """A roster line: who sits at the seat of that serial and what their machine gets."""

    owner: str = ""
    ssh_key: str | None = field(default=None, repr=False)
    user_data: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)  # plaintext: hashed at once, never kept
    password_hash: str | None = field(default=None, repr=False)  # or a SHA-512 crypt hash ($6$...)


@dataclass(frozen=True)
class ClusterRequest:
    """A cluster template. Shape: a flavor, or vcpus and ram_mib. Network: an existing network workload of
    the project (``network_id``), or a new one with ``cidr``, or none (no addresses: DHCP)."""

    name: str
    seats: int
    image: str | None = None
    flavor: str | None = None
    vcpus: int | None = None
    ram_mib: int | None = None
    disk_gib: int = 0
    gpu_model: str | None = None
    gpu_count: int = 0
    network_id: str | None = None
    cidr: str | None = None
    first_address: int = 10  # seat n gets the range's host number first_address + n - 1
    hostname_pattern: str = DEFAULT_PATTERN
    ssh_key: str | None = field(default=None, repr=False)  # every seat's, unless the roster gives one
    user_data: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)  # every seat's, unless the roster gives one
    password_hash: str | None = field(default=None, repr=False)
    roster: tuple[Seat, ...] = ()  # by serial: the first line is seat 1
    strategy: Literal["spread", "pack"] = "spread"
    site: str | None = None
    sites: tuple[str, ...] = ()  # a class over several sites (names or regions; with cidr: a network at each)
    cidrs: Mapping[str, str] = field(default_factory=dict)  # a class over several sites: a range per site (name
    # or region of `sites` -> cidr), for sites that share no network segment or must not overlap; others take cidr
    max_per_site: int | None = None  # at most so many seats at one site (the class spreads over sites)
    expires_at: datetime | None = None
    project_id: int | None = None  # admins only: another project


@dataclass(frozen=True)
class SeatView:
    serial: int
    hostname: str
    address: str | None
    mac: str
    owner: str
    workload: Workload
    operation: Operation | None  # the latest on the seat (create, reset, delete), for its progress


@dataclass(frozen=True)
class SiteRange:
    """Where a class is: one site, the class network there and its address range, and the seats at it."""

    site: str
    network_id: str | None  # the class network at the site (None: the class has none)
    cidr: str | None  # its address range (None: no network, or one without a range)
    serials: tuple[int, ...]  # the seats at the site, by serial


@dataclass(frozen=True)
class ClusterView:
    cluster: Cluster
    seats: tuple[SeatView, ...]
    operations: tuple[Operation, ...] = ()  # what the request started
    sites: tuple[SiteRange, ...] = ()  # each site the class uses (or has a network at), by name

    @property
    def running(self) -> int:
        return sum(1 for s in self.seats if s.workload.observed_state == "running")


class ClusterService:
    """Clusters over the one workload service (every seat change is one of its creates or deletes)."""

    def __init__(self, workloads: WorkloadService) -> None:
        self.workloads = workloads
        self.sessions = workloads.sessions

    # --- create -------------------------------------------------------------------------------------

    async def create(self, caller: Identity, req: ClusterRequest, *, idempotency_key: str | None = None) -> ClusterView:
        """Check the template, the class's quota and placement, and write every seat in one transaction.
        ``idempotency_key`` (scoped to the project and the caller, as every REST key): the same request
        again answers with the first one's cluster and operations, creating nothing; another request
        with the key is a 422."""
        check_template(req)
        async with self.workloads.transaction(caller, req.project_id) as session:
            project_id = caller.project_id if req.project_id is None else req.project_id
            key = scoped_key(caller, project_id, idempotency_key)
            fingerprint = _fingerprint("create", project_id, hash_passwords(req, key[3:19] if key else None))
            earlier = await self.workloads._replay(session, key, fingerprint, "cluster.create")
            if earlier is not None:
                cluster_id, ops = await _replayed(session, earlier)
                return await self._view(caller, cluster_id, ops)
            cluster, ops = await self._create_in(session, project_id, hash_passwords(req))
            if key is not None:
                await _remember(session, "cluster.create", cluster, ops, key, fingerprint)
        await self.workloads.wake(*ops)
        return await self._view(caller, cluster.id, ops)

    async def _create_in(self, session: AsyncSession, project_id: int,
                         req: ClusterRequest) -> tuple[Cluster, list[Operation]]:
        ops: list[Operation] = []
        if (await session.exec(select(Cluster.id).where(Cluster.project_id == project_id,
                                                         Cluster.name == req.name))).first():
            raise Conflict(f"a cluster named {req.name} already exists in this project")
        network = await self._network(session, project_id, req.network_id)
        site = req.site or _site_of(network)
        shape = await self.workloads._shape(session, _seat_request(req, 1, site))
        image = (await self.workloads._image(session, req.image, project_id, shape)) if req.image else None
        await quotas.check(session, project_id, _demand(shape), flavor=shape.flavor, count=req.seats,
                           what=f"a class of {req.seats} seats")
        sites, explained = await self._place_class(session, req, shape, image.id if image else None, site)
        site = Counter(sites).most_common(1)[0][0]  # the class's site: where most of its seats are
        cluster = Cluster(project_id=project_id, name=req.name, site=site, expires_at=req.expires_at,
                          network_id=network.id if network is not None else None,
                          template={**_template(req, explained), "image_id": image.id if image else None})
        session.add(cluster)
        await session.flush()
        session.add(OcciMixin(project_id=project_id, scheme=CLUSTER_SCHEME, term=req.name,
                              title=f"cluster {req.name} ({req.seats} seats)", location=mixin_location(req.name),
                              applies=[COMPUTE_KIND]))
        ops += await self._add_seats(session, cluster, range(1, req.seats + 1), sites)
        cluster.template = {**cluster.template, "placement": await _explain(session, cluster, explained)}
        session.add(cluster)
        return cluster, ops

    async def _network(self, session: AsyncSession, project_id: int, network_id: str | None) -> Workload | None:
        if network_id is None:
            return None
        row = await session.get(Workload, network_id.lower()) if is_uuid(network_id) else None
        if row is None or row.project_id != project_id or row.kind != WorkloadKind.NETWORK:
            raise NotFound(f"no network {network_id} in this project")
        if not row.present or row.desired_state == "deleted":
            raise Conflict(f"network {row.name} is deleted or being deleted")
        return row

    async def _place_class(self, session: AsyncSession, req: ClusterRequest, shape: Shape, image_id: str | None,
                           site: str | None, count: int | None = None,
                           held: Mapping[str, int] | None = None) -> tuple[list[str], dict[str, Any]]:
        """The site of every new seat, by the batch placement over the placer's snapshot and the in-transit
        ledger: one site that holds them all, or, for a class over several sites (``sites`` or
        ``max_per_site``), at most ``max_per_site`` at each (``held``: the seats a site has already);
        NoPlacement (409) with the class's reasons when that cannot be."""
        n = req.seats if count is None else count
        await lock_placement(session)
        snap, graph = await self.workloads.placer.snapshot(session)
        ledger = await in_transit(session)
        probe = [PlacementRequest(name=f"seat-{i}", vcpus=shape.vcpus, ram_mib=shape.ram_mib,
                                  disk_gib=shape.disk_gib, gpu_model=shape.gpu_model, gpu_count=shape.gpu_count,
                                  cpu_arch=shape.arch, image=ImageRef(image_id) if image_id else None,
                                  sites=(site,) if site else req.sites, strategy=req.strategy) for i in range(n)]

        def place(requests: Sequence[PlacementRequest]) -> BatchResult:
            return BatchPlanner(snap, Scheduler(snap, graph=graph, ledger=ledger)).place(requests)

        result = place(probe)
        by_site = Counter(a.site for a in result.assignments)
        explained: dict[str, Any] = {"seats": n, "sites_considered": len(snap.sites),
                                     "batch_seconds": round(result.seconds, 4)}
        if req.sites or req.max_per_site:
            allowed = [v.name for v in snap.sites if not req.sites or v.name in req.sites or v.region in req.sites]
            order = [name for name, _ in by_site.most_common()] + [v for v in allowed if v not in by_site]
            placed = _spread(order, n, req.max_per_site or n, held or {},
                             lambda name, k: k - len(place([replace(p, sites=(name,)) for p in probe[:k]]).unplaced))
            if sum(placed.values()) < n:
                held_now = {k: v for k, v in (held or {}).items() if v}
                raise NoPlacement(
                    f"no placement for {n - sum(placed.values())} of the {n} seats of cluster {req.name} over "
                    f"{', '.join(order) or 'no site'} with at most {req.max_per_site or n} a site"
                    + (f" (held already: {held_now})" if held_now else "")
                    + (f"; {', '.join(f'{k} takes {v}' for k, v in placed.items())}" if placed else ""))
            explained |= {"sites": placed, "max_per_site": req.max_per_site,
                          "split_by_cost": dict(by_site) if by_site else None}
            return [name for name, k in placed.items() for _ in range(k)], explained
        tried = []
        for candidate, _ in by_site.most_common():  # one site: the class shares its network and base image
            chosen = result if len(by_site) == 1 and not result.unplaced else place(
                [replace(p, sites=(candidate,)) for p in probe])
            if not chosen.unplaced:
                return [candidate] * n, explained | {"site": candidate,
                                                     "split_by_cost": dict(by_site) if len(by_site) > 1 else None}
            tried.append(f"{candidate} holds {n - len(chosen.unplaced)}")
        reasons = Counter(result.unplaced.values())
        why = "; ".join(f"{k} ({v} seats)" for k, v in reasons.most_common())
        if not result.unplaced:
            why = "the batch placement split the class over sites and no single site holds it all"
        raise NoPlacement(f"no placement for the {n} seats of cluster {req.name}: {why}"
                          + (f"; {', '.join(tried)} of them" if tried else ""))

    async def _class_networks(self, session: AsyncSession, cluster: Cluster,
                              sites: Sequence[str]) -> tuple[dict[str, Workload], list[Operation]]:
        """The class network at each of ``sites``: the existing one the class was given (it is at the
        class's one site), or, for a class with a ``cidr``, the one it made there, made now (with the
        same range: seat ``n`` keeps its address whichever site it is at; or the site's own range from
        ``cidrs``) where it has none yet. A network stays at one site, so a class over several sites gets
        one at each site it uses; the template's ``networks`` maps each site to the one the class made there."""
        tpl = cluster.template
        out: dict[str, Workload] = {}
        ops: list[Operation] = []
        if cluster.network_id and not tpl.get("networks"):  # an existing network (the class is at its site),
            row = await session.get(Workload, cluster.network_id)  # or one made before networks were per site
            return ({site: row for site in sites} if row is not None else {}), ops
        made: dict[str, str] = dict(tpl.get("networks") or {})
        for site in dict.fromkeys(sites):
            row = await session.get(Workload, made[site]) if site in made else None
            cidr = await _site_range(session, tpl, site) if site not in made else None
            if row is None and cidr:
                several = bool(tpl.get("sites") or tpl.get("max_per_site"))
                name = f"{cluster.name}-net-{len(made) + 1}" if several else f"{cluster.name}-net"
                done = await self.workloads.create_in(session, cluster.project_id, CreateRequest(
                    kind=WorkloadKind.NETWORK, name=name, cidr=cidr, site=site))
                row = done.workload
                ops.append(done.operation)
                made[site] = row.id
                cluster.template = {**cluster.template, "network_created": True, "networks": dict(made)}
                if site == cluster.site or cluster.network_id is None:
                    cluster.network_id = row.id  # the class's own site's (REST's network_id)
            if row is not None:
                out[site] = row
        return out, ops

    async def _add_seats(self, session: AsyncSession, cluster: Cluster, serials: Sequence[int],
                         sites: Sequence[str]) -> list[Operation]:
        """Create the seats of ``serials`` (each through the workload service, pinned to its site in
        ``sites``, linked to the class network there) and their seat rows."""
        tpl = cluster.template
        networks, ops = await self._class_networks(session, cluster, sites)
        taken_macs = await _macs(session)
        taken_ips = {site: await _addresses(session, net.id) for site, net in networks.items()}
        for n, at in zip(serials, sites, strict=True):
            network = networks.get(at)
            net = _range(network)
            hostname = render_hostname(tpl["hostname_pattern"], cluster.name, n)
            address = _address(net, tpl["first_address"], n) if net is not None else None
            if address is not None and address.split("/")[0] in taken_ips.get(at, set()):
                raise Conflict(f"address {address} of seat {n} is used by another seat on network "
                               f"{network.name if network else ''}; choose another first_address")
            mac = _new_mac(taken_macs)
            taken_macs.add(mac)
            roster = tpl.get("roster") or []
            seat = Seat(**roster[n - 1]) if n <= len(roster) else Seat()
            links: tuple[LinkSpec, ...] = ()
            attributes = {"cluster": {"id": cluster.id, "name": cluster.name, "serial": n},
                          "mixins": [CLUSTER_SCHEME + cluster.name], "owner": seat.owner or None,
                          "network_id": network.id if network is not None else None}
            if network is not None:  # an interface on the class network with the seat's MAC (DHCP reserves it
                uplink = _new_mac(taken_macs)  # the address and name); the seed's network-config sets the address
                taken_macs.add(uplink)  # on it, found by its MAC, and DHCP on the VM's own interface, by its MAC
                # network_id: the VM is created with this interface (vm.create plugs it into the domain where
                # the driver can): cloud-init applies the network-config at first boot, no hot-plug after it
                guest: dict[str, Any] = {"hostname": hostname, "mac": uplink,
                                         "nics": [{"mac": mac, "address": address, "network_id": network.id}]}
                links = (LinkSpec(network.id, mac=mac, attributes={"address": address, "hostname": hostname}),)
                attributes |= {"mac": mac, "ip": address.split("/")[0] if address else None}
            else:  # no network: the MAC and name are the VM's own interface's, set by cloud-init
                guest = {"hostname": hostname, "mac": mac}
            user_data = seat.user_data or tpl.get("user_data")
            password = seat.password_hash or tpl.get("password_hash")
            if password:  # the hash goes into the seat's cloud-init, beside the class's user data
                user_data = with_password(user_data, hostname, password)
            req = replace(_seat_request_from(tpl, n, at), name=hostname, guest=guest, links=links,
                          ssh_key=seat.ssh_key or tpl.get("ssh_key"), user_data=user_data, attributes=attributes)
            done = await self.workloads.create_in(session, cluster.project_id, req)
            session.add(ClusterSeat(cluster_id=cluster.id, serial=n, workload_id=done.workload.id, hostname=hostname,
                                    address=address, mac=mac, owner=seat.owner))
            ops += [done.operation, *done.link_operations]
        await session.flush()
        return ops

    # --- reading ------------------------------------------------------------------------------------

    async def list_clusters(self, caller: Identity, *, project_id: int | None = None) -> list[ClusterView]:
        """The clusters the caller sees (an admin: every project's, unless ``project_id`` names one)."""
        async with self.sessions() as session:
            query = select(Cluster).order_by(col(Cluster.name))
            if project_id is not None:
                query = query.where(Cluster.project_id == project_id)
            rows = (await session.exec(query)).all()
            ids = [r.id for r in rows if can_see(caller, r)]
        return [await self._view(caller, cid) for cid in ids]

    async def get(self, caller: Identity, cluster_id: str) -> ClusterView:
        return await self._view(caller, cluster_id)

    async def _visible(self, session: AsyncSession, caller: Identity, cluster_id: str) -> Cluster:
        row = await session.get(Cluster, cluster_id.lower()) if is_uuid(cluster_id) else None
        if row is None:  # a name works too (the CLI's), within the caller's project
            row = (await session.exec(select(Cluster).where(Cluster.project_id == caller.project_id,
                                                            Cluster.name == cluster_id))).first()
        if row is None or not can_see(caller, row):
            raise NotFound(f"no cluster {cluster_id}")
        return row

    async def _view(self, caller: Identity, cluster_id: str, ops: Sequence[Operation] = ()) -> ClusterView:
        async with self.sessions() as session:
            cluster = await self._visible(session, caller, cluster_id)
            seats = (await session.exec(select(ClusterSeat, Workload).join(
                Workload, col(Workload.id) == ClusterSeat.workload_id).where(ClusterSeat.cluster_id == cluster.id)
                .order_by(col(ClusterSeat.serial)))).all()
            latest: dict[str, Operation] = {}
            wids = [w.id for _, w in seats]
            for chunk in range(0, len(wids), 500):
                query = select(Operation).where(col(Operation.target_id).in_(wids[chunk:chunk + 500]))
                for op in (await session.exec(query.order_by(col(Operation.created_at)))).all():
                    latest[str(op.target_id)] = op
            networks = _networks_by_site(cluster)
            ranges = dict((await session.exec(select(Workload.id, Workload.spec).where(
                col(Workload.id).in_(set(networks.values()))))).all()) if networks else {}
        views = tuple(SeatView(s.serial, s.hostname, s.address, s.mac, s.owner, w, latest.get(w.id)) for s, w in seats)
        at: dict[str, list[int]] = {}
        for v in views:
            at.setdefault(seat_site(v.workload) or cluster.site or "", []).append(v.serial)
        sites = tuple(SiteRange(site, networks.get(site), (ranges.get(networks.get(site) or "") or {}).get("cidr"),
                                tuple(at.get(site, ()))) for site in sorted(set(at) | set(networks)))
        return ClusterView(cluster, views, tuple(ops), sites)

    # --- scale, reset -------------------------------------------------------------------------------

    async def scale(self, caller: Identity, cluster_id: str, seats: int, *,
                    idempotency_key: str | None = None) -> ClusterView:
        """Add seats (the lowest free serials, the class's quota checked at once) or remove the highest;
        every other seat keeps its serial, name, address and MAC. ``idempotency_key``: as for :meth:`create`
        (the same scale again answers with the first one's operations and changes nothing)."""
        if not 1 <= seats <= MAX_SEATS:
            raise ValidationError(f"a cluster has 1 to {MAX_SEATS} seats, not {seats}")
        async with self.sessions() as session:
            cluster = await self._visible(session, caller, cluster_id)
        ops: list[Operation] = []
        key = scoped_key(caller, cluster.project_id, idempotency_key)
        fingerprint = _fingerprint("scale", cluster.id, seats)
        async with self.workloads.transaction(caller, cluster.project_id) as session:
            earlier = await self.workloads._replay(session, key, fingerprint, "cluster.scale")
            if earlier is not None:
                replayed_id, ops = await _replayed(session, earlier)
                return await self._view(caller, replayed_id, ops)
            cluster = await self._visible(session, caller, cluster.id)
            rows = (await session.exec(select(ClusterSeat).where(ClusterSeat.cluster_id == cluster.id)
                                       .order_by(col(ClusterSeat.serial)))).all()
            have = {s.serial for s in rows}
            if seats > len(rows):
                new = [n for n in range(1, seats + len(rows) + 1) if n not in have][:seats - len(rows)]
                tpl = cluster.template
                req = _request_from(tpl, cluster, len(new))
                shape = await self.workloads._shape(session, _seat_request_from(tpl, 1, cluster.site))
                await quotas.check(session, cluster.project_id, _demand(shape), flavor=shape.flavor, count=len(new),
                                   what=f"{len(new)} more seats")
                spread = bool(tpl.get("sites") or tpl.get("max_per_site"))
                held = Counter(w.spec.get("site") for w in (await session.exec(
                    select(Workload).join(ClusterSeat, col(ClusterSeat.workload_id) == Workload.id)
                    .where(ClusterSeat.cluster_id == cluster.id))).all()) if spread else None
                sites, _ = await self._place_class(session, req, shape, tpl.get("image_id"),
                                                   None if spread else cluster.site, count=len(new), held=held)
                ops = await self._add_seats(session, cluster, new, sites)
            gone = sorted(rows, key=lambda s: s.serial)[seats:] if seats < len(rows) else []
            ops += await self._delete_in(session, caller, [s.workload_id for s in gone])
            for seat in gone:
                await session.delete(seat)
            cluster.template = {**cluster.template, "seats": seats}
            cluster.version += 1
            cluster.updated_at = utcnow()
            session.add(cluster)
            if key is not None:  # the deletes too: they are written in this transaction
                await _remember(session, "cluster.scale", cluster, ops, key, fingerprint)
        await self.workloads.wake(*ops)
        return await self._view(caller, cluster.id, ops)

    async def reset_seat(self, caller: Identity, cluster_id: str, serial: int) -> Operation:
        """Delete the seat's VM and create it again from the plan that created it: the same image, shape,
        name, address and MAC, a fresh disk (on libvirt a new overlay over the same base image)."""
        async with self.sessions() as session:
            cluster = await self._visible(session, caller, cluster_id)
        async with self.workloads.transaction(caller, cluster.project_id) as session:
            seat = (await session.exec(select(ClusterSeat).where(ClusterSeat.cluster_id == cluster.id,
                                                                 ClusterSeat.serial == serial))).first()
            if seat is None:
                raise NotFound(f"cluster {cluster.name} has no seat {serial}")
            ops = (await session.exec(select(Operation).where(Operation.target_id == seat.workload_id)
                                      .order_by(col(Operation.created_at)))).all()
            if any(op.state in op_store.ACTIVE for op in ops):
                raise Conflict(f"seat {serial} ({seat.hostname}) has an operation running; reset it once it ended")
            create = next((op for op in ops if op.kind == "create" and op.state == OperationState.SUCCEEDED), None)
            workload = await session.get(Workload, seat.workload_id)
            if create is None or workload is None or workload.desired_state == "deleted":
                raise Conflict(f"seat {serial} ({seat.hostname}) was never created or is being deleted")
            nics = (await session.exec(select(WorkloadLink).where(WorkloadLink.source_id == workload.id,
                                                                  WorkloadLink.kind == "networkinterface"))).all()
            op = await op_store.write_plan(session, kind="reset", steps=_reset_steps(create, nics),
                                           target_id=workload.id,
                                           project_id=cluster.project_id, params={"cluster_id": cluster.id,
                                                                                  "serial": serial})
        await self.workloads.wake(op)
        return op

    # --- delete and expiry ------------------------------------------------------------------------------

    async def delete(self, caller: Identity, cluster_id: str) -> list[Operation]:
        """Delete every seat (and the network the cluster created) through the workload service, and the
        cluster, its seat rows and its OCCI mixin, in one transaction; the answer is the deletes' operations."""
        async with self.sessions() as session:
            cluster = await self._visible(session, caller, cluster_id)
            self.workloads._may_write(caller, cluster)
        async with self.workloads.transaction(caller, cluster.project_id) as session:
            seats = (await session.exec(select(ClusterSeat.workload_id).where(
                ClusterSeat.cluster_id == cluster.id))).all()
            ops = await self._delete_in(session, caller, list(seats))
            made = list((cluster.template.get("networks") or {}).values()) or (
                [cluster.network_id] if cluster.template.get("network_created") and cluster.network_id else [])
            if made:  # once no seat has a NIC on them
                ops += await self._delete_in(session, caller, made, after=[op.id for op in ops])
            await session.exec(sa_delete(ClusterSeat).where(col(ClusterSeat.cluster_id) == cluster.id))  # type: ignore[call-overload]
            await session.exec(sa_delete(OcciMixin).where(  # type: ignore[call-overload]
                col(OcciMixin.project_id) == cluster.project_id, col(OcciMixin.scheme) == CLUSTER_SCHEME,
                col(OcciMixin.term) == cluster.name))
            await session.exec(sa_delete(Cluster).where(col(Cluster.id) == cluster.id))  # type: ignore[call-overload]
        await self.workloads.wake(*ops)
        return ops

    async def _delete_in(self, session: AsyncSession, caller: Identity, ids: Sequence[str],
                         after: Sequence[str] = ()) -> list[Operation]:
        """The deletes of ``ids`` in the caller's transaction, with the rows that named them: a crash
        leaves both or neither (never a seat row gone while its VM runs on, unseen). ``after``: see
        :meth:`WorkloadService.delete`."""
        ops = []
        for wid in ids:
            try:
                op = await self.workloads.delete_in(session, caller, wid, after=after)
            except (Conflict, NotFound) as exc:  # refused before it wrote anything (a network still in use)
                log.info("cluster: %s", exc)
                continue
            if op is None:
                log.info("cluster: workload %s is already being deleted", wid)
            else:
                ops.append(op)
        return ops

    async def expire(self, now: datetime | None = None) -> list[str]:
        """Delete every cluster whose expiry passed, as the operator of its project (the broker's background
        task calls this); the ids."""
        now = now or utcnow()
        async with self.sessions() as session:
            due = (await session.exec(select(Cluster.id, Cluster.name, Project.name).join(
                Project, col(Project.id) == Cluster.project_id).where(
                col(Cluster.expires_at).is_not(None), col(Cluster.expires_at) <= now))).all()
        gone = []
        for cid, name, project in due:
            try:
                async with session_scope(self.sessions) as session:
                    operator = await operator_identity(session, project)
                await self.delete(operator, cid)
                gone.append(cid)
                log.info("cluster %s expired: its seats are being deleted", name)
            except Exception:  # the next round tries again
                log.exception("cluster %s expired but could not be deleted", name)
        return gone


# --- the template ------------------------------------------------------------------------------------------


def mixin_location(name: str) -> str:
    return f"/mixins/cluster/{name}/"


def render_hostname(pattern: str, cluster: str, n: int) -> str:
    return pattern.replace("{cluster}", cluster).format(n=n)


ROSTER_COLUMNS = ("name", "ssh_key", "password", "password_hash")
ROSTER_MAX_BYTES = 1 << 20


def parse_roster(text: str) -> tuple[Seat, ...]:
    """A class roster file's seats, in serial order (the CLI's ``--roster`` and the dashboard's upload):
    one line per seat, ``name`` then, optionally, the SSH key (``ada ssh-ed25519 AAAA... ada@laptop``);
    blank lines and ``#`` comments are skipped. A first line (after comments) that is a CSV header
    starting with ``name,`` gives those columns instead, any of :data:`ROSTER_COLUMNS`."""
    if len(text) > ROSTER_MAX_BYTES:
        raise ValidationError(f"the roster is longer than {ROSTER_MAX_BYTES} characters")
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if lines and lines[0].replace(" ", "").lower().startswith("name,"):
        return _csv_roster(lines)
    seats = []
    for line in lines:
        owner, _, key = line.strip().partition(" ")
        seats.append(Seat(owner=owner, ssh_key=key.strip() or None))
    return tuple(seats)


def _csv_roster(lines: list[str]) -> tuple[Seat, ...]:
    """A CSV roster's seats; an unknown column or a row longer than the header is a 400 naming the line
    (never the row's values: a password may be in it)."""
    reader = csv.reader(io.StringIO("\n".join(lines)))
    header = [h.strip().lower() for h in next(reader)]
    unknown = [h for h in header if h not in ROSTER_COLUMNS]
    if unknown or len(set(header)) != len(header):
        raise ValidationError(f"roster header: columns are {', '.join(ROSTER_COLUMNS)}, each once; "
                              f"not {', '.join(unknown) or 'a repeated one'}")
    seats = []
    for i, row in enumerate(reader, 1):
        if len(row) > len(header):
            raise ValidationError(f"roster line {i}: {len(row)} fields for {len(header)} columns")
        cell = dict(zip(header, (v.strip() for v in row), strict=False))
        seats.append(Seat(owner=cell.get("name", ""), ssh_key=cell.get("ssh_key") or None,
                          password=cell.get("password") or None, password_hash=cell.get("password_hash") or None))
    return tuple(seats)


def check_template(req: ClusterRequest) -> None:
    """Everything about the request that needs no catalog, before the transaction."""
    if not isinstance(req.name, str) or not _NAME.fullmatch(req.name):
        raise ValidationError(f"cluster name {req.name!r} must be 1 to 40 lower-case letters, digits or inner "
                              "hyphens (it starts the seats' host names)")
    if not 1 <= req.seats <= MAX_SEATS:
        raise ValidationError(f"a cluster has 1 to {MAX_SEATS} seats, not {req.seats}")
    if req.network_id and req.cidr:
        raise ValidationError("give a network_id (an existing network) or a cidr (a new one), not both")
    if req.sites or req.max_per_site is not None:
        if req.site:
            raise ValidationError("give a site (one) or sites (a class over several), not both")
        if req.network_id:
            raise ValidationError("an existing network stays at one site: a class over several sites takes a cidr "
                                  "(it gets a network with that range at each site it uses)")
        if req.max_per_site is not None and not 1 <= req.max_per_site <= MAX_SEATS:
            raise ValidationError(f"max_per_site must be 1 to {MAX_SEATS}, not {req.max_per_site}")
        if req.sites and req.max_per_site and req.max_per_site * len(set(req.sites)) < req.seats:
            raise ValidationError(f"{req.seats} seats do not fit {len(set(req.sites))} sites at {req.max_per_site} "
                                  "a site")
    if "{n" not in req.hostname_pattern or _PATTERN_FIELD.sub("", req.hostname_pattern).count("{") \
            or _PATTERN_FIELD.sub("", req.hostname_pattern).count("}"):
        raise ValidationError(f"hostname pattern {req.hostname_pattern!r} takes {{n}} (the seat's serial, with a "
                              "format like {n:02d}) and {cluster}, nothing else")
    names = [render_hostname(req.hostname_pattern, req.name, n) for n in (1, req.seats, MAX_SEATS)]
    bad = [h for h in names if not re.fullmatch(r"(?!-)[a-z0-9-]{1,63}(?<!-)", h)]
    if bad:
        raise ValidationError(f"hostname pattern {req.hostname_pattern!r} gives {bad[0]!r}, not a host name "
                              "(lower-case letters, digits, inner hyphens, at most 63)")
    if len(req.roster) > req.seats:
        raise ValidationError(f"the roster has {len(req.roster)} lines for {req.seats} seats")
    _check_password(req.password, req.password_hash, req.user_data)
    for i, seat in enumerate(req.roster, 1):
        try:
            check_ssh_key(seat.ssh_key)
            check_user_data(seat.user_data)
            own = seat.password is not None or seat.password_hash is not None
            _check_password(seat.password if own else req.password, seat.password_hash if own else req.password_hash,
                            seat.user_data or req.user_data)
        except ValidationError as exc:
            raise ValidationError(f"roster line {i}: {exc}") from None
        if len(seat.owner) > 255:
            raise ValidationError(f"roster line {i}: the name is longer than 255 characters")
    _check_cidrs(req)
    if req.expires_at is not None:
        at = req.expires_at if req.expires_at.tzinfo else req.expires_at.replace(tzinfo=UTC)
        if at <= utcnow():
            raise ValidationError(f"expires_at {at.isoformat()} is in the past")
    if req.first_address < 2:
        raise ValidationError("first_address must be at least 2 (host 1 of the range is the gateway)")


def _check_cidrs(req: ClusterRequest) -> None:
    """The class's range, and the per-site ranges of a class over several sites: each a network with room
    for every seat's address (a seat keeps its serial's host number whichever site it is at)."""
    if req.cidrs:
        if not req.sites:
            raise ValidationError("cidrs gives each site of a class over several sites its range: name them in sites")
        unknown = sorted(set(req.cidrs) - set(req.sites))
        if unknown:
            raise ValidationError(f"cidrs names {', '.join(unknown)}, not among the class's sites")
        if req.cidr is None and set(req.cidrs) != set(req.sites):
            rest = ", ".join(sorted(set(req.sites) - set(req.cidrs)))
            raise ValidationError(f"cidrs gives no range to {rest}: give each site one, or a cidr for the rest")
    for what, cidr in ([("cidr", req.cidr)] if req.cidr is not None else []) + [
            (f"cidrs[{k}]", v) for k, v in req.cidrs.items()]:
        net = ipaddress.IPv4Network(cidr, strict=False) if _is_net(cidr) else None
        if net is None:
            raise ValidationError(f"{what} {cidr!r} is not an IPv4 network like 10.20.0.0/24")
        _check_room(net, req.first_address, req.seats)


async def _site_range(session: AsyncSession, tpl: dict[str, Any], site: str) -> str | None:
    """The range of the network a class makes at ``site`` (a catalog site's name): the template's for
    that site in ``cidrs`` (by its name or region), else its ``cidr``; None: the class makes no network."""
    cidrs = tpl.get("cidrs") or {}
    if cidrs:
        region = (await session.exec(select(Site.region).where(Site.name == site))).first()
        own = cidrs.get(site) or (cidrs.get(region) if region else None)
        if own:
            return str(own)
    return tpl.get("cidr")


def _check_password(password: str | None, password_hash: str | None, user_data: str | None) -> None:
    """A seat's password: plaintext (hashed at once) or a SHA-512 crypt hash, and user data it can go beside."""
    if password is not None and password_hash is not None:
        raise ValidationError("give a password or a password_hash, not both")
    if password is not None and not (isinstance(password, str) and 1 <= len(password) <= PASSWORD_MAX
                                     and "\x00" not in password):
        raise ValidationError(f"a password is 1 to {PASSWORD_MAX} characters without NUL")
    if password_hash is not None and not SHA512_CRYPT.fullmatch(str(password_hash)):
        raise ValidationError("a password_hash must be a SHA-512 crypt hash like $6$salt$... (openssl passwd -6)")
    if (password or password_hash) and user_data is not None:
        combinable(user_data)


def hash_passwords(req: ClusterRequest, salt: str | None = None) -> ClusterRequest:
    """The request with every plaintext password replaced by its SHA-512 crypt hash (a random salt each;
    ``salt``: a fixed one, for the idempotency fingerprint, so a replay with another password is a 422
    while the fingerprint holds no fast hash of it)."""
    def hashed(password: str | None, given: str | None) -> str | None:
        return sha512_crypt(password, salt) if password is not None else given

    roster = tuple(replace(s, password=None, password_hash=hashed(s.password, s.password_hash)) for s in req.roster)
    return replace(req, password=None, password_hash=hashed(req.password, req.password_hash), roster=roster)


def _is_net(text: str) -> bool:
    try:
        ipaddress.IPv4Network(text, strict=True)
        return True
    except (ValueError, TypeError):
        return False


def _check_room(net: ipaddress.IPv4Network, first: int, seats: int) -> None:
    last = first + seats - 1
    if last >= net.num_addresses - 1:
        raise ValidationError(f"{net} has host numbers 1 to {net.num_addresses - 2}; seats {first} to {last} "
                              "do not fit (a larger range or a smaller first_address)")


def _template(req: ClusterRequest, explained: dict[str, Any]) -> dict[str, Any]:
    """What a scale needs later to make more seats like these (renderings leave out the roster and the
    user data: :func:`public_template`)."""
    return {"seats": req.seats, "image": req.image, "flavor": req.flavor, "vcpus": req.vcpus,
            "ram_mib": req.ram_mib, "disk_gib": req.disk_gib, "gpu_model": req.gpu_model, "gpu_count": req.gpu_count,
            "first_address": req.first_address, "hostname_pattern": req.hostname_pattern, "cidr": req.cidr,
            "cidrs": dict(req.cidrs),
            "ssh_key": req.ssh_key, "user_data": req.user_data, "password_hash": req.password_hash,
            "strategy": req.strategy, "site": req.site, "sites": list(req.sites), "max_per_site": req.max_per_site,
            "roster": [{"owner": s.owner, "ssh_key": s.ssh_key, "user_data": s.user_data,
                        "password_hash": s.password_hash} for s in req.roster],
            "placement": explained}


def public_template(tpl: dict[str, Any]) -> dict[str, Any]:
    """The template as front ends show it: without the roster's keys, anyone's user data or password hash
    (``passwords``: whether seats have one)."""
    hashed = bool(tpl.get("password_hash")) or any(r.get("password_hash") for r in tpl.get("roster") or [])
    shown = {k: v for k, v in tpl.items() if k not in ("roster", "user_data", "password_hash")}
    return shown | {"passwords": hashed, "roster": [r.get("owner", "") for r in tpl.get("roster") or []]}


def _seat_request(req: ClusterRequest, n: int, site: str | None) -> CreateRequest:
    return CreateRequest(kind=WorkloadKind.COMPUTE, name=f"{req.name}-{n}", flavor=req.flavor, vcpus=req.vcpus,
                         ram_mib=req.ram_mib, disk_gib=req.disk_gib, gpu_model=req.gpu_model,
                         gpu_count=req.gpu_count, image=req.image, site=site, strategy=req.strategy)


def _seat_request_from(tpl: dict[str, Any], n: int, site: str | None) -> CreateRequest:
    return CreateRequest(kind=WorkloadKind.COMPUTE, name=f"seat-{n}", flavor=tpl.get("flavor"), vcpus=tpl.get("vcpus"),
                         ram_mib=tpl.get("ram_mib"), disk_gib=int(tpl.get("disk_gib") or 0),
                         gpu_model=tpl.get("gpu_model"), gpu_count=int(tpl.get("gpu_count") or 0),
                         image=tpl.get("image"), site=site, strategy=tpl.get("strategy"))


def _request_from(tpl: dict[str, Any], cluster: Cluster, seats: int) -> ClusterRequest:
    return ClusterRequest(name=cluster.name, seats=seats, strategy=tpl.get("strategy") or "spread",
                          sites=tuple(tpl.get("sites") or ()), max_per_site=tpl.get("max_per_site"))


def _spread(order: Sequence[str], n: int, cap: int, held: Mapping[str, int],
            fits: Callable[[str, int], int]) -> dict[str, int]:
    """How many of ``n`` seats go to each site: sites in ``order`` (the batch placement's choice first,
    most seats first), each taking what it holds of what is left, up to ``cap`` less what it ``held``
    already; ``fits(site, k)``: how many of k seats the site holds (the batch placement at that site alone)."""
    placed: dict[str, int] = {}
    left = n
    for name in order:
        want = min(left, cap - held.get(name, 0))
        got = fits(name, want) if want > 0 else 0
        if got:
            placed[name] = got
            left -= got
        if left == 0:
            break
    return placed


def _demand(shape: Shape) -> dict[str, Any]:
    return quotas.demand_of(WorkloadKind.COMPUTE, shape.vcpus, shape.ram_mib, shape.disk_gib, shape.gpu_model,
                            shape.gpu_count)


def seat_site(workload: Workload) -> str | None:
    """The site a seat is at: where it was placed, else the site its create was pinned to."""
    spec = workload.spec or {}
    return (spec.get("placement") or {}).get("site") or spec.get("site")


def _networks_by_site(cluster: Cluster) -> dict[str, str]:
    """The class network at each site: those the class made (the template's ``networks``), or the one it was
    given or made before networks were per site, at the class's site."""
    made = dict(cluster.template.get("networks") or {})
    if not made and cluster.network_id:
        made = {cluster.site or "": cluster.network_id}
    return made


def _site_of(network: Workload | None) -> str | None:
    """A class on an existing network goes where the network is."""
    where = ((network.spec or {}).get("placement") or {}) if network is not None else {}
    return where.get("site")


def _range(network: Workload | None) -> ipaddress.IPv4Network | None:
    cidr = (network.spec or {}).get("cidr") if network is not None else None
    return ipaddress.IPv4Network(cidr) if cidr else None


def _address(net: ipaddress.IPv4Network, first: int, n: int) -> str:
    _check_room(net, first, n)
    return f"{net.network_address + first + n - 1}/{net.prefixlen}"


async def _macs(session: AsyncSession) -> set[str]:
    """Every MAC the catalog gives out: seats', clones' (``spec["mac"]``) and interfaces' (links)."""
    taken = {m.lower() for m in (await session.exec(select(ClusterSeat.mac))).all()}
    for spec in (await session.exec(select(Workload.spec).where(Workload.kind == WorkloadKind.COMPUTE,
                                                                col(Workload.present)))).all():
        if (spec or {}).get("mac"):
            taken.add(str(spec["mac"]).lower())
    for attrs in (await session.exec(select(WorkloadLink.attributes))).all():
        if (attrs or {}).get("mac"):
            taken.add(str(attrs["mac"]).lower())
    return taken


async def _addresses(session: AsyncSession, network_id: str) -> set[str]:
    """The addresses seats of any cluster hold on this network (through their interfaces on it: a class
    over several sites has seats on networks other than its ``network_id``)."""
    rows = (await session.exec(select(ClusterSeat.address).join(
        WorkloadLink, col(WorkloadLink.source_id) == ClusterSeat.workload_id).where(
        WorkloadLink.target_id == network_id, WorkloadLink.kind == "networkinterface"))).all()
    return {a.split("/")[0] for a in rows if a}


def _new_mac(taken: set[str]) -> str:
    """A locally administered unicast MAC in QEMU's 52:54:00 prefix, unused in the catalog."""
    while True:
        mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
        if mac not in taken:
            return mac


def _fingerprint(*request: Any) -> str:
    """What an Idempotency-Key on a cluster request compares (a key reused for another body is a 422)."""
    return hashlib.sha256(json.dumps(request, default=_plain, sort_keys=True).encode()).hexdigest()


def _plain(value: Any) -> Any:
    return asdict(value) if is_dataclass(value) and not isinstance(value, type) else str(value)


async def _remember(session: AsyncSession, kind: str, cluster: Cluster, ops: Sequence[Operation], key: str,
                    fingerprint: str) -> Operation:
    """The record an Idempotency-Key finds again: an operation that is over when written (nothing for the
    engine to run), naming the cluster and the operations the request started."""
    op, event = op_store.new_plan(kind=kind, steps=[], target_id=cluster.id, project_id=cluster.project_id,
                                  params={"operations": [o.id for o in ops]}, idempotency_key=key,
                                  fingerprint=fingerprint)
    op.state, op.progress, op.finished_at = OperationState.SUCCEEDED, 1.0, utcnow()
    op.message = f"{kind.split('.')[1]} of cluster {cluster.name}: {len(ops)} operations"
    session.add(op)
    await session.flush()
    add_last(session, event)  # at COMMIT, after the rest of the request (metavmm.catalog.eventlog)
    return op


async def _replayed(session: AsyncSession, record: Operation) -> tuple[str, list[Operation]]:
    """The cluster and operations of the request an Idempotency-Key named first."""
    if record.target_id is None or await session.get(Cluster, record.target_id) is None:
        raise Conflict(f"this Idempotency-Key was used for a cluster that is gone (operation {record.id})")
    ids = list(record.params.get("operations") or [])
    rows = {op.id: op for op in (await session.exec(select(Operation).where(col(Operation.id).in_(ids)))).all()}
    return record.target_id, [rows[i] for i in ids if i in rows]


def _reset_steps(create: Operation, nics: Sequence[WorkloadLink] = ()) -> list[Step]:
    """The create's own VM steps again, behind a delete of the VM (the quota stays reserved: same seat),
    then the seat's interfaces on its network again, with their MACs (the DHCP reservations stay)."""
    rows = {s["name"]: s for s in create.steps}
    made = rows.get("create")
    if made is None:
        raise Conflict(f"operation {create.id} has no create step to repeat")
    args = dict(made["args"])
    if args.get("image_from"):
        args["image"] = (create.outputs or {}).get(args.pop("image_from"))
    at = {"provider": args["provider"], "workload_id": args["workload_id"]}
    steps = [Step("delete-vm", "vm.delete", at, weight=1), Step("create", "vm.create", args, weight=3)]
    steps += [Step(s["name"], s["action"], s["args"], commit=bool(s.get("commit")))
              for s in create.steps if s["action"] in ("vm.wait", "workload.record")]
    steps += [Step(f"attach-{i}", "network.attach", {"link_id": lk.id, "compute_id": lk.source_id,
                                                     "target_id": lk.target_id, "mac": lk.attributes.get("mac")})
              for i, lk in enumerate(nics)]
    return steps


async def _explain(session: AsyncSession, cluster: Cluster, explained: dict[str, Any]) -> dict[str, Any]:
    """The class's placement in one line: where, on which hosts, how many each (from the seats' own)."""
    hosts: Counter[str] = Counter()
    rows = (await session.exec(select(Workload.spec).join(ClusterSeat, col(ClusterSeat.workload_id) == Workload.id)
                               .where(ClusterSeat.cluster_id == cluster.id))).all()
    for spec in rows:
        where = (spec or {}).get("placement") or {}
        hosts[str(where.get("host") or where.get("flavor") or where.get("site"))] += 1
    spread = ", ".join(f"{n} on {h}" for h, n in sorted(hosts.items()))
    where = ", ".join(f"{k} at {s}" for s, k in explained["sites"].items()) if explained.get("sites") else \
        f"at {cluster.site}"
    summary = (f"{sum(hosts.values())} seats {where} by the batch placement over "
               f"{explained.get('sites_considered')} sites: {spread}")
    if explained.get("split_by_cost") and not explained.get("sites"):
        summary += f" (the cheapest split was {explained['split_by_cost']}; a class stays on one site)"
    return {**explained, "hosts": dict(hosts), "summary": summary}


