"""Dashboard screens of the caller's project: workloads, operations, the placement explainer, the marketplace.

Every change is a call to the service the REST handler calls (``WorkloadService.create/act/delete/cancel``;
the explainer's dry run is ``WorkloadService.explain``, ``Placer.dry_run`` with the create's placement groups;
the marketplace launch is :mod:`.launch`) with the session's identity, then a redirect to the page
that shows the operation (post/redirect/get). Reads are scoped by :func:`metavmm.services.scope.visible`.
"""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web
from pydantic import BaseModel, ConfigDict
from pydantic import ValidationError as PydanticError
from sqlalchemy import case
from sqlmodel import col, select

from metavmm.api import keys
from metavmm.api.keys import identity_of
from metavmm.api.ui import form_fields, page_context
from metavmm.catalog.models import Operation, OperationEvent, OperationState, Site, Workload
from metavmm.foundation.errors import ValidationError
from metavmm.scheduler.schemas import PlaceIn, PlacementOut
from metavmm.services import events
from metavmm.services.marketplace.entries import ImageOut, ImageQuery, audience_for, image_out, replicas_of, search
from metavmm.services.operations.store import ACTIVE
from metavmm.services.scope import get_visible, visible
from metavmm.services.workloads import console
from metavmm.services.workloads.fields import AffinityGroup, AntiAffinityGroup, SshKey, UserData
from metavmm.services.workloads.requests import CreateRequest
from metavmm.services.workloads.site_choices import reason

routes = web.RouteTableDef()
ACTIONS = ("start", "stop", "restart", "suspend", "resume")
PAGE = 200


def problem(exc: PydanticError) -> ValidationError:
    return ValidationError("; ".join(f"{'.'.join(map(str, e['loc'])) or 'form'}: {e['msg']}" for e in exc.errors()))


async def latest_event(request: web.Request) -> str:
    """The event id a page is rendered at: its EventSource resumes from there and misses nothing. Taken
    BEFORE the page reads its rows: a change committed between the two reads is then in the rows or
    replayed by the stream (both is harmless); taken after, a change landing in between is in neither."""
    return str(await events.latest(request.config_dict[keys.SESSIONS]))


async def _form(request: web.Request) -> dict[str, str]:
    return {k: v for k, v in (await form_fields(request)).items() if v.strip() != ""}


@routes.get("/workloads", name="workloads")
async def workloads(request: web.Request) -> web.Response:
    caller = identity_of(request)
    offset = int(request.query.get("offset", "0")) if request.query.get("offset", "0").isdigit() else 0
    last_event = await latest_event(request)
    async with request.config_dict[keys.SESSIONS]() as session:
        rows = (await session.exec(
            select(Workload, Site.name).outerjoin(Site, col(Site.id) == col(Workload.site_id))
            .where(visible(caller, Workload), col(Workload.present))
            .order_by(col(Workload.created_at).desc(), col(Workload.id)).offset(offset).limit(PAGE))).all()
    return aiohttp_jinja2.render_template("workloads.html", request, page_context(
        request, title="Workloads", rows=rows, offset=offset, page=PAGE, last_event=last_event))


@routes.get(r"/workloads/{workload_id:[0-9a-f-]{36}}", name="workload")
async def workload(request: web.Request) -> web.Response:
    caller = identity_of(request)
    last_event = await latest_event(request)
    async with request.config_dict[keys.SESSIONS]() as session:
        row = await get_visible(session, caller, Workload, request.match_info["workload_id"], "workload")
        ops = (await session.exec(select(Operation).where(Operation.target_id == row.id, visible(caller, Operation))
                                  .order_by(col(Operation.created_at).desc()).limit(50))).all()
        site = await session.get(Site, row.site_id) if row.site_id else None
    return aiohttp_jinja2.render_template("workload.html", request, page_context(
        request, title=f"Workload {row.name}", w=row, ops=ops, site=site, actions=ACTIONS,
        placement=(row.spec or {}).get("placement") or {}, active=ACTIVE, reasons={}, last_event=last_event))


@routes.get(r"/workloads/{workload_id:[0-9a-f-]{36}}/console", name="workload_console")
async def workload_console(request: web.Request) -> web.Response:
    """The workload page's console link: the REST answer (``GET /api/v1/workloads/{id}/console``) as a page,
    the output in a ``<pre>`` or the sentence saying why there is none."""
    out = await console.read(request.config_dict[keys.WORKLOADS], identity_of(request),
                             request.match_info["workload_id"])
    return aiohttp_jinja2.render_template("console.html", request, page_context(
        request, title="Console output", console=out))


