"""The bridge from OCCI to the catalog and the broker's services: OCCI is a view, not a second model.

Every entity is a catalog row (``Workload`` for resources, ``WorkloadLink`` for links); every mixin
comes from the catalog (images as os_tpl, flavors as resource_tpl, sites and zones as placement
mixins, ``OcciMixin`` rows as user mixins) or is a standard one declared in
:mod:`metavmm.api.occi.infrastructure`. Which mixins an entity carries is ``spec["mixins"]``.

Identity: :func:`occi_identity` is the only place that reads who is asking; every query and mutation
below takes its result, so project scoping cannot be forgotten on one path.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from sqlalchemy import or_, tuple_
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import aliased
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.api import keys
from metavmm.api.occi import infrastructure as infra
from metavmm.api.occi.catalog_view import (
    KINDS,
    STATIC_BY_ID,
    Registry,
    declared,
    exports,
    link_entity,
    links_of,
    mixins_of,
    occi_state,
    os_tpl_of,
    registry,
    resource_entity,
    running_operations,
    user_mixin,
)
from metavmm.api.occi.model import Entity, Kind, Mixin, check_term
from metavmm.api.occi.parse import CategoryRef, LinkRef, OcciRequest
from metavmm.catalog.changes import TtlCache
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import (
    OcciMixin,
    Provider,
    Role,
    Site,
    Workload,
    WorkloadLink,
)
from metavmm.foundation.errors import (
    Conflict,
    Forbidden,
    MetavmmError,
    NotFound,
    Unauthenticated,
    ValidationError,
)
from metavmm.services.identity import Identity
from metavmm.services.protection.ha import HaService
from metavmm.services.workloads.requests import CreateRequest, LinkSpec
from metavmm.services.workloads.service import WorkloadService, is_uuid, storage_gib

ENTITY_PATH = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.\-]*://[^/]+)?/(compute|network|storage|networkinterface|"
                         r"storagelink)/([0-9a-fA-F\-]{36})/?$")
DEFAULT_SHAPE = {"vcpus": 1, "ram_mib": 512}
_LINK_TARGET = aliased(Workload)  # built once: an alias re-proxies every column when it is made
# a compute whose deletion was asked is gone for OCCI; a create that never produced a VM stays, in error,
# until its owner deletes it
SHOWN = or_(Workload.desired_state != "deleted", Workload.observed_state.in_(("rolled_back", "cancelled")))  # type: ignore[attr-defined]
RESOURCE_TERMS = ("compute", "network", "storage")
"""The kinds kept as workload rows (the link kinds are workload link rows)."""
RESERVED_PATHS = ("/-/", "/api/", "/ui/", "/.well-known/", "/mixins/", *(k.location or "/-/" for k in infra.KINDS))


# --- the service ----------------------------------------------------------------------------------------


class OcciService:
    """OCCI as a view: renderings read the catalog scoped to the caller's project; every change is a call
    to the workload service (the same rules as REST and the CLI). Mixin resolution, attribute checks and
    user mixins (tags) are OCCI's own."""

    def __init__(self, maker: async_sessionmaker[AsyncSession], workloads: WorkloadService, ident: Identity, *,
                 idempotency_key: str | None = None, default_image: str | None = None,
                 registries: TtlCache[Registry] | None = None) -> None:
        self.maker = maker
        self.registries = registries  # the project's categories, while none of REGISTRY_TABLES changed
        self.workloads = workloads
        self.ident = ident
        self.idempotency_key = idempotency_key  # the same header REST honours
        self.default_image = default_image  # the federation's os_tpl for a compute that names none

    @classmethod
    async def for_request(cls, request: web.Request) -> OcciService:
        ident = request.get(keys.IDENTITY)
        if ident is None:  # only a route the auth middleware did not cover could get here
            raise Unauthenticated("authentication required: send your API token as the Basic password")
        default = getattr(request.app[keys.CONFIG].federation, "default_image", None)
        return cls(request.app[keys.SESSIONS], request.app[keys.WORKLOADS], ident,
                   idempotency_key=request.headers.get("Idempotency-Key"), default_image=default,
                   registries=request.app.get(keys.OCCI_REGISTRIES))

    def require_write(self) -> None:
        if not self.ident.at_least(Role.MEMBER):
            raise Forbidden(f"user {self.ident.user} has the {self.ident.role} role in project "
                            f"{self.ident.project}: read-only")

    # -- reading ---------------------------------------------------------------------------------------

    async def registry(self) -> Registry:
        """The categories the project sees; read, not changed (define_mixins reads its own copy)."""
        cache, project = self.registries, self.ident.project_id

        async def read() -> tuple[Registry, None]:
            async with self.maker() as session:
                return await registry(session, project), None

        reg = await cache.read_through(project, read) if cache is not None else (await read())[0]
        assert reg is not None
        return reg

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
                select(Workload, WorkloadLink, target.kind, Provider.name, Provider.kind)
                .outerjoin(WorkloadLink, WorkloadLink.source_id == Workload.id)
                .outerjoin(target, WorkloadLink.target_id == target.id)
                .outerjoin(Provider, Workload.provider_id == Provider.id)
                .where(Workload.id == entity_id.lower(), Workload.kind == kind.term,
                       Workload.project_id == self.ident.project_id, SHOWN)
                .order_by(WorkloadLink.id))).all() if is_uuid(entity_id) else []
            if not rows:
                raise NotFound(f"no {kind.term} {entity_id} in project {self.ident.project}")
            wl, provider, provider_kind = rows[0][0], rows[0][3], rows[0][4]
            state = occi_state(wl)
            links = [link_entity(lk, wl.kind, tk, state) for _, lk, tk, _, _ in rows if lk is not None]
            return resource_entity(wl, links, running.get(wl.id) if wl.kind == "compute" else None,
                                   saveable=exports(provider, provider_kind, self.workloads.config))

    async def collection(self, kind: Kind | None = None, mixin: Mixin | None = None, *,
                         window: tuple[int, int] | None = None, after: str | None = None,
                         title: str | None = None) -> list[Entity]:
        """Entities of ``kind`` (or of every kind) in the project, optionally only those carrying ``mixin``;
        ``window`` (offset, limit; with ``kind`` and no ``mixin``): only those rows are read and built, ``after``
        and ``title`` as in :meth:`locations` (a JSON page is the same range of rows as a location listing's)."""
        terms = [kind.term] if kind else list(KINDS)
        paged = window is not None and kind is not None and mixin is None
        offset, limit = window if paged and window is not None else (None, None)
        async with self.maker() as session:
            out: list[Entity] = []
            resource_terms = [t for t in terms if t in RESOURCE_TERMS]
            if resource_terms:
                running = await running_operations(session, project_id=self.ident.project_id)  # before the rows
                stmt = select(Workload, Provider.name, Provider.kind) \
                    .outerjoin(Provider, Workload.provider_id == Provider.id).where(
                        Workload.project_id == self.ident.project_id, Workload.kind.in_(resource_terms), SHOWN) \
                    .order_by(Workload.created_at, Workload.id)
                if title is not None:
                    stmt = stmt.where(Workload.name == title)
                if paged:
                    stmt, offset = await self._keyset(session, stmt, resource_terms[0], offset, after)
                found = (await session.exec(stmt.offset(offset).limit(limit))).all()
                if mixin is not None:
                    found = [f for f in found if mixin.type_id in f[0].spec.get("mixins", [])]
                rows = [w for w, _, _ in found]
                links = await links_of(session, rows)
                out += [resource_entity(w, links[w.id], running.get(w.id) if w.kind == "compute" else None,
                                        saveable=exports(name, provider_kind, self.workloads.config))
                        for w, name, provider_kind in found]
            link_terms = [t for t in terms if t in ("networkinterface", "storagelink")]
            link_ids = {infra.NETWORKINTERFACE.type_id, infra.STORAGELINK.type_id}
            if link_terms and (mixin is None or not mixin.applies or set(mixin.applies) & link_ids):
                stmt_l = select(WorkloadLink).where(
                    WorkloadLink.project_id == self.ident.project_id, WorkloadLink.kind.in_(link_terms)) \
                    .order_by(WorkloadLink.id)
                if paged:
                    stmt_l, offset = await self._keyset(session, stmt_l, link_terms[0], offset, after)
                rows_l = (await session.exec(stmt_l.offset(offset).limit(limit))).all()
                ends = {w.id: w for w in (await session.exec(select(Workload).where(Workload.id.in_(
                    [r.source_id for r in rows_l] + [r.target_id for r in rows_l])))).all()}
                for r in rows_l:
                    if mixin is None or mixin.type_id in r.attributes.get("mixins", []):
                        src, tgt = ends[r.source_id], ends[r.target_id]
                        out.append(link_entity(r, src.kind, tgt.kind, occi_state(src)))
            return out

    async def locations(self, kind: Kind, offset: int, limit: int, after: str | None = None,
                        title: str | None = None) -> list[str]:
        """The locations of ``limit`` entities of ``kind``'s collection from ``offset``, in :meth:`collection`'s
        order, read as ids alone (issue 16 item 14): a location listing (the text renderings, text/uri-list)
        of one page of a 10,000-entity collection builds no entity and reads no other row. ``after``: see
        :meth:`_keyset`; ``title`` (resource kinds): only the entities with that ``occi.core.title``, in SQL."""
        async with self.maker() as session:
            if kind.term in RESOURCE_TERMS:
                stmt = select(Workload.id).where(Workload.project_id == self.ident.project_id,  # type: ignore[call-overload]
                                                 Workload.kind == kind.term, SHOWN) \
                    .order_by(Workload.created_at, Workload.id)
                if title is not None:
                    stmt = stmt.where(Workload.name == title)
            else:
                stmt = select(WorkloadLink.id).where(WorkloadLink.project_id == self.ident.project_id,  # type: ignore[call-overload]
                                                     WorkloadLink.kind == kind.term).order_by(WorkloadLink.id)
            stmt, offset = await self._keyset(session, stmt, kind.term, offset, after)
            ids = (await session.exec(stmt.offset(offset).limit(limit))).all()
        return [f"{kind.location}{entity_id}" for entity_id in ids]

    async def _keyset(self, session: AsyncSession, stmt: Any, term: str, offset: int | None,
                      after: str | None) -> tuple[Any, int | None]:
        """Keyset paging of a collection statement in :meth:`collection`'s order (workloads by created_at and
        id, links by id), for every rendering: ``after``, the id the previous page ended with, when it is still
        a row of the project, starts the page after it instead of ``offset`` (a range of ix_workload_listing,
        however deep the page; the next-page links carry it). A delete on an earlier page between two requests
        then skips nothing (an offset would); an unknown id, or another project's, leaves ``offset``."""
        if after is None:
            return stmt, offset
        if term in RESOURCE_TERMS:
            mark = (await session.exec(select(Workload.created_at).where(
                Workload.id == after, Workload.project_id == self.ident.project_id))).first()
            if mark is None:
                return stmt, offset
            return stmt.where(tuple_(Workload.created_at, Workload.id) > tuple_(mark, after)), 0
        return stmt.where(WorkloadLink.id > after), 0

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
                          entity_id: str | None = None, typed: bool = False,
                          current: dict[str, Any] | None = None) -> dict[str, Any]:
        """Field values for ``given`` attributes; every unknown, immutable or bad value is a 400.

        ``current``: the entity's rendering when it exists; an immutable attribute carrying the value the
        broker renders is accepted (and ignored), so a client may send back what it read (GFD.223 PUT)."""
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
            value = attr.check(value, typed=typed)
            if not attr.mutable and not (creating and attr.field):
                if current is not None and _same(current.get(name), value):
                    continue  # sent back unchanged
                raise ValidationError(f"attribute {name} is immutable"
                                      + (f" (it is {current[name]!r})" if current and name in current else ""))
            if attr.field:
                out[attr.field] = attr.from_occi(value) if attr.from_occi else value
        if creating:
            for attr in known.values():
                if attr.required and attr.name not in given and attr.default is None and attr.field:
                    raise ValidationError(f"missing required attribute {attr.name} for {kind.term}")
        return out

    @staticmethod
    def _defaults(kind: Kind, mixins: list[Mixin], given: dict[str, Any], entity_id: str) -> dict[str, Any]:
        """PUT replaces (GFD.223): every mutable attribute the request leaves out goes back to its default
        (a template's value, the server's default shape, the default title), or away when it has none; a
        required one cannot be left out."""
        attrs = declared(kind, mixins)
        out: dict[str, Any] = {}
        for attr in attrs:
            if not attr.mutable or not attr.field or attr.name in given or attr.field in out:
                continue
            if attr.required:
                raise ValidationError(f"missing required attribute {attr.name}: PUT carries the full rendering")
            default = next((a.default for a in attrs if a.name == attr.name and a.default is not None), None)
            if default is not None:
                out[attr.field] = attr.from_occi(default) if attr.from_occi else default
            elif attr.field in DEFAULT_SHAPE:
                out[attr.field] = DEFAULT_SHAPE[attr.field]
            elif attr.field == "name":
                out["name"] = f"{kind.term}-{entity_id[:8]}"
            else:
                out[attr.field] = None
        return out

    # -- creating ----------------------------------------------------------------------------------------

    async def create(self, kind: Kind, req: OcciRequest, entity_id: str | None = None) -> str:
        """Create a resource or link from a parsed rendering through the workload service; its location."""
        if kind in infra.LINK_KINDS:
            return await self._create_link(kind, req, entity_id)
        reg = await self.registry()
        mixins = [m for m in self._resolve_categories(reg, kind, req.categories) if m is not infra.PLACED]
        fields = self._check_attributes(kind, mixins, req.attributes, creating=True, entity_id=entity_id,
                                        typed=req.typed)
        spec: dict[str, Any] = {k: v for k, v in fields.items() if k != "name"}
        spec["mixins"] = [m.type_id for m in mixins]
        site, zone = self._pinned_site(reg, mixins)
        links = tuple([await self._link_spec(reg, ref, typed=req.typed) for ref in req.links])
        common = {"kind": kind.term, "name": fields.get("name"), "workload_id": entity_id,
                  "site": site.name if site else None, "zone": zone, "links": links}
        if kind is infra.COMPUTE:
            request = self._compute_request(reg, mixins, spec, common)
        elif kind is infra.STORAGE:
            request = CreateRequest(**common, disk_gib=storage_gib(spec.get("size_gib")), attributes=spec)
        else:
            request = CreateRequest(**common, cidr=spec.get("address"), attributes=spec)
        done = await self.workloads.create(self.ident, request, idempotency_key=self.idempotency_key)
        if infra.HA in mixins:
            await self._ha().protect(self.ident, done.workload.id)
        return f"{kind.location}{done.workload.id}"

    def _ha(self) -> HaService:
        w = self.workloads
        return HaService(w.sessions, w.config, w.engine, w.placer)

    async def _ha_members(self, locations: list[str], *, on: bool) -> None:
        """The ``ha`` mixin associated (or dissociated): the HA service marks each compute (and keeps the tag)."""
        async with self.maker() as session:
            rows = await self._entity_rows(session, locations)
        for row in rows:
            if not isinstance(row, Workload) or row.kind != infra.COMPUTE.term:
                raise ValidationError(f"mixin {infra.HA.type_id} applies to computes")
        for row in rows:
            if on:
                await self._ha().protect(self.ident, row.id)
            else:
                await self._ha().unprotect(self.ident, row.id)

    @staticmethod
    def _pinned_site(reg: Registry, mixins: list[Mixin]) -> tuple[Site | None, str | None]:
        pinned = [reg.sites[m.type_id] for m in mixins if m.type_id in reg.sites]
        if len(pinned) > 1:
            raise ValidationError("give at most one site mixin: a resource runs at one site")
        return pinned[0] if pinned else (None, None)

    def _compute_request(self, reg: Registry, mixins: list[Mixin], spec: dict[str, Any],
                         common: dict[str, Any]) -> CreateRequest:
        """os_tpl -> image (else the federation's default image), resource_tpl -> flavor (its size wins,
        GFD.224), the broker mixin -> allowed providers and a price ceiling; cores and memory default to
        1 and 0.5 GiB (a server default GFD.224 allows)."""
        images = [reg.images[m.type_id] for m in mixins if m.type_id in reg.images]
        flavors = [reg.flavors[m.type_id] for m in mixins if m.type_id in reg.flavors]
        if len(images) > 1:
            raise ValidationError("give only one os_tpl mixin")
        if len(flavors) > 1:
            raise ValidationError("give at most one resource_tpl mixin")
        image = images[0] if images else None
        if image is None and not self.default_image:
            raise ValidationError("a compute needs an os_tpl mixin (the image); GET /mixins/os_tpl/ lists them")
        flavor = flavors[0] if flavors else None
        if flavor is not None:
            spec["vcpus"], spec["ram_mib"] = flavor.vcpus, flavor.ram_mib
        for key, value in DEFAULT_SHAPE.items():
            spec.setdefault(key, value)
        if image is not None:
            arch = {"x86_64": "x64", "i686": "x86", "i386": "x86"}.get(image.arch)
            if arch and spec.setdefault("architecture", arch) != arch:
                raise ValidationError(f"occi.compute.architecture {spec['architecture']} does not match the "
                                      f"os_tpl's image ({image.arch})")
        allowed = tuple(p for p in str(spec.get("allowed_providers") or "").split(",") if p)
        price = spec.get("max_price_per_hour")
        return CreateRequest(**common, flavor=flavor.name if flavor else None,
                             vcpus=None if flavor else int(spec["vcpus"]),
                             ram_mib=None if flavor else int(spec["ram_mib"]),
                             image=image.id if image else self.default_image, providers=allowed,
                             max_price_per_hour=float(price) if price is not None else None,
                             ssh_key=spec.get("ssh_key"), user_data=spec.get("user_data"), attributes=spec)

    async def _link_spec(self, reg: Registry, ref: LinkRef, link_id: str | None = None, *,
                         typed: bool = False) -> LinkSpec:
        """An OCCI link rendering as the service's LinkSpec (its target's kind decides which link it is)."""
        match = ENTITY_PATH.match(ref.target)
        if not match or match.group(1) not in ("network", "storage", "compute"):
            raise ValidationError(f"link target {ref.target!r} is not the location of a network or storage")
        target_kind = KINDS[match.group(1)]
        kind = {"network": infra.NETWORKINTERFACE, "storage": infra.STORAGELINK}.get(target_kind.term)
        if kind is None:
            raise ValidationError("a link goes from a compute to a network or storage, not to a compute")
        if ref.rel and target_kind.type_id not in ref.rel:
            raise ValidationError(f"link to {ref.target}: rel {' '.join(ref.rel)} is not the target's kind "
                                  f"{target_kind.type_id}")
        cats = [CategoryRef(term=t.rpartition("#")[2], scheme=t.rpartition("#")[0] + "#") for t in ref.categories]
        mixins = self._resolve_categories(reg, kind, cats)
        fields = self._check_attributes(kind, mixins, ref.attributes, creating=True, typed=typed)
        device = fields.pop("interface", None) or fields.pop("deviceid", None)
        mac = fields.pop("mac", None)
        return LinkSpec(target_id=match.group(2).lower(), mac=mac, device=device,
                        attributes={**fields, "mixins": [m.type_id for m in mixins]}, link_id=link_id)

    async def _create_link(self, kind: Kind, req: OcciRequest, link_id: str | None) -> str:
        source = req.attributes.get("occi.core.source")
        target = req.attributes.get("occi.core.target") or (req.links[0].target if req.links else None)
        if not isinstance(source, str) or not isinstance(target, str):
            raise ValidationError(f"a {kind.term} needs occi.core.source and occi.core.target")
        match = ENTITY_PATH.match(source)
        if not match or match.group(1) != "compute":
            raise ValidationError(f"link source {source!r} is not the location of a compute")
        async with self.maker() as session:
            reg = await registry(session, self.ident.project_id)
        mixin_ids = tuple(c.type_id for c in req.categories if c.type_id != kind.type_id)
        attrs = {k: v for k, v in req.attributes.items() if not k.startswith("occi.core.")}
        spec = await self._link_spec(reg, LinkRef(target=target, categories=mixin_ids, attributes=attrs), link_id,
                                     typed=req.typed)
        wanted = infra.NETWORKINTERFACE if spec.mac is not None or "/network/" in target else infra.STORAGELINK
        if wanted is not kind:
            raise ValidationError(f"a link to {target} is a {wanted.term}, not a {kind.term}")
        link, _ = await self.workloads.link(self.ident, match.group(2).lower(), spec,
                                            idempotency_key=self.idempotency_key)
        return f"{kind.location}{link.id}"

    # -- updating ----------------------------------------------------------------------------------------

    async def update(self, kind: Kind, entity_id: str, req: OcciRequest, *, replace: bool = False) -> None:
        """Partial update (POST) or replacement (PUT on an existing entity, GFD.223): mutable attributes and
        user mixins. A replacement resets what it leaves out (mutable attributes to their defaults, user
        mixins dropped); the mixins fixed at creation stay. Immutable attributes may be sent back unchanged.
        New cores or memory for a compute are a resize (an operation of its own, so nothing else may change
        in the same request and a refused resize leaves the entity as it was)."""
        if not replace and not req.categories and not req.attributes:
            raise ValidationError(f"send the {kind.term}'s kind or mixins and the attributes to change; "
                                  "this request changes nothing")
        shown_now = await self.get(kind, entity_id)
        async with self.maker() as session:
            reg = await registry(session, self.ident.project_id)
            if kind in infra.LINK_KINDS:
                row_l = await self._link(session, kind.term, entity_id)
                current = mixins_of(row_l.attributes)
            else:
                wl = await self._workload(session, kind.term, entity_id)
                current = mixins_of(wl.spec)
        current = [reg.mixin(m.type_id) or m for m in current]  # with their attributes (a template's defaults)
        ids = {c.type_id for c in current} | {m.type_id for m in shown_now.mixins}  # broker#placed included
        asked = self._resolve_categories(reg, kind, req.categories)
        added = [m for m in asked if m.type_id not in ids]
        for m in added:
            if not m.user and m not in (infra.IPNETWORK, infra.IPNETWORKINTERFACE):
                raise Conflict(f"mixin {m.type_id} is fixed when the {kind.term} is created (it chooses the "
                               f"image, shape, site or what is injected at boot); create a new {kind.term} instead")
        if replace:  # user mixins are what the request names; the fixed ones stay
            asked_ids = {m.type_id for m in asked}
            kept = [m for m in current if not m.user or m.type_id in asked_ids]
            removed = [m for m in current if m not in kept]
        else:
            kept, removed = current, []
        declared_mixins = kept + added + ([infra.PLACED] if infra.PLACED in shown_now.mixins else [])
        fields = self._check_attributes(kind, declared_mixins, req.attributes, creating=False, entity_id=entity_id,
                                        typed=req.typed, current=shown_now.attributes)
        if replace:
            defaults = self._defaults(kind, kept + added, req.attributes, entity_id)
            if kind is infra.COMPUTE and wl.spec.get("image_id"):
                defaults.pop("architecture", None)  # the image decided it
            fields.update(defaults)
        names = [m.type_id for m in kept + added]
        if kind in infra.LINK_KINDS:
            async with session_scope(self.maker) as session:
                row_l = await self._link(session, kind.term, entity_id)
                row_l.attributes = {**row_l.attributes, **fields, "mixins": names}
            return
        shape = {k: int(fields[k]) for k in ("vcpus", "ram_mib") if k in fields and fields[k] != wl.spec.get(k)}
        if shape:
            others = {k: v for k, v in fields.items() if k not in shape and v != wl.spec.get(k)}
            if added or removed or (others.keys() - {"name"}) or others.get("name", wl.name) != wl.name:
                raise Conflict("change occi.compute.cores or occi.compute.memory alone: a resize runs as an "
                               "operation of its own; send the other changes in another request")
            await self.workloads.resize(self.ident, wl.id, vcpus=shape.get("vcpus", int(wl.spec.get("vcpus") or 1)),
                                        ram_mib=shape.get("ram_mib", int(wl.spec.get("ram_mib") or 512)),
                                        idempotency_key=self.idempotency_key)
            return
        name = fields.pop("name", None)
        await self.workloads.update(self.ident, wl.id, name=name, attributes={**fields, "mixins": names})

    # -- actions -----------------------------------------------------------------------------------------

    async def act(self, kind: Kind, entity_id: str, term: str, req: OcciRequest) -> Mixin | None:
        """Run ``term`` on the entity; for ``save`` the os_tpl mixin the export is making (GFD.224: the
        answer to a save is the new OS template), else None."""
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
            attr.check(value, typed=req.typed)
        async with self.maker() as session:
            wl = await self._workload(session, kind.term, entity_id)
        if kind is not infra.COMPUTE:
            await self.workloads.set_resource_state(self.ident, wl.id, term)
            return None
        op = await self.workloads.act(self.ident, wl.id, term, idempotency_key=self.idempotency_key,
                                      image_name=req.attributes.get("name"))
        params = op.params or {}
        if term == "save" and params.get("image_id") and params.get("image_name"):
            return os_tpl_of(str(params["image_name"]), str(params["image_id"]))
        return None

    # -- deleting ----------------------------------------------------------------------------------------

    async def delete(self, kind: Kind, entity_id: str) -> None:
        """Links are detached and networks, storage and computes deleted by the engine (through the
        workload service); the entity is gone for OCCI from the moment its deletion is accepted."""
        async with self.maker() as session:
            if kind in infra.LINK_KINDS:
                link = await self._link(session, kind.term, entity_id)
            else:
                try:
                    wl = await self._workload(session, kind.term, entity_id)
                except NotFound:
                    if not await self._replayed_delete(kind, entity_id):
                        raise
                    return
        if kind in infra.LINK_KINDS:
            await self.workloads.unlink(self.ident, link.id)
        else:
            await self.workloads.delete(self.ident, wl.id, idempotency_key=self.idempotency_key)

    async def _replayed_delete(self, kind: Kind, entity_id: str) -> bool:
        """A DELETE retried with its Idempotency-Key after the entity left OCCI's collection: the first
        answer again (nothing is planned twice). Anything else stays the 404 the entity's absence is."""
        if not self.idempotency_key:
            return False
        try:
            row = await self.workloads.get(self.ident, entity_id)
            if row.kind != kind.term:
                return False
            op = await self.workloads.delete(self.ident, row.id, idempotency_key=self.idempotency_key)
        except MetavmmError:
            return False
        return op.kind == "delete"

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
        self.require_write()
        if mixin is infra.HA and not replace:
            return await self._ha_members(locations, on=True)
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
        self.require_write()
        if mixin is infra.HA and locations:
            return await self._ha_members(locations, on=False)
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
        self.require_write()
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
        self.require_write()
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


def _same(rendered: Any, sent: Any) -> bool:
    """The value the broker renders and the one a client sent back are the same (numbers by value)."""
    if isinstance(rendered, int | float) and isinstance(sent, int | float) and not isinstance(sent, bool):
        return float(rendered) == float(sent)
    return rendered is not None and str(rendered) == str(sent)


def shown(row: Workload) -> bool:
    """The row-level twin of SHOWN."""
    return row.desired_state != "deleted" or row.observed_state in ("rolled_back", "cancelled")


def _tag(row: Workload | WorkloadLink, type_id: str, *, add: bool) -> None:
    data = dict(row.spec if isinstance(row, Workload) else row.attributes)
    names = [n for n in data.get("mixins", []) if n != type_id] + ([type_id] if add else [])
    data["mixins"] = names
    if isinstance(row, Workload):
        row.spec = data
        row.version += 1
    else:
        row.attributes = data
