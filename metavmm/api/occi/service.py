"""The bridge from OCCI to the catalog and the broker's services: OCCI is a view, not a second model.

Every entity is a catalog row (``Workload`` for resources, ``WorkloadLink`` for links); every mixin
comes from the catalog (images as os_tpl, flavors as resource_tpl, sites and zones as placement
mixins, ``OcciMixin`` rows as user mixins) or is a standard one declared in
:mod:`metavmm.api.occi.infrastructure`. Which mixins an entity carries is ``spec["mixins"]``.

Identity: :func:`occi_identity` is the only place that reads who is asking; every query and mutation
below takes its result, so project scoping cannot be forgotten on one path.
"""

from __future__ import annotations

import random
import re
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from sqlalchemy import delete as sa_delete
from sqlalchemy import or_
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import aliased
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.api import keys
from metavmm.api.keys import IDENTITY, PLACER
from metavmm.api.occi import infrastructure as infra
from metavmm.api.occi.catalog_view import (
    KINDS,
    STATIC_BY_ID,
    Registry,
    applicable_actions,
    declared,
    intended_state,
    link_entity,
    links_of,
    mixins_of,
    occi_state,
    registry,
    resource_entity,
    running_operations,
    user_mixin,
)
from metavmm.api.occi.model import Entity, Kind, Mixin, check_term
from metavmm.api.occi.parse import CategoryRef, LinkRef, OcciRequest
from metavmm.api.rest.common import lock_row
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import (
    OcciMixin,
    OperationState,
    Role,
    Site,
    Workload,
    WorkloadLink,
    utcnow,
)
from metavmm.foundation.errors import Conflict, Forbidden, NotFound, Unauthenticated, ValidationError
from metavmm.services import quotas, workloads
from metavmm.services.operations import flows
from metavmm.services.operations import store as op_store
from metavmm.services.operations.engine import Engine
from metavmm.services.placement import Placer
from metavmm.services.workloads import place_resource

_CACHED = web.RequestKey("occi_identity", object)
ENTITY_PATH = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.\-]*://[^/]+)?/(compute|network|storage|networkinterface|"
                         r"storagelink)/([0-9a-fA-F\-]{36})/?$")
DEFAULT_SHAPE = {"vcpus": 1, "ram_mib": 512}
_LINK_TARGET = aliased(Workload)  # built once: an alias re-proxies every column when it is made
# a compute whose deletion was asked is gone for OCCI; a create that never produced a VM stays, in error,
# until its owner deletes it
SHOWN = or_(Workload.desired_state != "deleted", Workload.observed_state.in_(("rolled_back", "cancelled")))  # type: ignore[attr-defined]
RESERVED_PATHS = ("/-/", "/api/", "/.well-known/", "/mixins/", *(k.location or "/-/" for k in infra.KINDS))


# --- identity -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OcciIdentity:
    user: str
    project_id: int
    project: str
    role: str

    def require_write(self) -> None:
        if self.role == Role.READER:
            raise Forbidden(f"user {self.user} has the reader role in project {self.project}: read-only")


async def occi_identity(request: web.Request) -> OcciIdentity:
    """Who is asking, in which project, with which role: the identity the broker's auth middleware
    proved (API token as Bearer or as the Basic password, OIDC, or a client certificate)."""
    cached = request.get(_CACHED)
    if isinstance(cached, OcciIdentity):
        return cached
    raw = request.get(IDENTITY)
    if raw is None:  # only a route the auth middleware did not cover could get here
        raise Unauthenticated("authentication required: send your API token as the Basic password")
    ident = OcciIdentity(raw.user, raw.project_id, raw.project, raw.role)
    request[_CACHED] = ident
    return ident


# --- the service ----------------------------------------------------------------------------------------


