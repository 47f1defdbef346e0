"""How catalog rows look through OCCI: catalog-derived mixins and entities built from rows.

Images become os_tpl mixins, flavor names resource_tpl mixins (one per name, the same at every
site), sites and availability zones placement mixins, ``OcciMixin`` rows user mixins. Entities are
built from ``Workload`` and ``WorkloadLink`` rows for each rendering and never stored. Pure
functions, except :func:`registry` and :func:`links_of`, which read the catalog.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.api.occi import infrastructure as infra
from metavmm.api.occi.model import Action, Kind, Link, Mixin, OcciAttr, Resource
from metavmm.catalog.models import (
    AvailabilityZone,
    Flavor,
    Image,
    OcciMixin,
    Operation,
    Site,
    Workload,
    WorkloadLink,
)
from metavmm.foundation.errors import plain_message
from metavmm.services.clusters import CLUSTER_SCHEME
from metavmm.services.marketplace.entries import project_audience
from metavmm.services.operations import flows
from metavmm.services.operations.store import ACTIVE
from metavmm.services.workloads.requests import APPLICABLE, compute_state

KINDS = {k.term: k for k in (*infra.RESOURCE_KINDS, *infra.LINK_KINDS)}
STATIC_BY_ID = {m.type_id: m for m in infra.STATIC_MIXINS}


# --- catalog-derived categories -----------------------------------------------------------------------


def slug(name: str) -> str:
    out = re.sub(r"[^A-Za-z0-9\-_.]+", "-", name).strip("-_.")
    return out if out and out[0].isalnum() else f"x{out}"[:64]


def image_term(image: Image) -> str:
    return os_tpl_term(image.name, image.id)


def os_tpl_term(name: str, image_id: str) -> str:
    return f"{slug(name)[:48]}-{image_id[:8]}"


def os_tpl(image: Image) -> Mixin:
    return os_tpl_of(image.name, image.id)


def os_tpl_of(name: str, image_id: str) -> Mixin:
    """The os_tpl mixin of the image ``name`` with id ``image_id``, also before the image exists (a save
    names the os_tpl it is making)."""
    term = os_tpl_term(name, image_id)
    return Mixin(infra.OS_TPL_SCHEME, term, name, depends=(infra.OS_TPL.type_id,),
                 applies=(infra.COMPUTE.type_id,), location=f"/mixins/os_tpl/{term}/")


def resource_tpl(flavor: Flavor) -> Mixin:
    term = slug(flavor.name)
    cores, memory = infra.COMPUTE.attribute("occi.compute.cores"), infra.COMPUTE.attribute("occi.compute.memory")
    assert cores is not None and memory is not None
    attrs = (OcciAttr(cores.name, int, mutable=False, default=flavor.vcpus, description=cores.description),
             OcciAttr(memory.name, float, mutable=False, default=round(flavor.ram_mib / 1024, 4),
                      description=memory.description))
    return Mixin(infra.RESOURCE_TPL_SCHEME, term, f"{flavor.name}: {flavor.vcpus} vCPU, {flavor.ram_mib} MiB",
                 attrs, depends=(infra.RESOURCE_TPL.type_id,), applies=(infra.COMPUTE.type_id,),
                 location=f"/mixins/resource_tpl/{term}/")


def site_mixin(site: Site, zone: str | None = None) -> Mixin:
    term = slug(site.name) + (f".{slug(zone)}" if zone else "")
    title = f"site {site.name}" + (f", zone {zone}" if zone else "")
    return Mixin(infra.SITE_SCHEME, term, title, depends=(infra.SITE.type_id,), applies=infra.SITE.applies,
                 location=f"/mixins/site/{term}/")


def user_mixin(row: OcciMixin) -> Mixin:
    """A project's mixin row: a user tag, or a cluster's mixin (the broker's: its seats are the collection at
    its location, and no client associates or removes it; services/clusters.py writes it)."""
    return Mixin(row.scheme, row.term, row.title, depends=tuple(row.depends), applies=tuple(row.applies),
                 location=row.location, user=row.scheme != CLUSTER_SCHEME)


@dataclass
class Registry:
    """Every category a project can see, with where each catalog mixin comes from."""

    mixins: list[Mixin]
    images: dict[str, Image]  # os_tpl type id -> image
    flavors: dict[str, Flavor]  # resource_tpl type id -> flavor
    sites: dict[str, tuple[Site, str | None]]  # site mixin type id -> (site, zone)

    @property
    def kinds(self) -> list[Kind]:
        return list(infra.KINDS)

    @property
    def actions(self) -> list[Action]:
        return list(infra.ACTIONS)

    def mixin(self, type_id: str) -> Mixin | None:
        return next((m for m in self.mixins if m.type_id == type_id), None)

    def by_location(self, path: str) -> Kind | Mixin | None:
        for cat in [*self.kinds, *self.mixins]:
            if cat.location and cat.location.rstrip("/") == path.rstrip("/"):
                return cat
        return None


REGISTRY_TABLES = ("image", "school", "school_member", "flavor", "site", "availability_zone", "occi_mixin")
"""What :func:`registry` reads: a cache of it ends when one of them changes."""


async def registry(session: AsyncSession, project_id: int) -> Registry:
    """Every category the project can see: its images, all present flavors, sites, zones, its user mixins."""
    audience = await project_audience(session, project_id)
    images = (await session.exec(select(Image).where(audience.clause()).order_by(Image.name, Image.id))).all()
    flavors = (await session.exec(select(Flavor).where(Flavor.present).order_by(Flavor.name, Flavor.id))).all()
    sites = (await session.exec(select(Site).where(Site.present).order_by(Site.name))).all()
    zones = (await session.exec(select(AvailabilityZone).where(AvailabilityZone.present))).all()
    users = (await session.exec(select(OcciMixin).where(OcciMixin.project_id == project_id)
                                .order_by(OcciMixin.id))).all()
    reg = Registry(list(infra.STATIC_MIXINS), {}, {}, {})
    for image in images:
        m = os_tpl(image)
        reg.images[m.type_id] = image
        reg.mixins.append(m)
    for flavor in flavors:
        m = resource_tpl(flavor)
        if m.type_id not in reg.flavors:  # the same name at several providers is one template
            reg.flavors[m.type_id] = flavor
            reg.mixins.append(m)
    for site in sites:
        for zone in [None, *sorted(z.name for z in zones if z.site_id == site.id)]:
            m = site_mixin(site, zone)
            reg.sites[m.type_id] = (site, zone)
            reg.mixins.append(m)
    reg.mixins += [user_mixin(u) for u in users]
    return reg


def mixin_stub(type_id: str) -> Mixin:
    """A mixin as an entity lists it (the rendering needs only its identity)."""
    if type_id in STATIC_BY_ID:
        return STATIC_BY_ID[type_id]
    scheme, _, term = type_id.rpartition("#")
    return Mixin(scheme + "#", term)


# --- entities from rows ---------------------------------------------------------------------------------

_COMPUTE_STATE = {"running": "active", "stopped": "inactive", "suspended": "suspended", "error": "error",
                  "gone": "error", "deleted": "error", "rolled_back": "error", "cancelled": "error"}
_DESIRED_STATE = {"active": "active", "stopped": "inactive", "suspended": "suspended"}
ACTIONS_BY_STATE = {
    "network": {"active": ("down",), "inactive": ("up",), "error": ("up", "down")},
    "storage": {"online": ("offline",), "offline": ("online",), "error": ("online", "offline")},
}


_RESOURCE_STATE = {"network": {"active": "active", "inactive": "inactive"},
                   "storage": {"online": "online", "offline": "offline"}}
"""OCCI's states of a network or storage; anything else (pending while its create plan runs) is the
not-usable state, and an error, a loss or a deletion is ``error``."""


def occi_state(wl: Workload) -> str:
    """``occi.compute.state``: what the provider last reported (a compute being created is inactive)."""
    if wl.kind == "compute":
        return _COMPUTE_STATE.get(wl.observed_state, "inactive")
    if wl.observed_state in ("error", "lost", "deleted", "rolled_back"):
        return "error"
    return _RESOURCE_STATE[wl.kind].get(wl.observed_state, "inactive" if wl.kind == "network" else "offline")


def applicable_actions(wl: Workload, busy: bool = False) -> tuple[str, ...]:
    """The action terms that apply now: for a compute the workload service's rule (the state it is in, or
    heading to while an operation runs), in OCCI's terms (resume is a start); none while a network's or
    storage's create plan runs."""
    if wl.kind == "compute":
        allowed = APPLICABLE[compute_state(wl, busy)]
        return tuple(a.term for a in infra.COMPUTE.actions if a.term in allowed)
    if wl.observed_state == "pending":
        return ()
    return ACTIONS_BY_STATE[wl.kind].get(intended_state(wl, busy), ())


