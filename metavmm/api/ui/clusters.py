"""The classes screen: virtual clusters of the caller's project, created, watched, scaled, reset and torn down.

Every change is the REST handler itself (:mod:`metavmm.api.rest.clusters`: ``POST /clusters``, ``POST
/clusters/{id}/scale``, ``POST /clusters/{id}/seats/{serial}/reset``, ``DELETE /clusters/{id}``) called with
the session's identity, and every form is validated by the REST body model through the REST framework's
own :func:`~metavmm.api.rest.framework.parse_body`: the dashboard adds no rule, and a refusal shows the
message and status the API answers, with the form kept. The roster upload is read by the same parser as
the CLI's ``--roster`` (:func:`metavmm.services.clusters.parse_roster`). Seats' states and their latest
operation's progress come live from the event stream (``ui.js``), as on the workloads screen; so do seats
added or removed elsewhere (REST, the CLI, another browser): a ``seat`` event, whose row ui.js asks
``GET /ui/clusters/{id}/seats/{serial}`` for (the page's own row template, ``_seat.html``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from aiohttp.web_request import FileField
from multidict import MultiDictProxy
from sqlmodel import col, select

from metavmm.api import keys
from metavmm.api.keys import identity_of
from metavmm.api.rest import clusters as rest
from metavmm.api.rest.framework import parse_body, parse_params
from metavmm.api.ui import form_fields, page_context
from metavmm.api.ui.work import latest_event, launchable_images
from metavmm.catalog.models import Workload, WorkloadKind
from metavmm.foundation.errors import MetavmmError, ValidationError
from metavmm.services.clusters import ROSTER_MAX_BYTES, Seat, parse_roster
from metavmm.services.operations.store import ACTIVE

routes = web.RouteTableDef()
ID = r"{cluster_id:[0-9a-f-]{36}}"
TEXT = ("name", "seats", "image_id", "flavor", "vcpus", "ram_mib", "disk_gib", "network_id", "cidr",
        "first_address", "hostname_pattern", "strategy", "site", "max_per_site", "ssh_key", "user_data")
KEPT = (*TEXT, "sites", "expires_in_hours")  # what a refused form shows again (never a password)


def _id(request: web.Request) -> Any:
    """The page's class as REST's path parameters (a path REST would not serve is its 404)."""
    return parse_params(rest.ClusterId, {"cluster_id": request.match_info["cluster_id"]})


def seat_states(seats: Iterable[rest.SeatOut]) -> str:
    """The class's state as its seats' states counted, most first ("3 running, 1 pending"); ui.js writes the
    same words when a seat's state changes."""
    counted = Counter(s.state for s in seats)
    return ", ".join(f"{n} {state}" for state, n in sorted(counted.items(), key=lambda kv: (-kv[1], kv[0]))) or \
        "no seats"


async def _networks(request: web.Request) -> list[Workload]:
    """The project's networks a class may use (``network_id``)."""
    caller = identity_of(request)
    async with request.config_dict[keys.SESSIONS]() as session:
        return list((await session.exec(select(Workload).where(
            Workload.project_id == caller.project_id, Workload.kind == WorkloadKind.NETWORK, col(Workload.present))
            .order_by(col(Workload.name)))).all())


async def _list_page(request: web.Request, *, form: dict[str, str] | None = None,
                     error: MetavmmError | None = None) -> web.Response:
    caller = identity_of(request)
    last_event = await latest_event(request)
    views = await rest.clusters(request).list_clusters(caller, project_id=caller.project_id)
    return aiohttp_jinja2.render_template("clusters.html", request, page_context(
        request, title="Classes", classes=[rest.render(v) for v in views], seat_states=seat_states,
        form=form if form is not None else {"hostname_pattern": "{cluster}-{n:02d}", "strategy": "spread"},
        error=error.message if error else None, error_status=error.http_status if error else None,
        images=await launchable_images(request), networks=await _networks(request), last_event=last_event,
        deleted=request.query.get("deleted", "")[:40], deleted_ops=request.query.get("ops", "")[:6]),
        status=error.http_status if error else 200)


@routes.get("/clusters", name="clusters")
async def clusters_page(request: web.Request) -> web.Response:
    return await _list_page(request)


def _roster_lines(seats: Iterable[Seat]) -> list[dict[str, Any]]:
    """A parsed roster as REST's roster lines (``RosterLine``), checked there like a REST body's."""
    return [{k: v for k, v in (("owner", s.owner), ("ssh_key", s.ssh_key), ("user_data", s.user_data),
                               ("password", s.password), ("password_hash", s.password_hash)) if v}
            for s in seats]


async def _roster(posted: MultiDictProxy[Any]) -> list[dict[str, Any]]:
    upload = posted.get("roster")
    if not isinstance(upload, FileField):  # none chosen (a browser sends an empty part without a file name)
        return []
    data = upload.file.read(ROSTER_MAX_BYTES + 1)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError("the roster file is not UTF-8 text") from None
    return _roster_lines(parse_roster(text))