class OcciService:
    """Every OCCI operation, scoped to one identity's project."""

    def __init__(self, maker: async_sessionmaker[AsyncSession], config: Any, engine: Engine | None,
                 placer: Placer, ident: OcciIdentity) -> None:
        self.maker = maker
        self.config = config
        self.engine = engine  # the operations engine: computes, networks, storage and links are its plans
        self.placer = placer
        self.ident = ident

    @classmethod
    async def for_request(cls, request: web.Request) -> OcciService:
        ident = await occi_identity(request)
        return cls(request.app[keys.SESSIONS], request.app[keys.CONFIG], request.app.get(keys.OPERATIONS),
                   request.app[PLACER], ident)

    # -- reading ---------------------------------------------------------------------------------------

    async def registry(self) -> Registry:
        async with self.maker() as session:
            return await registry(session, self.ident.project_id)

    async def _workload(self, session: AsyncSession, kind: str, entity_id: str) -> Workload:
        row = await session.get(Workload, entity_id) if is_uuid(entity_id) else None
        if row is None or row.kind != kind or row.project_id != self.ident.project_id or not shown(row):
            raise NotFound(f"no {kind} {entity_id} in project {self.ident.project}")
        return row

    async def _link(self, session: AsyncSession, kind: str, link_id: str) -> WorkloadLink:
        row = await session.get(WorkloadLink, link_id) if is_uuid(link_id) else None
        if row is None or row.kind != kind or row.project_id != self.ident.project_id:
            raise NotFound(f"no {kind} {link_id} in project {self.ident.project}")
        return row

    async def get(self, kind: Kind, entity_id: str) -> Entity:
        async with self.maker() as session:
            if kind in infra.LINK_KINDS:
                row = await self._link(session, kind.term, entity_id)
                src = await session.get(Workload, row.source_id)
                tgt = await session.get(Workload, row.target_id)
                assert src is not None and tgt is not None
                return link_entity(row, src.kind, tgt.kind, occi_state(src))
            running = await running_operations(session, [entity_id.lower()]) if is_uuid(entity_id) else {}
            # one round trip: the workload, its links and their targets' kinds
            target = _LINK_TARGET
            rows = (await session.exec(
                select(Workload, WorkloadLink, target.kind)
                .outerjoin(WorkloadLink, WorkloadLink.source_id == Workload.id)
                .outerjoin(target, WorkloadLink.target_id == target.id)
                .where(Workload.id == entity_id.lower(), Workload.kind == kind.term,
                       Workload.project_id == self.ident.project_id, SHOWN)
                .order_by(WorkloadLink.id))).all() if is_uuid(entity_id) else []
            if not rows:
                raise NotFound(f"no {kind.term} {entity_id} in project {self.ident.project}")
            wl = rows[0][0]
            state = occi_state(wl)
            links = [link_entity(lk, wl.kind, tk, state) for _, lk, tk in rows if lk is not None]
            return resource_entity(wl, links, running.get(wl.id) if wl.kind == "compute" else None)

    async def collection(self, kind: Kind | None = None, mixin: Mixin | None = None) -> list[Entity]:
        """Entities of ``kind`` (or of every kind) in the project, optionally only those carrying ``mixin``."""
        terms = [kind.term] if kind else list(KINDS)
        async with self.maker() as session:
            out: list[Entity] = []
            resource_terms = [t for t in terms if t in ("compute", "network", "storage")]
            if resource_terms:
                running = await running_operations(session, project_id=self.ident.project_id)  # before the rows
                rows = list((await session.exec(select(Workload).where(
                    Workload.project_id == self.ident.project_id, Workload.kind.in_(resource_terms), SHOWN)
                    .order_by(Workload.created_at, Workload.id))).all())
                if mixin is not None:
                    rows = [w for w in rows if mixin.type_id in w.spec.get("mixins", [])]
                links = await links_of(session, rows)
                out += [resource_entity(w, links[w.id], running.get(w.id) if w.kind == "compute" else None)
                        for w in rows]
            link_terms = [t for t in terms if t in ("networkinterface", "storagelink")]
            link_ids = {infra.NETWORKINTERFACE.type_id, infra.STORAGELINK.type_id}
            if link_terms and (mixin is None or not mixin.applies or set(mixin.applies) & link_ids):
                rows_l = (await session.exec(select(WorkloadLink).where(
                    WorkloadLink.project_id == self.ident.project_id, WorkloadLink.kind.in_(link_terms))
                    .order_by(WorkloadLink.id))).all()
                ends = {w.id: w for w in (await session.exec(select(Workload).where(Workload.id.in_(
                    [r.source_id for r in rows_l] + [r.target_id for r in rows_l])))).all()}
                for r in rows_l:
                    if mixin is None or mixin.type_id in r.attributes.get("mixins", []):
                        src, tgt = ends[r.source_id], ends[r.target_id]
                        out.append(link_entity(r, src.kind, tgt.kind, occi_state(src)))
            return out

    # -- validation --------------------------------------------------------------------------------------

    def _resolve_categories(self, reg: Registry, kind: Kind, cats: list[CategoryRef]) -> list[Mixin]:
        mixins: list[Mixin] = []
        for cat in cats:
            if cat.cls == "action":
                raise ValidationError(f"an action category ({cat.type_id}) cannot be part of an entity")
            if cat.type_id in {k.type_id for k in infra.KINDS}:
                if cat.type_id != kind.type_id:
                    raise ValidationError(f"kind {cat.type_id} does not belong in the {kind.term} collection")
                continue
            mixin = reg.mixin(cat.type_id)
            if mixin is None:
                raise ValidationError(f"unknown mixin {cat.type_id}; GET /-/ lists the mixins this server offers")
            if mixin.applies and kind.type_id not in mixin.applies:
                raise ValidationError(f"mixin {cat.type_id} does not apply to {kind.term}")
            if mixin.type_id not in {m.type_id for m in mixins}:
                mixins.append(mixin)
        return mixins

    @staticmethod
    def _check_attributes(kind: Kind, mixins: list[Mixin], given: dict[str, Any], *, creating: bool,
                          entity_id: str | None = None) -> dict[str, Any]:
        """Field values for ``given`` attributes; every unknown, immutable or bad value is a 400."""
        # the kind's own definition wins over a template's copy (e.g. resource_tpl's cores default)
        known = {a.name: a for a in reversed(declared(kind, mixins))}
        out: dict[str, Any] = {}
        for name, value in given.items():
            attr = known.get(name)
            if attr is None:
                raise ValidationError(f"unknown attribute {name} for {kind.term}"
                                      + (f" with mixins {', '.join(m.term for m in mixins)}" if mixins else ""))
            if name == "occi.core.id":
                if entity_id is not None and str(value) not in (entity_id, f"urn:uuid:{entity_id}"):
                    raise ValidationError(f"attribute occi.core.id: {value!r} does not match the entity's id")
                continue
            if name in ("occi.core.source", "occi.core.target", "occi.core.source.kind", "occi.core.target.kind"):
                continue  # handled by link creation
            if not attr.mutable and not (creating and attr.field):
                raise ValidationError(f"attribute {name} is immutable")
            value = attr.check(value)
            if attr.field:
                out[attr.field] = attr.from_occi(value) if attr.from_occi else value
        if creating:
            for attr in known.values():
                if attr.required and attr.name not in given and attr.default is None and attr.field:
                    raise ValidationError(f"missing required attribute {attr.name} for {kind.term}")
        return out

    # -- creating ----------------------------------------------------------------------------------------

    async def create(self, kind: Kind, req: OcciRequest, entity_id: str | None = None) -> str:
        """Create a resource or link from a parsed rendering; returns its location path."""
        self.ident.require_write()
        if entity_id is not None and not is_uuid(entity_id):
            raise ValidationError(f"{entity_id!r} is not a UUID; entity ids are UUIDs")
        if kind in infra.LINK_KINDS:
            return await self._create_link(kind, req, entity_id)
        async with self.maker() as session:
            reg = await registry(session, self.ident.project_id)
        mixins = self._resolve_categories(reg, kind, req.categories)
        fields = self._check_attributes(kind, mixins, req.attributes, creating=True, entity_id=entity_id)
        spec: dict[str, Any] = {k: v for k, v in fields.items() if k != "name"}
        spec["mixins"] = [m.type_id for m in mixins]
        name = fields.get("name") or f"{kind.term}-{(entity_id or uuid.uuid4().hex)[:8]}"
        site, zone = self._pinned_site(reg, mixins)
        if zone:
            spec["zone"] = zone
        if kind is infra.COMPUTE:
            return await self._create_compute(reg, mixins, spec, name, req.links, entity_id or str(uuid.uuid4()),
                                              site)
        wl = Workload(id=entity_id or str(uuid.uuid4()), project_id=self.ident.project_id, kind=kind.term,
                      name=name, spec=spec, site_id=site.id if site else None,
                      observed_state={"network": "active", "storage": "online"}[kind.term])
        async with session_scope(self.maker) as session:
            if await session.get(Workload, wl.id) is not None:
                raise Conflict(f"an entity with id {wl.id} already exists")
            session.add(wl)
            await session.flush()
            for i, ref in enumerate(req.links):  # refused: links start at a compute
                await self._new_link(session, wl, ref, reg, index=i)
            wl.spec = {**spec, "networks": [], "volumes": []}
            planned = await self._plan_resource(session, wl)
        if planned is not None:
            assert self.engine is not None
            await self.engine.wake(planned)
        return f"{kind.location}{wl.id}"

    async def _create_compute(self, reg: Registry, mixins: list[Mixin], spec: dict[str, Any], name: str,
                              links: tuple[LinkRef, ...] | list[LinkRef], workload_id: str, site: Site | None) -> str:
        """The create REST runs too (broker.workloads.create): quota reserved, the scheduler's placement
        counting placements in transit, the engine's provision plan, in one transaction with the links."""
        shape, image_id, constraints = self._compute_request(reg, mixins, spec)
        async with session_scope(self.maker) as session:
            await quotas.lock_project(session, self.ident.project_id)  # first statement (SQLite)
            if await session.get(Workload, workload_id) is not None:
                raise Conflict(f"an entity with id {workload_id} already exists")
            wl, op = await workloads.create(
                session, project_id=self.ident.project_id, kind="compute", name=name, shape=shape, image_id=image_id,
                site=site.name if site else None, idempotency_key=None,
                placer=self.placer if self.engine is not None else None,
                providers=frozenset(p.name for p in self.config.providers), constraints=constraints,
                workload_id=workload_id, extra_spec=spec, vm_name=f"mv-{workload_id}")  # titles need not be unique
            made = [await self._new_link(session, wl, ref, reg, index=i) for i, ref in enumerate(links)]
            wl.spec = {**wl.spec, "networks": [lk.target_id for lk in made if lk.kind == "networkinterface"],
                       "volumes": [lk.target_id for lk in made if lk.kind == "storagelink"]}
            session.add(wl)
            link_ids = [lk.id for lk in made]
        if self.engine is not None and op.state == OperationState.PENDING:
            await self.engine.wake(op.id)
        await self._attach_links(link_ids)  # each attach plan waits until the compute is placed
        return f"{infra.COMPUTE.location}{workload_id}"

    @staticmethod
    def _pinned_site(reg: Registry, mixins: list[Mixin]) -> tuple[Site | None, str | None]:
        pinned = [reg.sites[m.type_id] for m in mixins if m.type_id in reg.sites]
        if len(pinned) > 1:
            raise ValidationError("give at most one site mixin: a resource runs at one site")
        return pinned[0] if pinned else (None, None)

    @staticmethod
    def _compute_request(reg: Registry, mixins: list[Mixin],
                         spec: dict[str, Any]) -> tuple[workloads.Shape, str, workloads.Constraints]:
        """os_tpl -> image, resource_tpl -> flavor (its size wins, GFD.224), the broker mixin -> constraints."""
        images = [reg.images[m.type_id] for m in mixins if m.type_id in reg.images]
        flavors = [reg.flavors[m.type_id] for m in mixins if m.type_id in reg.flavors]
        if len(images) != 1:
            raise ValidationError("a compute needs exactly one os_tpl mixin (the image); GET /mixins/os_tpl/ "
                                  "lists them" if not images else "give only one os_tpl mixin")
        if len(flavors) > 1:
            raise ValidationError("give at most one resource_tpl mixin")
        flavor = flavors[0] if flavors else None
        if flavor is not None:
            spec["vcpus"], spec["ram_mib"] = flavor.vcpus, flavor.ram_mib
        for key, value in DEFAULT_SHAPE.items():
            spec.setdefault(key, value)
        arch = {"x86_64": "x64", "i686": "x86", "i386": "x86"}.get(images[0].arch)
        if arch and spec.setdefault("architecture", arch) != arch:
            raise ValidationError(f"occi.compute.architecture {spec['architecture']} does not match the os_tpl's "
                                  f"image ({images[0].arch})")
        shape = workloads.Shape(int(spec["vcpus"]), int(spec["ram_mib"]), 0, flavor.gpu_model if flavor else None,
                                flavor.gpu_count if flavor else 0, flavor.name if flavor else None)
        allowed = tuple(p for p in str(spec.get("allowed_providers") or "").split(",") if p)
        price = spec.get("max_price_per_hour")
        return shape, images[0].id, workloads.Constraints(allowed, float(price) if price is not None else None)

    async def _target(self, session: AsyncSession, location: str, what: str) -> Workload:
        match = ENTITY_PATH.match(location)
        if not match or match.group(1) not in ("compute", "network", "storage"):
            raise ValidationError(f"{what} {location!r} is not the location of a compute, network or storage")
        row = await session.get(Workload, match.group(2).lower())
        if row is None or row.project_id != self.ident.project_id or row.kind != match.group(1):
            raise NotFound(f"{what} {location} does not exist in project {self.ident.project}")
        return row

    async def _new_link(self, session: AsyncSession, source: Workload, ref: LinkRef, reg: Registry, *,
                        index: int, link_id: str | None = None) -> WorkloadLink:
        target = await self._target(session, ref.target, "link target")
        kind = {"network": infra.NETWORKINTERFACE, "storage": infra.STORAGELINK}.get(target.kind)
        if source.kind != "compute" or kind is None:
            raise ValidationError(f"a link goes from a compute to a network or storage, not from {source.kind} "
                                  f"to {target.kind}")
        if ref.rel and KINDS[target.kind].type_id not in ref.rel:
            raise ValidationError(f"link to {ref.target}: rel {' '.join(ref.rel)} is not the target's kind "
                                  f"{KINDS[target.kind].type_id}")
        cats = [CategoryRef(term=t.rpartition("#")[2], scheme=t.rpartition("#")[0] + "#") for t in ref.categories]
        mixins = self._resolve_categories(reg, kind, cats)
        fields = self._check_attributes(kind, mixins, ref.attributes, creating=True)
        existing = (await session.exec(select(WorkloadLink).where(WorkloadLink.source_id == source.id,
                                                                  WorkloadLink.kind == kind.term))).all()
        n = len(existing) + index
        if kind is infra.NETWORKINTERFACE:
            fields.setdefault("interface", f"eth{n}")
            fields.setdefault("mac", "52:54:00:" + ":".join(f"{random.randrange(256):02x}" for _ in range(3)))
        else:
            fields.setdefault("deviceid", f"vd{chr(ord('b') + min(n, 24))}")
        fields["mixins"] = [m.type_id for m in mixins]
        row = WorkloadLink(id=link_id or str(uuid.uuid4()), project_id=self.ident.project_id, kind=kind.term,
                           source_id=source.id, target_id=target.id, attributes=fields)
        session.add(row)
        await session.flush()
        return row

    async def _create_link(self, kind: Kind, req: OcciRequest, link_id: str | None) -> str:
        source = req.attributes.get("occi.core.source")
        target = req.attributes.get("occi.core.target") or (req.links[0].target if req.links else None)
        if not isinstance(source, str) or not isinstance(target, str):
            raise ValidationError(f"a {kind.term} needs occi.core.source and occi.core.target")
        async with self.maker() as session:
            reg = await registry(session, self.ident.project_id)
        mixin_ids = tuple(c.type_id for c in req.categories if c.type_id != kind.type_id)
        attrs = {k: v for k, v in req.attributes.items() if not k.startswith("occi.core.")}
        async with session_scope(self.maker) as session:
            src = await self._target(session, source, "link source")
            if link_id and await session.get(WorkloadLink, link_id) is not None:
                raise Conflict(f"a link with id {link_id} already exists")
            row = await self._new_link(session, src, LinkRef(target=target, categories=mixin_ids, attributes=attrs),
                                       reg, index=0, link_id=link_id)
            if row.kind != kind.term:
                raise ValidationError(f"a link to {target} is a {row.kind}, not a {kind.term}")
        await self._attach_links([row.id])
        return f"{kind.location}{row.id}"

    async def _plan_resource(self, session: AsyncSession, wl: Workload) -> str | None:
        """With an engine, a network or storage is created by its plan (written in the caller's
        transaction; the caller wakes the engine): at its site mixin's site, or the first that can hold it."""
        if self.engine is None:
            return None
        site = await session.get(Site, wl.site_id) if wl.site_id else None
        providers = frozenset(p.name for p in self.engine.config.providers)
        where = await place_resource(session, providers, wl.kind, site.name if site else None)
        size = -(-float(wl.spec.get("size_gib") or 0) // 1)  # whole GiB, rounded up
        steps = flows.resource_steps(wl.id, wl.kind, name=wl.name, provider=where["provider"],
                                     region=where["region"], size_gib=int(size), cidr=wl.spec.get("address"),
                                     quota=True)  # OCCI holds no quota: the steps settle nothing, but a
        # rollback marks the entity as never created (its state becomes error, with the reason)
        wl.observed_state, wl.state_message = "pending", f"creating at {where['site']}"
        wl.spec = {**wl.spec, "placement": where}
        session.add(wl)
        op = await op_store.write_plan(session, kind="create", steps=steps, target_id=wl.id,
                                       project_id=wl.project_id, params=where)
        return op.id

    async def _attach_links(self, link_ids: list[str]) -> None:
        """Links become real through the engine's attach plan (it waits until both ends exist)."""
        if self.engine is None or not link_ids:
            return  # recorded only: no engine runs in this broker
        async with session_scope(self.maker) as session:
            for link_id in link_ids:
                link = await session.get(WorkloadLink, link_id)
                if link is not None:
                    link.attributes = {**link.attributes, "state": "pending", "state_message": "attaching"}
        for link_id in link_ids:
            await flows.attach(self.engine, link_id)

    async def _purge(self, workload_id: str) -> None:
        async with session_scope(self.maker) as session:
            await session.exec(sa_delete(WorkloadLink).where(or_(WorkloadLink.source_id == workload_id,
                                                                    WorkloadLink.target_id == workload_id)))
            await session.exec(sa_delete(Workload).where(Workload.id == workload_id))

    # -- updating ----------------------------------------------------------------------------------------

    async def update(self, kind: Kind, entity_id: str, req: OcciRequest) -> None:
        """Partial update (POST) or replace (PUT on an existing entity): mutable attributes and user mixins.
        New cores or memory for a compute submit the engine's resize flow (and nothing else may change
        in the same request, so a refused resize leaves the entity as it was)."""
        self.ident.require_write()
        async with self.maker() as session:
            reg = await registry(session, self.ident.project_id)
        resize: tuple[str, int, int] | None = None
        async with session_scope(self.maker) as session:
            if kind in infra.LINK_KINDS:
                link = await self._link(session, kind.term, entity_id)
                current = mixins_of(link.attributes)
                added = self._resolve_categories(reg, kind, req.categories)
                fields = self._check_attributes(kind, current + added, req.attributes, creating=False,
                                                entity_id=entity_id)
                names = [m.type_id for m in current] + [m.type_id for m in added if m not in current]
                link.attributes = {**link.attributes, **fields, "mixins": names}
                return
            wl = await self._workload(session, kind.term, entity_id)
            current = mixins_of(wl.spec)
            added = [m for m in self._resolve_categories(reg, kind, req.categories)
                     if m.type_id not in {c.type_id for c in current}]
            for m in added:
                if not m.user and m not in (infra.IPNETWORK, infra.IPNETWORKINTERFACE):
                    raise Conflict(f"mixin {m.type_id} is fixed when the {kind.term} is created (it chooses the "
                                   f"image, shape, site or what is injected at boot); create a new {kind.term} instead")
            fields = self._check_attributes(kind, current + added, req.attributes, creating=False,
                                            entity_id=entity_id)
            shape = {k: int(fields[k]) for k in ("vcpus", "ram_mib") if k in fields and fields[k] != wl.spec.get(k)}
            if shape:  # a resize is an operation of its own: it records the new shape once the VM has it
                others = {k: v for k, v in fields.items() if k not in shape and v != wl.spec.get(k)}
                if added or (others.keys() - {"name"}) or others.get("name", wl.name) != wl.name:
                    raise Conflict("change occi.compute.cores or occi.compute.memory alone: a resize runs as an "
                                   "operation of its own; send the other changes in another request")
                if self.engine is None:
                    raise Conflict("resizing a compute needs the broker's operations engine")
                resize = (wl.id, shape.get("vcpus", int(wl.spec.get("vcpus") or 1)),
                          shape.get("ram_mib", int(wl.spec.get("ram_mib") or 512)))
            else:
                if "name" in fields:
                    wl.name = fields.pop("name")
                wl.spec = {**wl.spec, **fields, "mixins": [m.type_id for m in current + added]}
                wl.version += 1
                wl.updated_at = utcnow()
        if resize is not None:
            assert self.engine is not None
            await flows.resize(self.engine, resize[0], vcpus=resize[1], ram_mib=resize[2])

    # -- actions -----------------------------------------------------------------------------------------

    async def act(self, kind: Kind, entity_id: str, term: str, req: OcciRequest) -> None:
        self.ident.require_write()
        action = next((a for a in kind.actions if a.term == term), None)
        if action is None:
            raise ValidationError(f"{kind.term} has no action {term!r}; it has "
                                  f"{', '.join(a.term for a in kind.actions) or 'none'}")
        for cat in req.categories:
            if cat.type_id != action.type_id:
                raise ValidationError(f"the body names {cat.type_id} but the URL asks for {action.type_id}")
        for name, value in req.attributes.items():
            attr = action.attribute(name)
            if attr is None:
                raise ValidationError(f"unknown attribute {name} for action {term}; it takes "
                                      f"{', '.join(a.name for a in action.attributes) or 'none'}")
            attr.check(value)
        if kind is infra.COMPUTE:
            await self._act_compute(entity_id, term, req.attributes)
            return
        async with session_scope(self.maker) as session:
            row = await self._workload(session, kind.term, entity_id)
            _applicable(row, term)
            row.observed_state = {"up": "active", "down": "inactive", "online": "online", "offline": "offline"}[term]
            row.state_message = None
            row.version += 1
            row.updated_at = utcnow()

    async def _act_compute(self, entity_id: str, term: str, attributes: dict[str, Any]) -> None:
        """Submit the engine's power flow and answer at once (the rendering shows its progress); an action
        asked while another operation (e.g. the create) runs is planned behind it."""
        async with session_scope(self.maker) as session:
            await lock_row(session, Workload, entity_id.lower())  # first: the engine writes the row too
            wl = await self._workload(session, "compute", entity_id)
            busy = bool(await running_operations(session, [wl.id]))
            _applicable(wl, term, busy)
            if self.engine is None or not await workloads.engine_can_run(session, wl):
                raise Conflict(f"compute {entity_id} runs nowhere (it is {wl.observed_state})")
            if term != "save":
                await workloads.mark_action(session, wl, term)
        if term == "save":  # the disk becomes a marketplace image of the project
            await flows.save(self.engine, wl.id, name=attributes.get("name"))
        else:
            await flows.power(self.engine, wl.id, term)

    # -- deleting ----------------------------------------------------------------------------------------

    async def delete(self, kind: Kind, entity_id: str) -> None:
        """Links, networks and storage go through the engine's detach and delete plans (their rows go once
        the provider let go of them); a compute's VM is deleted by the engine's delete flow (planned behind
        a create still running), and the compute is gone for OCCI from now on. Without an engine, or for
        what never reached a provider, only the rows go."""
        self.ident.require_write()
        if kind in infra.LINK_KINDS:
            async with session_scope(self.maker) as session:
                link = await self._link(session, kind.term, entity_id)
                if self.engine is None:
                    await session.delete(link)
                    return
                link.attributes = {**link.attributes, "state": "inactive", "state_message": "detaching"}
            await flows.detach(self.engine, entity_id)  # the row goes once the provider detached it
            return
        if kind is not infra.COMPUTE:
            async with self.maker() as session:
                wl = await self._workload(session, kind.term, entity_id)
            if self.engine is not None:
                if wl.observed_state == "pending":
                    raise Conflict(f"{kind.term} {entity_id} is still being created; delete it once that ends")
                if wl.provider_resource_id:
                    await flows.delete(self.engine, wl.id, purge=True)  # the entity goes once the provider deleted it
                    return
            await self._purge(wl.id)
            return
        run_flow = False
        async with session_scope(self.maker) as session:
            await lock_row(session, Workload, entity_id.lower())  # first: the engine writes the row too
            wl = await self._workload(session, kind.term, entity_id)
            await session.exec(sa_delete(WorkloadLink).where(or_(WorkloadLink.source_id == wl.id,
                                                                    WorkloadLink.target_id == wl.id)))
            if self.engine is not None and await workloads.engine_can_run(session, wl):
                await workloads.mark_delete(session, wl)
                run_flow = True
            else:  # never reached a provider (rolled back, cancelled, or no engine): nothing to remove
                await quotas.release(session, wl.id)
                await workloads.update_fields(session, wl, wl.version, {
                    "desired_state": "deleted", "observed_state": "deleted", "present": False})
        if run_flow:
            assert self.engine is not None
            await flows.delete(self.engine, wl.id)

    async def delete_all(self, kind: Kind) -> int:
        entities = await self.collection(kind)
        for entity in entities:
            await self.delete(kind, entity.id)
        return len(entities)

    # -- mixins: association and user mixins ------------------------------------------------------------

    async def _entity_rows(self, session: AsyncSession, locations: list[str]) -> list[Workload | WorkloadLink]:
        rows: list[Workload | WorkloadLink] = []
        for loc in locations:
            match = ENTITY_PATH.match(loc)
            if not match:
                raise ValidationError(f"{loc!r} is not the location of an entity")
            term, entity_id = match.group(1), match.group(2).lower()
            if term in ("networkinterface", "storagelink"):
                rows.append(await self._link(session, term, entity_id))
            else:
                rows.append(await self._workload(session, term, entity_id))
        return rows

    async def associate(self, mixin: Mixin, locations: list[str], *, replace: bool = False) -> None:
        """POST (add) or PUT (replace the collection) on a mixin's location; only user mixins are tags."""
        self.ident.require_write()
        if not mixin.user:
            raise Conflict(f"mixin {mixin.type_id} is chosen when an entity is created; only user-defined "
                           f"mixins can be associated afterwards")
        async with session_scope(self.maker) as session:
            wanted = await self._entity_rows(session, locations)
            for row in wanted:
                kind = KINDS[row.kind]
                if mixin.applies and kind.type_id not in mixin.applies:
                    raise ValidationError(f"mixin {mixin.type_id} does not apply to {kind.term}")
                _tag(row, mixin.type_id, add=True)
            if replace:
                keep = {r.id for r in wanted}
                for row in await self._members(session, mixin):
                    if row.id not in keep:
                        _tag(row, mixin.type_id, add=False)

    async def dissociate(self, mixin: Mixin, locations: list[str]) -> None:
        """DELETE on a mixin's location: the listed entities (or all, without a body) lose the mixin."""
        self.ident.require_write()
        if not mixin.user:
            raise Conflict(f"mixin {mixin.type_id} cannot be removed from a running entity")
        async with session_scope(self.maker) as session:
            rows = await self._entity_rows(session, locations) if locations else await self._members(session, mixin)
            for row in rows:
                _tag(row, mixin.type_id, add=False)

    async def _members(self, session: AsyncSession, mixin: Mixin) -> list[Workload | WorkloadLink]:
        wls = (await session.exec(select(Workload).where(Workload.project_id == self.ident.project_id))).all()
        lks = (await session.exec(select(WorkloadLink).where(WorkloadLink.project_id == self.ident.project_id))).all()
        return [w for w in wls if mixin.type_id in w.spec.get("mixins", [])] + \
            [lk for lk in lks if mixin.type_id in lk.attributes.get("mixins", [])]

    async def define_mixins(self, cats: list[CategoryRef]) -> None:
        """POST /-/: user-defined mixins (tags) with a client-chosen location under the project."""
        self.ident.require_write()
        if not cats:
            raise ValidationError("send at least one mixin category (with class=\"mixin\" and a location)")
        async with self.maker() as session:
            reg = await registry(session, self.ident.project_id)
        async with session_scope(self.maker) as session:
            for cat in cats:
                if cat.cls and cat.cls != "mixin":
                    raise ValidationError(f"only mixins can be defined; {cat.type_id} is a {cat.cls}")
                check_term(cat.term)
                location = cat.location or f"/mixins/user/{cat.term}/"
                if not re.fullmatch(r"/[A-Za-z0-9\-_./]{1,200}/", location) or ".." in location or "//" in location:
                    raise ValidationError(f"mixin location {location!r} must be a path like /my_tags/ending in '/'")
                if location.startswith(RESERVED_PATHS) and not location.startswith("/mixins/user/"):
                    raise ValidationError(f"mixin location {location} is inside a path the server owns; "
                                          f"choose another (e.g. /tags/{cat.term}/)")
                if reg.mixin(cat.type_id) is not None:
                    raise Conflict(f"mixin {cat.type_id} already exists")
                if reg.by_location(location) is not None or location.rstrip("/") in ("/mixins", "/mixins/user"):
                    raise Conflict(f"location {location} is already taken")
                if cat.scheme.startswith(("http://schemas.ogf.org/", infra.METAVMM)):
                    raise ValidationError(f"scheme {cat.scheme} is reserved for OGF and metavmm categories")
                for dep in cat.rel:
                    if reg.mixin(dep) is None:
                        raise ValidationError(f"mixin {cat.type_id} depends on unknown mixin {dep}")
                row = OcciMixin(project_id=self.ident.project_id, scheme=cat.scheme, term=cat.term,
                                title=cat.title or "", location=location, depends=list(cat.rel),
                                applies=list(cat.applies))
                session.add(row)
                reg.mixins.append(user_mixin(row))

    async def delete_mixins(self, cats: list[CategoryRef]) -> None:
        """DELETE /-/: remove user-defined mixins and their associations."""
        self.ident.require_write()
        if not cats:
            raise ValidationError("name the mixin to delete in a Category")
        async with session_scope(self.maker) as session:
            for cat in cats:
                row = (await session.exec(select(OcciMixin).where(
                    OcciMixin.project_id == self.ident.project_id, OcciMixin.scheme == cat.scheme,
                    OcciMixin.term == cat.term))).first()
                if row is None:
                    if cat.type_id in STATIC_BY_ID or cat.scheme.startswith(infra.METAVMM):
                        raise Forbidden(f"mixin {cat.type_id} is not user-defined and cannot be deleted")
                    raise NotFound(f"no user mixin {cat.type_id} in project {self.ident.project}")
                for member in await self._members(session, user_mixin(row)):
                    _tag(member, cat.type_id, add=False)
                await session.delete(row)


def shown(row: Workload) -> bool:
    """The row-level twin of SHOWN."""
    return row.desired_state != "deleted" or row.observed_state in ("rolled_back", "cancelled")


def _applicable(row: Workload, term: str, busy: bool = False) -> None:
    applicable = applicable_actions(row, busy)
    if term not in applicable:
        raise Conflict(f"action {term} is not applicable: {row.kind} {row.id} is {intended_state(row, busy)} "
                       f"(applicable now: {', '.join(applicable) or 'none'})")


def _tag(row: Workload | WorkloadLink, type_id: str, *, add: bool) -> None:
    data = dict(row.spec if isinstance(row, Workload) else row.attributes)
    names = [n for n in data.get("mixins", []) if n != type_id] + ([type_id] if add else [])
    data["mixins"] = names
    if isinstance(row, Workload):
        row.spec = data
        row.version += 1
    else:
        row.attributes = data


def is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False