def intended_state(wl: Workload, busy: bool) -> str:
    """The state whose actions a compute accepts. While an operation runs (``busy``) that is where the
    compute is heading (its desired state): a stop asked during a create is planned behind the create."""
    observed = occi_state(wl)
    if wl.kind != "compute" or not busy or observed == "error":
        return observed
    return _DESIRED_STATE.get(wl.desired_state, observed)


def people_message(text: str) -> str:
    """A state message as people read it (issues 23.11, 23.12): no SQL statement or parameters a database
    error carried (the operation keeps the detail), and neither ';' nor '"', which several OCCI clients
    split on even inside quoted values."""
    text = plain_message(text)
    return " ".join(text.replace(";", ",").replace('"', "'").split())[:500]


def operation_message(op: Operation) -> str:
    """``occi.compute.state.message`` while an operation runs: its step, progress and last log line."""
    steps = op.steps or []
    text = f"{op.kind} {op.state}"
    step: dict[str, Any] = {}
    if steps:
        index = min(op.current_step, len(steps) - 1)
        step = steps[index]
        text += f": step {step['name']} ({index + 1}/{len(steps)})"
    text += f", {float(op.progress):.0%}"
    last = step.get("error") or (step.get("log") or [None])[-1]
    return people_message(f"{text} - {last}" if last else text)


