"""The authorization matrix: every declared route, called as another project's member, as a reader,
with an expired token and with no token, leaks nothing of project alpha and changes nothing.

Routes are enumerated from :func:`metavmm.api.rest.modules` (and, for the no-token and expired
cases, from the whole aiohttp router, OCCI included), so routes added later are covered automatically.
Path parameters point at alpha's own resources; bodies are valid requests aimed at alpha, so a refusal
proves the authorization check, not the validation.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
from aiohttp import web
from pydantic import BaseModel
from sqlmodel import select

from metavmm.api import keys
from metavmm.api.auth import PUBLIC, ROLE_ATTR, default_role
from metavmm.api.rest import modules
from metavmm.api.rest.framework import RestModule, add_module
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import (
    ALL_TABLES,
    ClientCertificate,
    Flavor,
    Host,
    ImageReplica,
    Provider,
    Site,
)
from metavmm.services.identity import rank
from tests.world import ALPHA_MARK, World

API = "/api/v1"
ALPHA_MARKERS = (ALPHA_MARK, "alpha-private-image", "alpha_member", "alpha_reader", "alpha_padmin")


async def snapshot(w: World) -> str:
    """Every row of every table, as one string: equal snapshots mean nothing changed."""
    out = []
    async with w.app[keys.SESSIONS]() as s:
        for model in ALL_TABLES:
            rows = (await s.exec(select(model))).all()
            out.append(json.dumps(sorted(json.dumps(r.model_dump(mode="json"), sort_keys=True) for r in rows)))
    return "\n".join(out)


async def samples(w: World) -> dict[str, Any]:
    """A value for each path parameter: alpha's own resources, or shared inventory."""
    async with session_scope(w.app[keys.SESSIONS]) as s:
        cert = ClientCertificate(subject="CN=alpha-member,O=NCHC,C=TW", user_id=w.ids["user_alpha_member"],
                                 project_id=w.ids["alpha"])
        s.add(cert)
        await s.flush()
        first = {}
        for name, model in (("provider_id", Provider), ("site_id", Site), ("host_id", Host), ("flavor_id", Flavor),
                            ("replica_id", ImageReplica)):
            first[name] = (await s.exec(select(model.id).order_by(model.id))).first() or 1
        return {
            **first, "workload_id": w.ids["workload"], "operation_id": w.ids["operation"],
            "project_id": w.ids["alpha"], "user_id": w.ids["user_alpha_member"],
            "token_id": w.ids["token_alpha_member"], "image_id": w.ids["image"], "certificate_id": cert.id,
            "resource": "instances",
        }


def bodies(w: World) -> dict[str, Any]:
    """Valid bodies, aimed at alpha where the body can name a project or user."""
    return {
        "ProviderCreate": {"name": "matrix-provider", "kind": "sim", "credentials": {"k": "v"}},
        "ProviderPatch": {"enabled": False},
        "ProjectCreate": {"name": "matrix-project"},
        "ProjectPatch": {"description": "changed"},
        "MemberSet": {"role": "reader"},
        "QuotaSet": {"limit": 1},
        "UserCreate": {"name": "matrix-user"},
        "CertificateCreate": {"subject": "CN=matrix", "project_id": w.ids["alpha"]},
        "TokenCreate": {"name": "matrix", "user_id": w.ids["user_alpha_member"]},
        "WorkloadCreate": {"name": "matrix-vm", "vcpus": 1, "ram_mib": 64, "project_id": w.ids["alpha"]},
        "WorkloadPatch": {"name": "renamed"},
        "ActionRequest": {"action": "stop"},
    }


def _fill(path: str, values: dict[str, Any]) -> str:
    return re.sub(r"{(\w+)}", lambda m: str(values.get(m.group(1), uuid.uuid4())), path)


def _role(route: Any) -> str:
    return route.extra.get("role") or default_role(route.method)


async def test_every_route_as_other_project_reader_expired_and_anonymous(world: Any) -> None:
    client, w = world
    values = await samples(w)
    body_for = bodies(w)
    before = await snapshot(w)
    checked = 0
    for route in (r for m in modules() for r in m.routes):
        role = _role(route)
        if role == PUBLIC:
            continue
        path = API + _fill(route.path, values)
        body = body_for.get(route.body.__name__, {}) if route.body else None
        # A body we have no valid sample for (a route added later) may be refused by validation first.
        refusals = {403, 404} if route.body is None or route.body.__name__ in body_for else {400, 403, 404, 409}
        if route.query is not None:  # we send no query: a route that needs one refuses it first
            refusals = refusals | {400}
        writes = rank(role) > rank("reader")  # reader-level POSTs (dry runs, comparisons) only read
        headers = {"If-Match": "*"}
        for caller in ("none", "expired", "alpha_reader", "beta_member"):
            resp = await client.request(route.method, path, json=body, headers={**headers, **w.auth(caller)})
            text = await resp.text()
            where = f"{route.method} {route.path} as {caller}: {resp.status} {text[:200]}"
            assert resp.status < 500, where
            if caller in ("none", "expired"):
                assert resp.status == 401, where
            elif caller == "alpha_reader" and writes:
                assert resp.status == 403, where
            elif caller == "beta_member":
                if writes or resp.status >= 400:
                    assert resp.status in refusals, where
                for marker in ALPHA_MARKERS:
                    assert marker not in text, f"{where}: leaks {marker}"
                if resp.status < 400:  # an error may repeat the id the caller sent, nothing more
                    assert str(w.ids["workload"]) not in text and str(w.ids["image"]) not in text, where
            if writes:
                assert resp.status >= 400, where
            after = await snapshot(w)
            assert after == before, f"{where} changed the database"
            checked += 1
    assert checked >= 4 * 40


async def test_every_aiohttp_route_needs_credentials(world: Any) -> None:
    """OCCI and any other handler mounted on the app: no token or an expired one gets 401."""
    client, w = world
    values = {**await samples(w), "location": "mixins/user/mine/"}  # OCCI user-mixin locations end in /
    # The root app and its sub-apps (whose route paths already include their prefix).
    apps = [w.app] + [r._app for r in w.app.router.resources() if hasattr(r, "_app")]
    seen = 0
    for app in apps:
        for route in app.router.routes():
            if route.method == "HEAD" or getattr(route.handler, ROLE_ATTR, None) == PUBLIC:
                continue
            info = route.resource.get_info() if route.resource else {}
            path = _fill(info.get("formatter") or info.get("path") or "", values)
            method = "PATCH" if route.method == "*" else route.method  # a catch-all answers any method
            for headers in ({}, w.auth("expired")):
                resp = await client.request(method, path, headers=headers)
                assert resp.status == 401, f"{route.method} {path}: {resp.status}"
                seen += 1
    assert seen >= 80


def test_roles_declared_on_routes_are_known() -> None:
    for route in (r for m in modules() for r in m.routes):
        role = _role(route)
        assert role == PUBLIC or rank(role) >= 0, route.path
        assert route.body is None or issubclass(route.body, BaseModel)
    typo = RestModule("typo")

    @typo.route("GET", "/x", summary="x", role="memebr")
    async def x(_request: Any) -> None:
        return None

    with pytest.raises(ValueError, match="memebr"):
        add_module(web.Application(), typo)
