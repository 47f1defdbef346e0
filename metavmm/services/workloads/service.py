"""The one workload service: create, act on, resize, rename, link, unlink, delete and cancel computes,
networks and storage. REST, OCCI, the CLI and the marketplace launch call this and nothing else.

Every change runs the same way, in one place and in this order: scope (the caller may act in the
project; another project's rows answer like rows that do not exist), validation, idempotency (a key is
scoped to the project and the principal, and replays the first request's answer only for the same
request), quota (counted with what is still in transit), placement through the scheduler, then the
catalog rows and the operation row written in one transaction. The engine runs the operation; nothing
here talks to a provider and no caller waits for one: the answer is the operation (202).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from sqlalchemy import delete as sa_delete
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.changes import TtlCache
from metavmm.catalog.db import is_busy, session_scope
from metavmm.catalog.models import (
    Flavor,
    Image,
    Operation,
    OperationState,
    Provider,
    Role,
    Site,
    Workload,
    WorkloadKind,
    WorkloadLink,
    detached,
    new_uuid,
    row_values,
    utcnow,
)
from metavmm.foundation.config import FederationConfig
from metavmm.foundation.errors import (
    CatalogBusy,
    Conflict,
    Forbidden,
    IdempotencyKeyReused,
    MetavmmError,
    NoPlacement,
    NotFound,
    PreconditionFailed,
    ValidationError,
)
from metavmm.foundation.records import Capability
from metavmm.scheduler.request import ImageRef, PlacementRequest
from metavmm.services import quotas
from metavmm.services.identity import Identity
from metavmm.services.marketplace.entries import get_image, project_audience, refuse_expired
from metavmm.services.operations import flows
from metavmm.services.operations import store as op_store
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.plan import Step
from metavmm.services.placement import Placer, PlannedCreate, Round, group_exclusions
from metavmm.services.scope import can_see
from metavmm.services.workloads.batch import CreateBatches, batchable
from metavmm.services.workloads.requests import (
    COMPUTE_ACTIONS,
    DESIRED_AFTER,
    ENGINE_VERB,
    RESOURCE_STATES,
    Accepted,
    CreateRequest,
    LinkSpec,
    check_applicable,
    check_cidr,
    check_group,
    check_guest,
    check_mac,
    check_name,
    check_residency,
    check_ssh_key,
    check_user_data,
    guest_spec,
    with_guest,
)
from metavmm.services.workloads.resources import place_resource
from metavmm.services.workloads.site_choices import SiteChoices, fold

BUSY_ATTEMPTS = 4  # a create refused for a database lock is tried this often before the 503


@dataclass(frozen=True)
class Shape:
    vcpus: int
    ram_mib: int
    disk_gib: int
    gpu_model: str | None
    gpu_count: int
    flavor: str | None
    arch: str | None = None  # a named flavor's; the scheduler takes the image's (x86_64 without an image)


@dataclass(frozen=True)
class Valid:
    """A create request's inputs that need no catalog, checked (:meth:`WorkloadService._valid`)."""

    workload_id: str
    name: str
    cidr: str | None
    context: dict[str, Any]
    guest: dict[str, Any]


@dataclass(frozen=True)
class Draft:
    """A create's workload row before it is placed and written (its columns, and a :func:`detached` object of
    them that the placement reads), its spec, quota need and operation id."""

    values: dict[str, Any]
    workload: Workload
    spec: dict[str, Any]
    need: dict[str, Decimal]
    op_id: str


RESOLVE_TABLES = ("image", "school", "school_member", "flavor")
"""What a create's shape and image are read from (:meth:`WorkloadService._resolve`)."""


