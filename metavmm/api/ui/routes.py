"""Login, logout and the live event stream of the dashboard; the screens' routes are collected here."""

from __future__ import annotations

import hmac
import secrets
from functools import partial

import aiohttp_jinja2
from aiohttp import web

from metavmm.api import keys
from metavmm.api.rest.events import EventsQuery, follow
from metavmm.api.ui import (
    alerts,
    autoscaling,
    burst,
    clusters,
    inventory,
    launch,
    marketplace,
    migrate,
    oidc_login,
    page_context,
    projects,
    rebalance,
    work,
)
from metavmm.api.ui import session as sess
from metavmm.foundation.errors import Forbidden, Unauthenticated

routes = web.RouteTableDef()
LOGIN_COOKIE = "metavmm_login"  # the login form's CSRF token (double submit: no session exists yet)


@routes.get("/login", name="login")
async def login_form(request: web.Request) -> web.Response:
    token = secrets.token_urlsafe(24)
    resp = aiohttp_jinja2.render_template("login.html", request, page_context(
        request, title="Log in", login_csrf=token, next=sess.safe_next(request.query.get("next")), error=None,
        oidc=keys.OIDC in request.config_dict))
    resp.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="Strict", path="/ui/login",
                    secure=sess.secure(request))
    return resp


@routes.post("/login")
async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    sent, cookie = str(form.get(sess.CSRF_FIELD, "")), request.cookies.get(LOGIN_COOKIE, "")
    if not sent or not cookie or not hmac.compare_digest(sent, cookie):
        raise Forbidden("missing or wrong CSRF token: reload the login page and try again")
    try:
        opened = await sess.login(request, str(form.get("token", "")))
    except Unauthenticated as exc:
        resp = aiohttp_jinja2.render_template("login.html", request, page_context(
            request, title="Log in", login_csrf=cookie, next=sess.safe_next(str(form.get("next", ""))),
            error=exc.message, oidc=keys.OIDC in request.config_dict),
            status=401)
        return resp
    resp = web.HTTPSeeOther(sess.safe_next(str(form.get("next", ""))))
    sess.set_cookie(request, resp, opened)
    resp.del_cookie(LOGIN_COOKIE, path="/ui/login")
    raise resp


@routes.post("/logout", name="logout")
async def logout(request: web.Request) -> web.StreamResponse:
    await sess.logout(request)
    resp = web.HTTPSeeOther("/ui/login")
    resp.del_cookie(sess.COOKIE, path="/ui")
    raise resp


@routes.get("/events", name="events")
async def events(request: web.Request) -> web.StreamResponse:
    """The REST stream with the session's identity, checked again while it is open (a logout in another
    tab ends it); ``after`` is where the page was rendered (an id that is not one: a 400, as over REST)."""
    return await follow(request, EventsQuery(after=request.query.get("after", "")[:40] or None),
                        partial(sess.identity_now, request))


def add_routes(app: web.Application) -> None:
    app.router.add_routes(routes)
    app.router.add_routes(inventory.routes)
    app.router.add_routes(work.routes)
    app.router.add_routes(clusters.routes)
    app.router.add_routes(marketplace.routes)
    app.router.add_routes(launch.routes)
    app.router.add_routes(alerts.routes)
    app.router.add_routes(projects.routes)
    app.router.add_routes(migrate.routes)
    app.router.add_routes(burst.routes)
    app.router.add_routes(autoscaling.routes)
    app.router.add_routes(rebalance.routes)
    app.router.add_routes(oidc_login.routes)
