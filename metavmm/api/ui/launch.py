"""Launching a marketplace image at a chosen site: the sites a launch could go to, with prices, then the launch.

``GET /ui/marketplace/{image}/launch`` (the shape: a flavor, or vCPUs, RAM and GPUs; and the project's
placement groups, which rule hosts and sites out) lists every site of the
federation with the scheduler's verdict for this image and shape: the feasible ones with their price per hour
to choose from, the others with the reason (:func:`metavmm.services.marketplace.launch.launch_sites`, one
dry run). The POST is REST's launch (:func:`metavmm.services.marketplace.launch.launch`, the workload
service's create) naming the chosen site, or none to let the scheduler choose: the offer is not a second
rule, the create asks the scheduler again, so a site that cannot take it (the form was tampered with, or
the site filled up meanwhile) is refused with the scheduler's reason on this page, and nothing is written.
The launch takes every field REST's launch (and ``POST /workloads``) takes for a compute: the SSH key and
user data go with the launch itself, since they change no site's verdict.
"""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web
from pydantic import ValidationError as PydanticError
from sqlmodel import col, select

from metavmm.api import keys
from metavmm.api.keys import identity_of
from metavmm.api.ui import form_fields, page_context
from metavmm.api.ui.work import problem
from metavmm.catalog.models import Flavor
from metavmm.foundation.errors import MetavmmError
from metavmm.services.marketplace.entries import audience_for, get_image, image_out
from metavmm.services.marketplace.launch import LaunchIn, launch, launch_sites
from metavmm.services.workloads.site_choices import SiteChoices

routes = web.RouteTableDef()
SIZE = ("vcpus", "ram_mib", "gpu_model", "gpu_count")  # what a flavor's own size replaces
FIELDS = ("name", "flavor", *SIZE, "affinity_group", "anti_affinity_group")  # what the sites offered depend on
LAUNCH_ONLY = ("site", "ssh_key", "user_data")  # sent with the launch itself: they change no site's verdict
PATH = r"/marketplace/{image_id:[0-9a-f-]{36}}/launch"


def _shape(values: dict[str, str]) -> dict[str, str]:
    """The placement fields of ``values`` that were filled in (a flavor wins over the numbers): what the sites
    offered were worked out for, so the launch form carries exactly these."""
    data = {k: values[k].strip() for k in FIELDS if values.get(k, "").strip()}
    return {k: v for k, v in data.items() if k not in SIZE} if "flavor" in data else data


def _body(values: dict[str, str], *, launching: bool) -> LaunchIn:
    """The form as REST's launch body: the same model, checked the same way."""
    data = _shape(values)
    if launching:  # the key and user data go to the guest as given (the service checks them), not stripped
        data |= {k: values[k] for k in LAUNCH_ONLY if values.get(k, "").strip()}
    try:
        return LaunchIn.model_validate(data)
    except PydanticError as exc:
        raise problem(exc) from None


async def _page(request: web.Request, form: dict[str, str], error: MetavmmError | None = None,
                site: str | None = None) -> web.Response:
    """The launch page for ``form``'s shape; with ``error`` (a launch at ``site`` refused) in its status, the
    choices still shown."""
    caller, image_id = identity_of(request), request.match_info["image_id"]
    async with request.config_dict[keys.SESSIONS]() as session:
        image = image_out(await get_image(session, image_id, await audience_for(session, caller)))
        flavors = sorted(set((await session.exec(select(Flavor.name).where(col(Flavor.present)))).all()))
    form = {"name": f"{image.name[:40]}-vm", "vcpus": str(max(image.min_vcpus, 1)),
            "ram_mib": str(max(image.min_ram_mib, 512)), **form}
    choices: SiteChoices | None = None
    problem_text = None
    try:
        choices = await launch_sites(request.config_dict[keys.WORKLOADS], caller, image_id,
                                     _body(form, launching=False))
    except MetavmmError as exc:  # a bad shape or an exhausted quota: said on the page, with the form to fix it
        problem_text = exc.message
        if error is None:
            error = exc
    return aiohttp_jinja2.render_template("launch.html", request, page_context(
        request, title=f"Launch {image.publisher}/{image.name}", image=image, form=form, carried=_shape(form),
        flavors=flavors,
        choices=choices, problem=problem_text, error=error.message if error else None, refused_site=site,
        error_status=error.http_status if error else None),
        status=error.http_status if error else 200)


@routes.get(PATH, name="launch_form")
async def launch_form(request: web.Request) -> web.Response:
    return await _page(request, {k: v for k, v in request.query.items() if k in FIELDS})


@routes.post(PATH, name="launch")
async def launch_image(request: web.Request) -> web.StreamResponse:
    form = {k: v for k, v in (await form_fields(request)).items() if k in (*FIELDS, *LAUNCH_ONLY)}
    try:
        done = await launch(request.config_dict[keys.WORKLOADS], identity_of(request), request.match_info["image_id"],
                            _body(form, launching=True))
    except MetavmmError as exc:  # the form comes back as it was sent, key and user data included
        return await _page(request, {k: v for k, v in form.items() if k != "site"}, exc, form.get("site"))
    raise web.HTTPSeeOther(f"/ui/workloads/{done.workload.id}")