class WorkloadService:
    """Scoped to nothing: every call names its caller (an :class:`Identity`), so no path forgets it."""

    def __init__(self, sessions: Any, config: FederationConfig, engine: Engine, placer: Placer) -> None:
        self.sessions = sessions
        self.config = config
        self.engine = engine
        self.placer = placer
        # concurrent plain creates of a project share a transaction (issue 23 item 15); None: one each
        self.batches: CreateBatches | None = CreateBatches(self)
        self.resolved: TtlCache[tuple[Shape, Image | None]] | None = None  # _resolve's answers (set by the API)

    # --- create -------------------------------------------------------------------------------------

    async def create(self, caller: Identity, req: CreateRequest, *, idempotency_key: str | None = None) -> Accepted:
        """Validate, reserve quota, place, and write the workload, its links and their operations; a
        transaction the database refused for a lock (nothing of it written) is tried again, a few times,
        before the caller gets a 503 with Retry-After."""
        for attempt in range(1, BUSY_ATTEMPTS + 1):
            try:
                return await self._create(caller, req, idempotency_key)
            except CatalogBusy:
                if attempt == BUSY_ATTEMPTS:
                    raise
                await asyncio.sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    async def _create(self, caller: Identity, req: CreateRequest, idempotency_key: str | None) -> Accepted:
        project_id = self._project(caller, req.project_id)
        key = scoped_key(caller, project_id, idempotency_key)
        fingerprint = req.fingerprint()
        ready = await self._resolve(project_id, req)
        if self.batches is not None and batchable(req, key, ready, self.config):
            assert ready is not None
            return await self.batches.submit(project_id, req, fingerprint, ready)
        return await self._create_alone(project_id, req, fingerprint, ready, key)

    async def _create_alone(self, project_id: int, req: CreateRequest, fingerprint: str,
                            ready: tuple[Shape, Image | None] | None, key: str | None = None) -> Accepted:
        """One create in a transaction of its own (what a batch falls back to)."""
        async with self._transaction(project_id) as session:
            earlier = await self._replay(session, key, fingerprint, "create")
            if earlier is not None:
                return await self._accepted_again(session, earlier)
            done = await self._create_in(session, project_id, req, key, fingerprint, ready)
        await self._wake(done.operation, *done.link_operations)
        return done

    # --- many in one transaction (a cluster's seats) ---------------------------------------------------

    def transaction(self, caller: Identity, project_id: int | None = None) -> Any:
        """The project's write transaction (see :meth:`_transaction`) for a caller that writes several
        workloads at once with :meth:`create_in`: all of them or none (a class of seats)."""
        return self._transaction(self._project(caller, project_id))

    async def create_in(self, session: AsyncSession, project_id: int, req: CreateRequest) -> Accepted:
        """One create inside the caller's :meth:`transaction` (the same rules, quota and placement as
        :meth:`create`; no idempotency key: the caller keeps its own). Wake the operations with
        :meth:`wake` after the transaction committed."""
        return await self._create_in(session, project_id, req, None, req.fingerprint())

    async def wake(self, *ops: Operation) -> None:
        await self._wake(*ops)

    async def _resolve(self, project_id: int, req: CreateRequest) -> tuple[Shape, Image | None] | None:
        """The shape and image of a create, read before its transaction takes the project's write lock
        (issue 23 item 15: every statement under the lock is one all other creates wait for). Neither is
        what the lock protects (quota use, placements in transit). None when either is refused: the
        create then resolves them under the lock as before, so an idempotent replay still answers first."""
        cache = self.resolved
        key = (project_id, req.kind, req.flavor, req.image, req.vcpus, req.ram_mib, req.disk_gib, req.gpu_model,
               req.gpu_count)

        async def read() -> tuple[tuple[Shape, Image | None] | None, None]:
            try:
                async with self.sessions() as session:
                    shape = await self._shape(session, req)
                    image = await self._image(session, req.image, project_id, shape) if req.image else None
                    return (shape, image), None
            except MetavmmError:
                return None, None

        ready = await cache.read_through(key, read) if cache is not None else (await read())[0]
        if ready is None:
            return None
        try:  # a kept image's expiry is checked now
            return ready[0], self._usable(ready[1], ready[0]) if ready[1] is not None else None
        except MetavmmError:
            return None

    async def _create_in(self, session: AsyncSession, project_id: int, req: CreateRequest, key: str | None,
                         fingerprint: str, ready: tuple[Shape, Image | None] | None = None) -> Accepted:
        valid = self._valid(req)
        workload_id = valid.workload_id
        taken = await session.get(Workload, workload_id) if req.workload_id is not None else None
        if taken is not None and taken.project_id != project_id:  # another project's: answer as if absent
            raise NotFound(f"no workload {workload_id} in this project (ids of other projects cannot be used)")
        if taken is not None:
            raise Conflict(f"a workload with id {workload_id} already exists")
        if ready is not None:
            shape, image = ready
        else:
            shape = await self._shape(session, req)
            image = await self._image(session, req.image, project_id, shape) if req.image else None
        draft = self._draft(project_id, req, valid, shape, image)
        workload = Workload(**draft.values)  # (the ORM's: its links and spec change after its INSERT)
        spec, need, op_id, cidr = draft.spec, draft.need, draft.op_id, valid.cidr
        need = await quotas.check(session, project_id, need, flavor=shape.flavor)  # the caller holds the lock
        if req.kind == WorkloadKind.COMPUTE:
            if req.links and not req.site:  # a compute goes where what it links to already is (23.2)
                req = replace(req, site=await self._linked_site(session, req.links))
            steps, where = await self._place_compute(session, workload, shape, image, req)
        else:
            steps, where = await self._place_resource(session, workload, shape, req.site, cidr)
            if not req.site:  # not bound until its first link: that compute's site decides (issue 23.2)
                where = {**where, "provisional": True}
        # written once, placed: one INSERT (no UPDATE of a row written before the placement)
        workload.spec = {**spec, "placement": where}
        workload.state_message = f"creating at {where['site']}"
        session.add(workload)
        await session.flush()  # the reservations and links reference the workload row
        await quotas.hold(session, project_id, need, workload_id=workload_id, operation_id=op_id)
        linked = [await self._new_link(session, workload, spec_, index=i) for i, spec_ in enumerate(req.links)]
        links = [lk for lk, _, _ in linked]
        if links:
            workload.spec = {**workload.spec,
                             "networks": [lk.target_id for lk in links if lk.kind == "networkinterface"],
                             "volumes": [lk.target_id for lk in links if lk.kind == "storagelink"]}
        operation = await op_store.write_plan(
            session, kind="create", steps=flows.with_quota(workload_id, steps), target_id=workload_id,
            project_id=project_id, idempotency_key=key, fingerprint=fingerprint,
            params={**where, "holds_quota": True}, operation_id=op_id)
        link_ops = [await self._write(session, await flows.attach_plan(session, lk.id, first=first, after=after))
                    for lk, first, after in linked]
        return Accepted(workload, operation, tuple(links), tuple(link_ops))

    @staticmethod
    def _valid(req: CreateRequest) -> Valid:
        """What a create request says that needs no catalog: its kind, id, name, network, guest inputs."""
        if req.kind not in WorkloadKind.__members__.values():
            raise ValidationError(f"unknown kind {req.kind!r}; expected one of compute, network, storage")
        if req.workload_id is not None and not is_uuid(req.workload_id):
            raise ValidationError(f"{req.workload_id!r} is not a UUID; workload ids are UUIDs")
        workload_id = (req.workload_id or new_uuid()).lower()
        name = check_name(req.name if req.name is not None else f"{req.kind}-{workload_id[:8]}")
        cidr = check_cidr(req.cidr)
        context = {k: v for k, v in (("ssh_key", check_ssh_key(req.ssh_key)),
                                     ("user_data", check_user_data(req.user_data))) if v is not None}
        if context and req.kind != WorkloadKind.COMPUTE:
            raise ValidationError(f"a {req.kind} takes no ssh_key or user_data (only a compute boots)")
        groups = {k: v for k, v in (("affinity_group", check_group(req.affinity_group, "affinity_group")),
                                    ("anti_affinity_group", check_group(req.anti_affinity_group,
                                                                        "anti_affinity_group"))) if v is not None}
        if groups and req.kind != WorkloadKind.COMPUTE:
            raise ValidationError(f"a {req.kind} is in no placement group (only a compute has a host)")
        context |= groups
        residency = check_residency(req.residency)
        if residency and req.kind != WorkloadKind.COMPUTE:
            raise ValidationError(f"a {req.kind} has no residency rule (only a compute is placed by country)")
        context |= {"residency": list(residency)} if residency else {}
        guest = check_guest(req.guest, workload_id) if req.guest else {}
        if guest and req.kind != WorkloadKind.COMPUTE:
            raise ValidationError(f"a {req.kind} has no guest identity (hostname, MAC, address)")
        return Valid(workload_id, name, cidr, context, guest)

    @staticmethod
    def _draft(project_id: int, req: CreateRequest, valid: Valid, shape: Shape, image: Image | None) -> Draft:
        """The workload row (not added yet), its spec and its quota need."""
        spec: dict[str, Any] = {
            **dict(req.attributes), "vcpus": shape.vcpus, "ram_mib": shape.ram_mib, "disk_gib": shape.disk_gib,
            "gpu_model": shape.gpu_model, "gpu_count": shape.gpu_count, "flavor": shape.flavor,
            "image_id": image.id if image else None, "site": req.site,
            **({"zone": req.zone} if req.zone else {}), **({"cidr": valid.cidr} if valid.cidr else {}),
            **valid.context, **guest_spec(valid.guest)}
        values = row_values(Workload, id=valid.workload_id, project_id=project_id, kind=req.kind, name=valid.name,
                            spec=spec, desired_state="active", observed_state="pending",
                            state_message="being created")
        need = quotas.demand_of(req.kind, shape.vcpus, shape.ram_mib, shape.disk_gib, shape.gpu_model,
                                shape.gpu_count)
        return Draft(values, detached(Workload, values), spec, need, new_uuid())

    async def _place_compute(self, session: AsyncSession, workload: Workload, shape: Shape, image: Image | None,
                             req: CreateRequest, round_: Round | None = None) -> tuple[list[Step], dict[str, Any]]:
        """Where the scheduler puts it (the image's architecture and hypervisor, residency, price ceiling,
        burst policy) and the engine's steps that make it there."""
        preq, groups = await self._grouped(session, self._compute_request(
            workload.name, shape, image, req, workload.spec, (req.site,) if req.site else ()),
            workload.project_id, workload.id, req)
        try:
            planned = await self.placer.plan_create(session, preq, workload_id=workload.id,
                                                    vm_name=vm_name(workload.id),
                                                    providers=self._providers(), project_id=workload.project_id,
                                                    round_=round_)
        except NoPlacement as exc:
            if not groups:
                raise
            raise NoPlacement(f"{exc} ({groups})", reasons=exc.reasons) from None
        return with_guest(planned.steps, req.guest, workload.id), planned.where

    @staticmethod
    async def _grouped(session: AsyncSession, preq: PlacementRequest, project_id: int | None, workload_id: str,
                       req: CreateRequest) -> tuple[PlacementRequest, str]:
        """``preq`` kept away from the hosts and sites the request's placement groups rule out (a create and
        :meth:`site_choices` alike), and the words that say so ("" without groups)."""
        if not (req.affinity_group or req.anti_affinity_group):
            return preq, ""
        hosts, sites = await group_exclusions(session, project_id, workload_id, req.affinity_group,
                                              req.anti_affinity_group)
        return replace(preq, exclude_hosts=hosts, exclude_sites=sites), (
            f"placement groups: {len(hosts)} hosts and {len(sites)} sites excluded by affinity group "
            f"{req.affinity_group or '-'}, anti-affinity group {req.anti_affinity_group or '-'}")

    @staticmethod
    def _compute_request(name: str, shape: Shape, image: Image | None, req: CreateRequest, spec: dict[str, Any],
                         sites: tuple[str, ...]) -> PlacementRequest:
        """What the scheduler is asked for a compute: the one request a create and :meth:`site_choices` build."""
        if shape.vcpus < 1 or shape.ram_mib < 1:
            raise ValidationError("a compute needs a flavor, or vcpus and ram_mib (at least 1 each)")
        return PlacementRequest(
            name=name, vcpus=shape.vcpus, ram_mib=shape.ram_mib, disk_gib=shape.disk_gib,
            project=None, gpu_model=shape.gpu_model, gpu_count=shape.gpu_count,
            cpu_arch=shape.arch, image=ImageRef(image.id) if image else None,
            sites=sites, providers=tuple(req.providers),
            max_price_per_hour=req.max_price_per_hour, ssh_key=spec.get("ssh_key"),
            user_data=spec.get("user_data"), strategy=req.strategy, residency=check_residency(req.residency))

    async def site_choices(self, caller: Identity, req: CreateRequest) -> SiteChoices:
        """Where a create of the compute ``req`` could go if it named its site, with each site's price or
        the reason it cannot (:mod:`.site_choices`): the caller's project, the same shape, image, quota and
        placement-group rules as :meth:`create`, then one scheduler dry run naming every site of the federation file's
        providers. Writes nothing; the launch form offers the feasible sites, and a launch there is a
        :meth:`create` naming the site, which asks the scheduler again."""
        if req.kind != WorkloadKind.COMPUTE:
            raise ValidationError("only a compute is placed at a chosen site from the launch form")
        project_id = self._project(caller, req.project_id)
        providers = self._providers()
        async with self.sessions() as session:
            shape = await self._shape(session, req)
            image = await self._image(session, req.image, project_id, shape) if req.image else None
            need = quotas.demand_of(req.kind, shape.vcpus, shape.ram_mib, shape.disk_gib, shape.gpu_model,
                                    shape.gpu_count)
            await quotas.check(session, project_id, need, flavor=shape.flavor)  # over quota: no site can help
            sites = [(str(n), str(p), str(r)) for n, p, r in (await session.exec(
                select(Site.name, Provider.name, Site.region).join(Provider, col(Provider.id) == col(Site.provider_id))
                .where(col(Site.present), col(Provider.name).in_(providers)).order_by(col(Site.name)))).all()]
            if not sites:
                return SiteChoices(self.config.federation.currency, "the federation has no site", ())
            preq, groups = await self._grouped(session, self._compute_request(
                req.name or "launch", shape, image, req, {}, tuple(s[0] for s in sites)), project_id, "", req)
            planned = await self.placer.dry_run(session, preq, providers=providers, explain=True,
                                                project_id=project_id)
        return fold(planned.placement, sites, excluded=groups or None)

    async def explain(self, caller: Identity, preq: PlacementRequest, req: CreateRequest) -> tuple[PlannedCreate, str]:
        """The placement explainer's dry run of ``preq`` for the caller's project, kept away from the hosts and
        sites the placement groups of ``req`` (the create the explainer offers) rule out, as that create would be
        (:meth:`_grouped`, the one rule); and the words that say so ("" without groups), for the candidates the
        groups rejected. Writes nothing, so a reader may ask too: the groups are those of the caller's project."""
        self._valid(replace(req, name=req.name or "explain"))  # a bad group or key is the create's 400, said now
        preq = replace(preq, residency=check_residency(preq.residency))  # as the create will read it
        async with self.sessions() as session:
            preq, groups = await self._grouped(session, preq, caller.project_id, "", req)
            planned = await self.placer.dry_run(session, preq, providers=self._providers(), explain=True,
                                                project_id=caller.project_id)
        return planned, groups

    @staticmethod
    async def _linked_site(session: AsyncSession, links: tuple[LinkSpec, ...]) -> str | None:
        """The one site the networks and storage a new compute links to are bound to (None when none is
        bound, or they sit at several sites: the link check then says why). One not bound yet (created
        alone, at no site it was asked for) follows the compute instead (:meth:`_bind`)."""
        sites = set()
        for spec_ in links:
            target = await session.get(Workload, spec_.target_id.lower()) if is_uuid(spec_.target_id) else None
            where = ((target.spec or {}).get("placement") or {}) if target is not None else {}
            if not where.get("provisional"):
                sites.add(where.get("site"))
        return sites.pop() if len(sites) == 1 else None

    async def _place_resource(self, session: AsyncSession, workload: Workload, shape: Shape, site: str | None,
                              cidr: str | None) -> tuple[list[Step], dict[str, Any]]:
        if workload.kind == WorkloadKind.STORAGE and shape.disk_gib < 1:
            raise ValidationError("a storage needs disk_gib (its size, at least 1)")
        where = await self._priced(session, await place_resource(session, self._providers(), workload.kind, site),
                                   workload.kind, shape.disk_gib)
        steps = flows.resource_steps(workload.id, workload.kind, name=workload.name, provider=where["provider"],
                                     region=where["region"], size_gib=shape.disk_gib, cidr=cidr)
        return steps, where

    async def _priced(self, session: AsyncSession, where: dict[str, Any], kind: str, size_gib: int) -> dict[str, Any]:
        """A volume's placement with its price there (what the spend ledger charges while it exists); a
        network's as it is (it costs nothing by itself)."""
        if kind != WorkloadKind.STORAGE:
            return where
        return {**where, **await self.placer.volume_offer(session, where["site"], size_gib)}

    async def _shape(self, session: AsyncSession, req: CreateRequest) -> Shape:
        """A named flavor (its size wins), or explicit numbers; GPUs need a model."""
        if req.gpu_count < 0 or (req.gpu_count and not req.gpu_model):
            raise ValidationError("gpu_count needs a gpu_model")
        if req.disk_gib < 0 or (req.vcpus is not None and req.vcpus < 1) or (req.ram_mib is not None
                                                                               and req.ram_mib < 1):
            raise ValidationError("vcpus and ram_mib must be at least 1, disk_gib at least 0")
        if req.flavor:
            if req.kind != WorkloadKind.COMPUTE:
                raise ValidationError(f"a {req.kind} has no flavor")
            row = (await session.exec(select(Flavor).where(Flavor.name == req.flavor, col(Flavor.present))
                                      .order_by(col(Flavor.id)))).first()
            if row is None:
                raise ValidationError(f"no flavor named {req.flavor!r} in the catalog")
            return Shape(row.vcpus, row.ram_mib, max(req.disk_gib, row.disk_gib), row.gpu_model, row.gpu_count,
                         row.name, row.arch)
        if req.kind == WorkloadKind.COMPUTE and (not req.vcpus or not req.ram_mib):
            raise ValidationError("a compute needs a flavor, or vcpus and ram_mib")
        return Shape(req.vcpus or 0, req.ram_mib or 0, req.disk_gib, req.gpu_model if req.gpu_count else None,
                     req.gpu_count, None)

    async def _image(self, session: AsyncSession, ref: str, project_id: int, shape: Shape) -> Image:
        """The image the project may launch (the marketplace's visibility rule, for the project that will
        own the VM), not expired, and the shape big enough for it."""
        try:
            image = await get_image(session, ref, await project_audience(session, project_id))
        except NotFound:
            raise ValidationError(f"no image {ref} visible to this project") from None
        return self._usable(image, shape)

    @staticmethod
    def _usable(image: Image, shape: Shape) -> Image:
        refuse_expired(image)
        short = [f"{need} {what} (asked {have})" for need, have, what in (
            (image.min_vcpus, shape.vcpus, "vCPUs"), (image.min_ram_mib, shape.ram_mib, "MiB RAM"),
            (image.min_disk_gib, shape.disk_gib or image.min_disk_gib, "GiB disk")) if have < need]
        if short:
            raise ValidationError(f"image {image.name} v{image.version} needs at least " + ", ".join(short))
        return image

    # --- links ---------------------------------------------------------------------------------------

    async def link(self, caller: Identity, compute_id: str, spec: LinkSpec, *,
                   idempotency_key: str | None = None) -> tuple[WorkloadLink, Operation]:
        """Attach a network or storage of the same project to a compute (the engine waits until both
        exist, at one site, then attaches)."""
        compute = await self._visible(caller, compute_id)
        self._may_write(caller, compute)
        assert compute.project_id is not None
        key = scoped_key(caller, compute.project_id, idempotency_key)
        fingerprint = _digest("link", compute_id, spec)
        async with self._transaction(compute.project_id) as session:
            earlier = await self._replay(session, key, fingerprint, "attach")
            if earlier is not None:
                link = await session.get(WorkloadLink, earlier.target_id)
                if link is None:
                    raise Conflict(f"the link of operation {earlier.id} is gone")
                return link, earlier
            compute = await self._in_session(session, caller, compute_id)
            link, first, after = await self._new_link(session, compute, spec, index=0)
            op = await self._write(session, await flows.attach_plan(session, link.id, first=first, after=after),
                                   key, fingerprint)
        await self._wake(op)
        return link, op

    async def unlink(self, caller: Identity, link_id: str, *, compute_id: str | None = None) -> Operation:
        """Detach at the provider; the link row goes once the provider let go of it."""
        async with self.sessions() as session:
            link = await session.get(WorkloadLink, link_id) if is_uuid(link_id) else None
        if link is None or not can_see(caller, link) or (compute_id is not None and link.source_id != compute_id):
            raise NotFound(f"compute {compute_id} has no link {link_id}" if compute_id else f"no link {link_id}")
        self._may_write(caller, link)
        assert link.project_id is not None
        async with self._transaction(link.project_id) as session:
            row = await session.get(WorkloadLink, link.id)
            if row is None:
                raise NotFound(f"no link {link_id}")
            row.attributes = {**row.attributes, "state": "inactive", "state_message": "detaching"}
            session.add(row)
            op = await self._write(session, await flows.detach_plan(session, link.id))
        await self._wake(op)
        return op

    async def _new_link(self, session: AsyncSession, compute: Workload, spec: LinkSpec, *,
                        index: int) -> tuple[WorkloadLink, list[Step], list[Step]]:
        """A link row from a compute to a network or storage of its project; defaults for its device name
        (eth<n>, vd<x>) and, for an interface, the MAC it asks for (checked, unique in the catalog). With it,
        the steps its attach plan runs first and after its commit: the move of a target to the compute's
        site (:meth:`_bind`)."""
        target = await session.get(Workload, spec.target_id.lower()) if is_uuid(spec.target_id) else None
        if target is None or target.project_id != compute.project_id:
            raise NotFound(f"no network or storage {spec.target_id} in this project")
        if compute.kind != WorkloadKind.COMPUTE or target.kind not in (WorkloadKind.NETWORK, WorkloadKind.STORAGE):
            raise ValidationError(f"a link goes from a compute to a network or storage, not from {compute.kind} "
                                  f"to {target.kind}")
        if not (compute.present and target.present) or "deleted" in (compute.desired_state, target.desired_state):
            raise Conflict("one end of the link is deleted or being deleted")
        kind = "storagelink" if target.kind == WorkloadKind.STORAGE else "networkinterface"
        existing = (await session.exec(select(WorkloadLink).where(WorkloadLink.source_id == compute.id))).all()
        taken = next((lk for lk in existing if lk.target_id == target.id), None)
        if taken is not None:
            raise Conflict(f"compute {compute.name} already has {kind} {taken.id} to {target.name}")
        if spec.link_id is not None and (not is_uuid(spec.link_id) or await session.get(WorkloadLink, spec.link_id)):
            raise Conflict(f"a link with id {spec.link_id} already exists")
        n = sum(1 for lk in existing if lk.kind == kind) + index
        attributes: dict[str, Any] = {**dict(spec.attributes), "state": "pending", "state_message": "attaching"}
        if kind == "networkinterface":
            attributes["interface"] = spec.device or f"eth{n}"
            mac = check_mac(spec.mac)
            if mac is not None:
                if await self._mac_taken(session, mac):
                    raise Conflict(f"MAC address {mac} is already used by another interface")
                attributes["mac"] = mac
        else:
            attributes["deviceid"] = spec.device or f"vd{chr(ord('b') + min(n, 24))}"
        first, after = await self._bind(session, compute, target)  # refused: nothing of the link written yet
        link = WorkloadLink(id=(spec.link_id or new_uuid()).lower(), project_id=compute.project_id, kind=kind,
                            source_id=compute.id, target_id=target.id, attributes=attributes)
        session.add(link)
        await session.flush()
        return link, first, after

    async def _bind(self, session: AsyncSession, compute: Workload,
                    target: Workload) -> tuple[list[Step], list[Step]]:
        """Bind a network or storage to the site of the compute it is linked to (issue 23.2). One created
        alone, at no site it was asked for, is placed provisionally and bound by its first link: at another
        site it moves there first (it was never attached, so it holds nothing: the move re-creates it at the
        compute's site and deletes the old one; a rollback moves it back). A storage bound by an earlier link
        and unattached now follows too, with its data (:meth:`_copy_volume`). One pinned to its site, a
        network bound already, or a storage still attached stays: a link to a compute elsewhere would only
        roll back, so it is refused now. The steps returned run before the attach and after the link's
        commit; a refusal is a 409 with the reason, nothing written."""
        here, there = site_of(compute), site_of(target)
        where = dict((target.spec or {}).get("placement") or {})
        if not where.pop("provisional", False):
            if here and there and here != there:
                if target.kind == WorkloadKind.STORAGE and not target.spec.get("site"):
                    return await self._copy_volume(session, compute, target, where)
                raise Conflict(f"{target.kind} {target.name} is at {'/'.join(there)} and compute {compute.name} "
                               f"at {'/'.join(here)}: a link stays within one site, and the {target.kind} is bound "
                               f"to its site ({'pinned there' if target.spec.get('site') else 'linked before'}); "
                               f"create the {target.kind} at the compute's site or link it to a compute at "
                               f"{'/'.join(there)}")
            return [], []
        if here is None or here == there:  # where it is already (or the compute is placed nowhere): bound
            if here is not None:
                await _set(session, target, spec={**target.spec, "placement": where})
            return [], []
        to = await self._follow_to(session, compute, target)
        _, _, waits = await flows.behind(session, target.id)  # its create ends first
        move = flows.move_step(target.id, target.kind, name=target.name, source=where, dest=to,
                               size_gib=int(target.spec.get("disk_gib") or 0), cidr=target.spec.get("cidr"))
        await _set(session, target, spec={**target.spec, "placement": to},
                   state_message=f"moving to {to['site']} (linked to compute {compute.name})")
        return [*waits, move], []

    async def _follow_to(self, session: AsyncSession, compute: Workload, target: Workload) -> dict[str, Any]:
        """Where ``target`` goes to follow ``compute``: a site of the compute's that can hold one (409 otherwise),
        with a volume's price there (what the spend ledger charges)."""
        dest = (compute.spec or {}).get("placement") or {}
        try:
            where = await place_resource(session, self._providers(), target.kind, dest.get("site"))
        except NoPlacement as exc:
            there = site_of(target)
            raise Conflict(f"{target.kind} {target.name} is at {'/'.join(there or ('nowhere',))} and cannot "
                           f"follow compute {compute.name} to site {dest.get('site')}: {exc}") from None
        return await self._priced(session, where, target.kind, int(target.spec.get("disk_gib") or 0))

    async def _copy_volume(self, session: AsyncSession, compute: Workload, target: Workload,
                           where: dict[str, Any]) -> tuple[list[Step], list[Step]]:
        """A storage bound by an earlier link, linked now to a compute at another site: an unattached volume
        may move (issue 23.2), its data copied through the scratch directory (flows.volume_copy_steps), after
        the detaches still running end. Refused with the reason (409, nothing written) while another compute
        keeps it attached, or where either provider cannot copy a volume."""
        links = (await session.exec(select(WorkloadLink).where(WorkloadLink.target_id == target.id))).all()
        waits: list[Step] = []
        for lk in links:
            detach = (await session.exec(select(Operation.id).where(
                Operation.target_id == lk.id, Operation.kind == "detach",
                col(Operation.state).in_(op_store.ACTIVE)))).first()
            if detach is None:
                holder = await session.get(Workload, lk.source_id)
                raise Conflict(f"storage {target.name} is attached to compute {holder.name if holder else lk.source_id}"
                               f" at {where.get('site')}: a volume moves to another site only unattached; remove "
                               f"that link first")
            waits.append(Step(f"wait-detach-{len(waits)}", "operation.wait",
                              {"operation_id": detach, "accept": ["succeeded"]}))
        to = await self._follow_to(session, compute, target)
        for side, name in (("out of", where.get("provider")), ("into", to["provider"])):
            provider = (await session.exec(select(Provider).where(Provider.name == name))).first()
            if provider is None or Capability.VOLUME_COPY not in provider.capabilities:
                kind = f" ({provider.kind})" if provider is not None else ""
                raise Conflict(f"storage {target.name} holds data at {where.get('site')} and cannot follow compute "
                               f"{compute.name} to site {to['site']}: {name}{kind} cannot copy a volume {side} "
                               f"a site; create a storage at {to['site']} instead")
        _, _, busy = await flows.behind(session, target.id)  # a change of it still running ends first
        fmt = self.config.provider(to["provider"]).kind
        first, after = flows.volume_copy_steps(
            target.id, name=target.name, size_gib=int(target.spec.get("disk_gib") or 0), source=where, dest=to,
            volume_format=flows.volume_format(fmt), waits=[*waits, *busy])
        await _set(session, target, spec={**target.spec, "placement": to},
                   state_message=f"moving to {to['site']} with its data (linked to compute {compute.name})")
        return first, after

    @staticmethod
    async def _mac_taken(session: AsyncSession, mac: str) -> bool:
        query = select(WorkloadLink.attributes).where(WorkloadLink.kind == "networkinterface")
        rows = (await session.exec(query)).all()
        return any(str((a or {}).get("mac", "")).lower() == mac for a in rows)

    # --- actions, resize, rename ------------------------------------------------------------------------

    async def act(self, caller: Identity, workload_id: str, action: str, *, idempotency_key: str | None = None,
                  expected_version: int | None = None, image_name: str | None = None) -> Operation:
        """start, stop, restart, suspend, resume (the engine's power flow) or save (the disk becomes a
        marketplace image of the project); planned behind an operation still running on the workload."""
        if action not in COMPUTE_ACTIONS:
            raise ValidationError(f"unknown action {action!r}; expected one of {', '.join(COMPUTE_ACTIONS)}")
        workload_id, project_id = await self._writable(caller, workload_id)
        key = scoped_key(caller, project_id, idempotency_key)
        fingerprint = _digest("act", workload_id, action, image_name)
        async with self._transaction(project_id) as session:
            earlier = await self._replay(session, key, fingerprint, None)
            if earlier is not None:
                return earlier
            workload = await self._locked(session, caller, workload_id, expected_version)
            busy = await _busy(session, workload.id)
            if workload.desired_state == "deleted":
                raise Conflict(f"workload {workload.id} is being deleted")
            check_applicable(workload, action, busy)
            if not (_is_placed(workload) or await _creating(session, workload.id)):
                raise Conflict(f"compute {workload.name} runs nowhere (it is {workload.observed_state})")
            if action == "save":
                plan = await flows.save_plan(session, workload.id, name=image_name, config=self.config)
            else:
                await _set(session, workload, desired_state=DESIRED_AFTER[action])
                plan = await flows.power_plan(session, workload.id, ENGINE_VERB[action])
            op = await self._write(session, plan, key, fingerprint)
        await self._wake(op)
        return op

    async def resize(self, caller: Identity, workload_id: str, *, flavor: str | None = None, vcpus: int | None = None,
                     ram_mib: int | None = None, idempotency_key: str | None = None,
                     expected_version: int | None = None) -> Operation:
        """A new shape for a placed compute; the growth is checked against the quota and reserved with the
        plan (the plan commits it once the VM has the new shape; its rollback gives it back)."""
        workload_id, project_id = await self._writable(caller, workload_id)
        key = scoped_key(caller, project_id, idempotency_key)
        fingerprint = _digest("resize", workload_id, flavor, vcpus, ram_mib)
        async with self._transaction(project_id) as session:
            earlier = await self._replay(session, key, fingerprint, "resize")
            if earlier is not None:
                return earlier
            workload = await self._locked(session, caller, workload_id, expected_version)
            if workload.kind != WorkloadKind.COMPUTE:
                raise Conflict(f"resize applies to compute workloads, not {workload.kind}")
            if not _is_placed(workload):
                raise Conflict(f"workload {workload.id} is not running at a provider yet; resize it once it is")
            shape = await self._shape(session, CreateRequest(flavor=flavor, vcpus=vcpus, ram_mib=ram_mib))
            op_id = new_uuid()
            plan, grow = await flows.resize_plan(session, workload.id, vcpus=shape.vcpus, ram_mib=shape.ram_mib,
                                                 flavor=shape.flavor)
            if grow:
                await quotas.reserve(session, workload.project_id, grow, workload_id=workload.id, operation_id=op_id,
                                     locked=True)
            op = await self._write(session, plan, key, fingerprint, operation_id=op_id)
        await self._wake(op)
        return op

    async def update(self, caller: Identity, workload_id: str, *, name: str | None = None,
                     attributes: dict[str, Any] | None = None, expected_version: int | None = None) -> Workload:
        """Rename, or change attributes kept in the spec that no provider sees (OCCI user mixins, a
        summary); compare-and-set on the version when ``expected_version`` is given."""
        workload_id, project_id = await self._writable(caller, workload_id)
        async with self._transaction(project_id) as session:
            workload = await self._locked(session, caller, workload_id, expected_version)
            if workload.desired_state == "deleted":
                raise Conflict(f"workload {workload.id} is being deleted")
            values: dict[str, Any] = {}
            if name is not None and name != workload.name:
                values["name"] = check_name(name)
            if attributes:
                values["spec"] = {**workload.spec, **attributes}
            if values:
                await _set(session, workload, **values)
        return workload

    async def set_resource_state(self, caller: Identity, workload_id: str, term: str) -> Workload:
        """A network's up/down or a storage's online/offline: a state the catalog keeps for the owner
        (nothing at the provider changes), refused while its create or delete runs."""
        workload = await self._visible(caller, workload_id)
        self._may_write(caller, workload)
        states = RESOURCE_STATES.get(workload.kind, {})
        if term not in states:
            raise ValidationError(f"a {workload.kind} has no action {term!r}"
                                  + (f"; it has {', '.join(states)}" if states else ""))
        assert workload.project_id is not None
        async with self._transaction(workload.project_id) as session:
            workload = await self._locked(session, caller, workload.id, None)
            if workload.observed_state == "pending" or workload.desired_state == "deleted":
                raise Conflict(f"action {term} is not applicable: {workload.kind} {workload.name}"
                               " is being created or deleted")
            if workload.observed_state == states[term]:
                raise Conflict(f"{workload.kind} {workload.name} is {states[term]} already")
            await _set(session, workload, observed_state=states[term], state_message=None)
        return workload

    # --- delete and cancel -----------------------------------------------------------------------------

    async def delete(self, caller: Identity, workload_id: str, *, idempotency_key: str | None = None,
                     expected_version: int | None = None, after: Sequence[str] = ()) -> Operation:
        """Delete at the provider (planned behind a create still running); a compute's links go with it,
        a network or storage still linked to a live compute is refused. A workload that never reached a
        provider (its create rolled back or was cancelled) only gives its quota back. ``after``: operations
        whose end the provider's delete waits for (a class's network waits for its seats' deletes: the
        provider refuses to delete a network a VM still has an interface on)."""
        workload_id, project_id = await self._writable(caller, workload_id)
        key = scoped_key(caller, project_id, idempotency_key)
        fingerprint = _digest("delete", workload_id)
        async with self._transaction(project_id) as session:
            earlier = await self._replay(session, key, fingerprint, "delete")
            if earlier is not None:
                return earlier
            op = await self._delete_in(session, caller, workload_id, expected_version, key, fingerprint, after)
            if op is None:
                raise Conflict(f"workload {workload_id} is already being deleted")
        await self._wake(op)
        return op

    async def delete_in(self, session: AsyncSession, caller: Identity, workload_id: str, *,
                        after: Sequence[str] = ()) -> Operation | None:
        """One delete inside the caller's :meth:`transaction` (a cluster's seat or a group's member that
        goes with the rows naming it: both commit, or neither); None when the workload is already being
        deleted. ``after`` as for :meth:`delete`. Wake the operation with :meth:`wake` after the
        transaction committed."""
        return await self._delete_in(session, caller, workload_id, None, None, _digest("delete", workload_id), after)

    async def _delete_in(self, session: AsyncSession, caller: Identity, workload_id: str,
                         expected_version: int | None, key: str | None, fingerprint: str,
                         after: Sequence[str] = ()) -> Operation | None:
        """The intent (desired_state deleted), the delete's plan and the links' removal, in ``session``;
        None (nothing written) when the workload is already being deleted."""
        workload = await self._locked(session, caller, workload_id, expected_version)
        if workload.desired_state == "deleted":
            return None
        if workload.kind != WorkloadKind.COMPUTE:  # (a link's target is a network or storage, never a compute)
            await flows.refuse_if_linked(session, workload)
        if _is_placed(workload) or await _creating(session, workload.id):
            await _set(session, workload, desired_state="deleted")
            plan = await flows.delete_plan(session, workload.id)  # reads the links (DHCP reservations)
            waits = [Step(f"wait-{i}", "operation.wait", {"operation_id": op_id}) for i, op_id in enumerate(after)]
            plan = replace(plan, steps=[*waits, *plan.steps])
        else:
            await quotas.release(session, workload.id)
            await _set(session, workload, desired_state="deleted", observed_state="deleted", present=False,
                       state_message="deleted: it never reached a provider")
            plan = flows.PlanSpec("delete", [Step("free-quota", "quota.free", {"workload_id": workload.id})],
                                  workload.id, workload.project_id)
        if workload.kind == WorkloadKind.COMPUTE:
            await session.exec(sa_delete(WorkloadLink).where(  # type: ignore[call-overload]
                col(WorkloadLink.source_id) == workload.id))
        return await self._write(session, plan, key, fingerprint)

    async def cancel(self, caller: Identity, operation_id: str) -> Operation:
        """A running operation rolls back after its current step; one past its commit step cannot."""
        async with self.sessions() as session:
            op = await session.get(Operation, operation_id) if is_uuid(operation_id) else None
        if op is None or not can_see(caller, op):
            raise NotFound(f"no operation {operation_id}")
        if op.project_id is not None and not caller.is_admin:
            self._may_write(caller, op)
        return await self.engine.cancel(op.id)

    # --- reading ------------------------------------------------------------------------------------------

    async def get(self, caller: Identity, workload_id: str) -> Workload:
        return await self._visible(caller, workload_id)

    # --- the shared steps ---------------------------------------------------------------------------

    def _project(self, caller: Identity, project_id: int | None) -> int:
        """The project a new row goes to: the caller's own unless an admin names another; readers write nothing."""
        if not caller.at_least(Role.MEMBER):
            raise Forbidden(f"user {caller.user} has the {caller.role} role in project {caller.project}: read-only")
        if project_id is None or project_id == caller.project_id:
            return caller.project_id
        if not caller.is_admin:
            raise Forbidden(f"you may create resources only in your project {caller.project}")
        return project_id

    @staticmethod
    def _may_write(caller: Identity, row: Any) -> None:
        if not caller.at_least(Role.MEMBER):
            raise Forbidden(f"user {caller.user} has the {caller.role} role in project {caller.project}: read-only")

    async def _writable(self, caller: Identity, workload_id: str) -> tuple[str, int]:
        """The workload's id as stored and the project whose write lock a change of it takes, for a caller
        who may write. A project member's is their own project: they see no other, and the row, read
        under the lock, is checked again (:meth:`_locked`), so no session is opened just to learn it (a
        second session and statement per delete or action under load, issue 16 item 13). An admin acts on
        any project's rows, and a reader learns 404 before 403: for them the row is read first."""
        if caller.is_admin or not caller.at_least(Role.MEMBER):
            workload = await self._visible(caller, workload_id)
            self._may_write(caller, workload)
            assert workload.project_id is not None
            return workload.id, workload.project_id
        if not is_uuid(workload_id):
            raise NotFound(f"no workload {workload_id}")
        return workload_id.lower(), caller.project_id

    async def _visible(self, caller: Identity, workload_id: str) -> Workload:
        async with self.sessions() as session:
            return await self._in_session(session, caller, workload_id)

    @staticmethod
    async def _in_session(session: AsyncSession, caller: Identity, workload_id: str, *,
                          lock: bool = False) -> Workload:
        """The row the caller may see; ``lock``: read with its row lock, as it is now (see :meth:`_locked`)."""
        if not is_uuid(workload_id):
            raise NotFound(f"no workload {workload_id}")
        row = await (session.get(Workload, workload_id.lower(), populate_existing=True,
                                 with_for_update={"key_share": True}) if lock
                     else session.get(Workload, workload_id.lower()))
        if row is None or not can_see(caller, row):
            raise NotFound(f"no workload {workload_id}")
        return row

    async def _locked(self, session: AsyncSession, caller: Identity, workload_id: str,
                      expected_version: int | None) -> Workload:
        """The row, read with its write lock (so the check and the write cannot interleave with another
        request or the engine), at the version the caller saw. One statement: PostgreSQL's SELECT ... FOR
        NO KEY UPDATE (the lock an UPDATE takes); SQLite has no row locks, and the transaction's first
        statement (the project lock, :meth:`_transaction`) already holds its single writer lock."""
        row = await self._in_session(session, caller, workload_id, lock=True)
        if expected_version is not None and row.version != expected_version:
            raise PreconditionFailed(f"workload {workload_id} changed since version {expected_version}; "
                                     f"it is at version {row.version} now")
        return row

    @asynccontextmanager
    async def _transaction(self, project_id: int) -> AsyncIterator[AsyncSession]:
        """One transaction whose first statement is the project's write lock (quota decisions and
        idempotency lookups of one project are serialised; SQLite needs the lock first)."""
        try:
            async with session_scope(self.sessions) as session:
                await quotas.lock_project(session, project_id)
                yield session
        except IntegrityError as exc:  # a twin request won a race the project lock does not cover
            raise Conflict(f"a concurrent request changed the same rows; try again ({exc.orig})") from None
        except DBAPIError as exc:
            if not is_busy(exc):
                raise
            raise CatalogBusy("the catalog is busy; nothing was changed, send the request again") from None

    @staticmethod
    async def _replay(session: AsyncSession, key: str | None, fingerprint: str, kind: str | None) -> Operation | None:
        """The first answer to a key seen before, if the request is the same (nothing is done again);
        a 422 if it is not (the key names one request, whatever its body)."""
        if key is None:
            return None
        earlier = (await session.exec(select(Operation).where(Operation.idempotency_key == key))).first()
        if earlier is None:
            return None
        if earlier.params.get("request") != fingerprint or (kind is not None and earlier.kind != kind):
            raise IdempotencyKeyReused(f"this Idempotency-Key was used for a different request (operation "
                                       f"{earlier.id}, {earlier.kind}); use a new key")
        return earlier

    @staticmethod
    async def _accepted_again(session: AsyncSession, op: Operation) -> Accepted:
        workload = await session.get(Workload, op.target_id) if op.target_id else None
        if workload is None:
            raise Conflict(f"this Idempotency-Key was used for a request whose workload is gone (operation {op.id})")
        links = (await session.exec(select(WorkloadLink).where(WorkloadLink.source_id == workload.id))).all()
        return Accepted(workload, op, tuple(links), replayed=True)

    @staticmethod
    async def _write(session: AsyncSession, plan: flows.PlanSpec, key: str | None = None,
                     fingerprint: str | None = None, operation_id: str | None = None) -> Operation:
        return await op_store.write_plan(session, **plan.args(), idempotency_key=key, fingerprint=fingerprint,
                                         operation_id=operation_id)

    def _providers(self) -> frozenset[str]:
        """The providers the engine can drive: those of the federation file."""
        return frozenset(p.name for p in self.config.providers if p.enabled)

    async def _wake(self, *ops: Operation) -> None:
        for op in ops:
            if op.state == OperationState.PENDING:
                await self.engine.wake(op.id)