def _body(fields: dict[str, str], roster: list[dict[str, Any]]) -> dict[str, Any]:
    """The form as ``POST /clusters``'s JSON body: its fields as typed (REST's model converts and checks
    them), ``sites`` comma-separated, the expiry in hours from now (as the CLI's ``--expires-in``)."""
    data: dict[str, Any] = {k: fields[k].strip() if k not in ("ssh_key", "user_data") else fields[k]
                            for k in TEXT if fields.get(k, "").strip()}
    if fields.get("password"):
        data["password"] = fields["password"]
    if fields.get("sites", "").strip():
        data["sites"] = [s.strip() for s in fields["sites"].split(",") if s.strip()]
    hours = fields.get("expires_in_hours", "").strip()
    if hours:
        try:
            data["expires_at"] = (datetime.now(UTC) + timedelta(hours=float(hours))).isoformat()
        except (ValueError, OverflowError):
            raise ValidationError(f"expires in hours: {hours[:20]!r} is not a number of hours") from None
    if roster:
        data["roster"] = roster
    return data


@routes.post("/clusters", name="create_cluster")
async def create(request: web.Request) -> web.StreamResponse:
    fields = await form_fields(request)
    try:
        body = parse_body(rest.ClusterCreate, _body(fields, await _roster(await request.post())))
        made = await rest.create_cluster(request, body)
    except MetavmmError as exc:
        return await _list_page(request, form={k: v for k, v in fields.items() if k in KEPT}, error=exc)
    raise web.HTTPSeeOther(f"/ui/clusters/{made.id}")


async def _detail_page(request: web.Request, *, error: MetavmmError | None = None,
                       template: str = "cluster.html", title: str = "Class") -> web.Response:
    last_event = await latest_event(request)
    shown = await rest.get_cluster(request, _id(request))
    return aiohttp_jinja2.render_template(template, request, page_context(
        request, title=f"{title} {shown.name}", c=shown, seat_states=seat_states, active=ACTIVE,
        placement=(shown.template.get("placement") or {}).get("summary"), last_event=last_event,
        error=error.message if error else None, error_status=error.http_status if error else None,
        networks={r.site: r.network_id for r in shown.sites if r.network_id}),
        status=error.http_status if error else 200)


@routes.get(rf"/clusters/{ID}", name="cluster")
async def cluster_page(request: web.Request) -> web.Response:
    return await _detail_page(request)


@routes.get(rf"/clusters/{ID}/seats/{{serial:[0-9]{{1,4}}}}", name="seat_row")
async def seat_row(request: web.Request) -> web.Response:
    """One seat's row of the class page (``_seat.html``, as the page renders it), for ui.js to add a seat a
    ``seat`` event announced (a scale from REST, the CLI or another browser); the class as REST shows it to
    the caller (another project's: REST's 404), and a serial it has not: 404."""
    params = parse_params(rest.SeatParams, dict(request.match_info))
    shown = await rest.get_cluster(request, parse_params(rest.ClusterId, {"cluster_id": params.cluster_id}))
    seat = next((s for s in shown.seats if s.serial == params.serial), None)
    if seat is None:
        raise web.HTTPNotFound(reason=f"class {shown.name} has no seat {params.serial}")
    return aiohttp_jinja2.render_template("_seat.html", request, page_context(request, c=shown, s=seat))


@routes.post(rf"/clusters/{ID}/scale", name="scale_cluster")
async def scale(request: web.Request) -> web.StreamResponse:
    fields = await form_fields(request)
    cid = request.match_info["cluster_id"]
    try:
        body = parse_body(rest.ClusterScale, {"seats": fields["seats"].strip()} if fields.get("seats") else {})
        await rest.scale_cluster(request, _id(request), body)
    except MetavmmError as exc:
        return await _detail_page(request, error=exc)
    raise web.HTTPSeeOther(f"/ui/clusters/{cid}")


@routes.post(rf"/clusters/{ID}/seats/{{serial:[0-9]{{1,4}}}}/reset", name="reset_seat")
async def reset(request: web.Request) -> web.StreamResponse:
    cid = request.match_info["cluster_id"]
    try:
        await rest.reset_seat(request, parse_params(rest.SeatParams, dict(request.match_info)))
    except MetavmmError as exc:
        return await _detail_page(request, error=exc)
    raise web.HTTPSeeOther(f"/ui/clusters/{cid}")


@routes.get(rf"/clusters/{ID}/teardown", name="teardown_form")
async def teardown_form(request: web.Request) -> web.Response:
    """What a teardown deletes, and the form that confirms it (the class's name typed again)."""
    return await _detail_page(request, template="cluster_teardown.html", title="Tear down class")


@routes.post(rf"/clusters/{ID}/teardown", name="teardown")
async def teardown(request: web.Request) -> web.StreamResponse:
    fields = await form_fields(request)
    shown = await rest.get_cluster(request, _id(request))
    if fields.get("confirm", "").strip() != shown.name:
        refused = ValidationError(f"type the class's name, {shown.name}, to confirm its teardown; nothing was deleted")
        return await _detail_page(request, template="cluster_teardown.html", title="Tear down class", error=refused)
    ops = await rest.delete_cluster(request, _id(request))
    raise web.HTTPSeeOther(f"/ui/clusters?deleted={shown.name}&ops={len(ops)}")