def mixins_of(spec: dict[str, Any]) -> list[Mixin]:
    return [mixin_stub(t) for t in spec.get("mixins", [])]


def declared(kind: Kind, mixins: list[Mixin]) -> list[OcciAttr]:
    return [*kind.all_attributes(), *(a for m in mixins for a in m.attributes)]


def _values(attrs: list[OcciAttr], data: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for attr in attrs:
        if attr.field and attr.field in data and data[attr.field] is not None:
            value = data[attr.field]
            value = attr.to_occi(value) if attr.to_occi else value
            if value is not None:
                out[attr.name] = value
    return out


def exports(provider: str | None, kind: str | None, config: Any = None) -> bool:
    """Whether a compute at ``provider`` (of ``kind``, configured in the federation file ``config``) can be
    saved: not where the workload service refuses a save up front
    (:func:`metavmm.services.operations.flows.export_refused`); True while it runs nowhere."""
    return provider is None or kind is None or flows.export_refused(provider, kind, config) is None


def resource_entity(wl: Workload, links: list[Link], running: Operation | None = None, *,
                    saveable: bool = True) -> Resource:
    """The entity of a row; ``running``: the workload's active operation, whose progress is the message;
    ``saveable``: its provider can export the disk (else no ``save`` action link: it would be a 409)."""
    kind = KINDS[wl.kind]
    mixins = mixins_of(wl.spec)
    if wl.kind == infra.COMPUTE.term and isinstance(wl.spec.get("placement"), dict):
        mixins = [*mixins, infra.PLACED]  # why it runs where it runs, as the service recorded it
    state = occi_state(wl)
    attrs: dict[str, Any] = {"occi.core.id": wl.id, "occi.core.title": wl.name}
    attrs.update(_values(declared(kind, mixins), {**wl.spec, "name": wl.name}))
    attrs[f"occi.{kind.term}.state"] = state
    message = operation_message(running) if running is not None else wl.state_message
    if message:
        attrs[f"occi.{kind.term}.state.message"] = people_message(message)
    applicable = [a for a in applicable_actions(wl, busy=running is not None) if saveable or a != "save"]
    return Resource(kind=kind, id=wl.id, location=f"{kind.location}{wl.id}", mixins=mixins, attributes=attrs,
                    actions=[a for a in kind.actions if a.term in applicable], title=wl.name,
                    summary=wl.spec.get("summary"), links=links)


def link_entity(row: WorkloadLink, source_kind: str, target_kind: str, source_state: str) -> Link:
    kind = KINDS[row.kind]
    data = dict(row.attributes)
    mixins = mixins_of(data)
    attrs: dict[str, Any] = {"occi.core.id": row.id}
    if data.get("name"):
        attrs["occi.core.title"] = data["name"]
    source = f"/{source_kind}/{row.source_id}"
    target = f"/{target_kind}/{row.target_id}"
    attrs.update({"occi.core.source": source, "occi.core.target": target,
                  "occi.core.source.kind": KINDS[source_kind].type_id,
                  "occi.core.target.kind": KINDS[target_kind].type_id})
    attrs.update(_values(declared(kind, mixins), data))
    state = data.get("state")  # pending, active, error or inactive: written by the engine's attach/detach plans
    up = "active" if source_state == "active" else "inactive"
    attrs[f"occi.{kind.term}.state"] = up if state in (None, "active") else "error" if state == "error" \
        else "inactive"
    if data.get("state_message"):
        attrs[f"occi.{kind.term}.state.message"] = people_message(str(data["state_message"]))
    return Link(kind=kind, id=row.id, location=f"{kind.location}{row.id}", mixins=mixins, attributes=attrs,
                title=data.get("name"), source=source, source_kind=KINDS[source_kind].type_id, target=target,
                target_kind=KINDS[target_kind].type_id)


async def running_operations(session: AsyncSession, ids: list[str] | None = None, *,
                             project_id: int | None = None) -> dict[str, Operation]:
    """The newest active operation of each of the workloads ``ids`` (or of every workload of
    ``project_id``), in one query. Read it *before* the workload rows: SQLite runs each read on its own
    snapshot, and an operation ends together with the note it writes on its workload, so this order
    never shows an ended operation's workload without its note."""
    if ids is not None and not ids:
        return {}
    targets = ids if ids is not None else select(Workload.id).where(Workload.project_id == project_id)
    rows = (await session.exec(select(Operation).where(Operation.target_id.in_(targets),  # type: ignore[union-attr]
                                                        Operation.state.in_(ACTIVE))  # type: ignore[attr-defined]
                               .order_by(Operation.created_at))).all()
    return {op.target_id: op for op in rows if op.target_id}


async def links_of(session: AsyncSession, rows: list[Workload]) -> dict[str, list[Link]]:
    """The links whose source is one of ``rows``, grouped by source id (one query)."""
    ids = [w.id for w in rows]
    out: dict[str, list[Link]] = {i: [] for i in ids}
    if not ids:
        return out
    by_id = {w.id: w for w in rows}
    found = (await session.exec(select(WorkloadLink, Workload.kind).join(
        Workload, WorkloadLink.target_id == Workload.id).where(WorkloadLink.source_id.in_(ids))
        .order_by(WorkloadLink.id))).all()
    for link, target_kind in found:
        src = by_id[link.source_id]
        out[link.source_id].append(link_entity(link, src.kind, target_kind, occi_state(src)))
    return out