# --- helpers -------------------------------------------------------------------------------------------------


def scoped_key(caller: Identity, project_id: int, key: str | None) -> str | None:
    """An Idempotency-Key as stored: scoped to the project and the principal, so two clients (or two
    projects) choosing the same key never see each other's operation."""
    if key is None:
        return None
    if not 1 <= len(key) <= 255:
        raise ValidationError("an Idempotency-Key must be 1 to 255 characters")
    return "k1:" + hashlib.sha256(f"{project_id}\x00{caller.user}\x00{key}".encode()).hexdigest()


def _digest(*parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def vm_name(workload_id: str) -> str:
    """The VM's name at the provider: ``mv-<workload id>``, unique at every provider and traceable to its
    workload whatever the workload is called (names are labels, and two may be equal)."""
    return f"mv-{workload_id}"


def is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except (ValueError, AttributeError, TypeError):
        return False


def site_of(workload: Workload) -> tuple[str, str] | None:
    """(provider, region) where the workload was placed, when it was."""
    where = (workload.spec or {}).get("placement") or {}
    provider, region = where.get("provider"), where.get("region")
    return (str(provider), str(region)) if provider and region else None


def _is_placed(workload: Workload) -> bool:
    """It exists at a provider, so the engine's power and delete flows can act on it."""
    return workload.provider_id is not None and workload.provider_resource_id is not None and workload.present


async def _creating(session: AsyncSession, workload_id: str) -> bool:
    """Its create is still active: flows are then planned behind it (flows.behind)."""
    return (await session.exec(select(Operation.id).where(
        Operation.target_id == workload_id, Operation.kind == "create",
        col(Operation.state).in_(op_store.ACTIVE)))).first() is not None


async def _busy(session: AsyncSession, workload_id: str) -> bool:
    return (await session.exec(select(Operation.id).where(
        Operation.target_id == workload_id, col(Operation.state).in_(op_store.ACTIVE)))).first() is not None


async def _set(session: AsyncSession, workload: Workload, **values: Any) -> None:
    """Write the row (its version goes up, so ETags change)."""
    for k, v in values.items():
        setattr(workload, k, v)
    workload.version += 1
    workload.updated_at = utcnow()
    session.add(workload)
    await session.flush()


def storage_gib(size: Any) -> int:
    """OCCI's occi.storage.size (GiB, may be fractional) as whole GiB, rounded up."""
    return max(0, math.ceil(float(size or 0)))