@routes.post(r"/workloads/{workload_id:[0-9a-f-]{36}}/actions", name="workload_action")
async def workload_action(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    action, wid = form.get("action", ""), request.match_info["workload_id"]
    service = request.config_dict[keys.WORKLOADS]
    if action == "delete":
        await service.delete(identity_of(request), wid)
    elif action in ACTIONS:
        await service.act(identity_of(request), wid, action)
    else:
        raise ValidationError(f"unknown action {action[:40]!r}; expected delete or one of {', '.join(ACTIONS)}")
    raise web.HTTPSeeOther(f"/ui/workloads/{wid}")


GROUPS = ("affinity_group", "anti_affinity_group")  # they change the verdicts: the explainer's dry run takes them
GUEST = ("ssh_key", "user_data")  # sent with the create alone (they change no verdict, and stay out of URLs)


class ComputeFields(BaseModel):
    """What a compute create takes beyond the shape :class:`PlaceIn` checks: the fields REST's ``POST
    /workloads`` and the marketplace launch declare (:mod:`metavmm.services.workloads.fields`, once for all)."""

    model_config = ConfigDict(extra="forbid")
    ssh_key: SshKey = None
    user_data: UserData = None
    affinity_group: AffinityGroup = None
    anti_affinity_group: AntiAffinityGroup = None


def _create_request(form: dict[str, str]) -> CreateRequest:
    """The explainer's form as a create: the shape PlaceIn takes, and the rest of a compute create's fields,
    each checked the same way as REST's (the service then checks every value again)."""
    place = _place_in(form)
    try:
        extra = ComputeFields.model_validate({k: form[k] for k in (*GROUPS, *GUEST) if k in form})
    except PydanticError as exc:
        raise problem(exc) from None
    return CreateRequest(name=form.get("name"), vcpus=place.vcpus, ram_mib=place.ram_mib, disk_gib=place.disk_gib,
                         gpu_model=place.gpu_model, gpu_count=place.gpu_count, image=place.image_id,
                         site=place.sites[0] if place.sites else None, providers=tuple(place.providers),
                         residency=tuple(place.residency), **extra.model_dump())


@routes.post("/workloads", name="create")
async def create(request: web.Request) -> web.StreamResponse:
    done = await request.config_dict[keys.WORKLOADS].create(identity_of(request), _create_request(await _form(request)))
    raise web.HTTPSeeOther(f"/ui/workloads/{done.workload.id}")


@routes.get("/operations", name="operations")
async def operations(request: web.Request) -> web.Response:
    caller = identity_of(request)
    wanted = request.query.get("state", "open")
    groups = {"open": (*ACTIVE, OperationState.QUEUED), "failed": (OperationState.FAILED, OperationState.ROLLED_BACK),
              "done": (OperationState.SUCCEEDED, OperationState.CANCELLED)}
    states = groups.get(wanted, groups["open"])
    order = case((col(Operation.state) == OperationState.RUNNING, 0), else_=1)
    last_event = await latest_event(request)
    async with request.config_dict[keys.SESSIONS]() as session:
        ops = (await session.exec(select(Operation).where(visible(caller, Operation), col(Operation.state).in_(states))
                                  .order_by(order, col(Operation.created_at).desc()).limit(PAGE))).all()
        ids = [o.id for o in ops]
        notes = (await session.exec(select(OperationEvent).where(col(OperationEvent.operation_id).in_(ids),
                                                                 col(OperationEvent.level) != "info")
                                    .order_by(col(OperationEvent.id)))).all() if ids else []
    reasons: dict[str, list[str]] = {}
    for ev in notes:
        reasons.setdefault(ev.operation_id, []).append(ev.message)
    return aiohttp_jinja2.render_template("operations.html", request, page_context(
        request, title="Operations", ops=ops, wanted=wanted if wanted in groups else "open", groups=list(groups),
        reasons=reasons, active=ACTIVE, last_event=last_event))


@routes.post(r"/operations/{operation_id:[0-9a-f-]{36}}/cancel", name="cancel")
async def cancel(request: web.Request) -> web.StreamResponse:
    await request.config_dict[keys.WORKLOADS].cancel(identity_of(request), request.match_info["operation_id"])
    raise web.HTTPSeeOther("/ui/operations")


def _place_in(form: dict[str, str]) -> PlaceIn:
    data: dict[str, Any] = {k: form[k] for k in ("name", "vcpus", "ram_mib", "disk_gib", "gpu_model", "gpu_count",
                                                  "image_id") if k in form}
    for key in ("sites", "providers", "residency"):
        if key in form:
            data[key] = [v.strip() for v in form[key].split(",") if v.strip()]
    try:
        return PlaceIn.model_validate({**data, "explain": True})
    except PydanticError as exc:
        raise problem(exc) from None


async def launchable_images(request: web.Request, *, replicas: bool = False) -> list[ImageOut]:
    """The images the caller may launch (REST's marketplace search with the caller's audience); with
    ``replicas``, each with its replicas per site (what an entry's REST page lists, one query for all)."""
    async with request.config_dict[keys.SESSIONS]() as session:
        rows, _ = await search(session, ImageQuery(limit=200), await audience_for(session, identity_of(request)))
        where = await replicas_of(session, [r.id for r in rows]) if replicas else {}
        return [image_out(r, where.get(r.id)) for r in rows]


@routes.get("/explain", name="explain")
async def explain(request: web.Request) -> web.Response:
    form = {k: v for k, v in request.query.items() if v.strip() != ""}
    result: PlacementOut | None = None
    if "vcpus" in form:
        form = {k: v for k, v in form.items() if k not in GUEST}  # the create's form takes them, not the URL
        planned, groups = await request.config_dict[keys.WORKLOADS].explain(
            identity_of(request), _place_in(form).to_request(), _create_request(form))
        result = PlacementOut.of(planned.placement, planned.where, explain=True)
        result.explanation = [{**e, "reason": reason(e, groups or None)} for e in result.explanation or []]
    return aiohttp_jinja2.render_template("explain.html", request, page_context(
        request, title="Placement explainer", form=form, result=result, images=await launchable_images(request),
        carried=("vcpus", "ram_mib", "disk_gib", "gpu_model", "gpu_count", "image_id", "sites", "providers",
                 "residency", *GROUPS)))
