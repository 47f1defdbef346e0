"""The dashboard under ``/ui``: server-rendered pages over the same services the REST handlers call.

A browser logs in with an API token (:mod:`.session`) and gets a session cookie; every page resolves the
caller with REST's rule and passes the same :class:`~metavmm.services.identity.Identity` to the services,
so roles and project scope cannot differ from the API's. Every POST carries the session's CSRF token.
Assets (CSS, JS) are files of this package: nothing is loaded from the internet. Live updates come from
``/ui/events``, the REST event stream's handler run with the session's identity (EventSource cannot send
an Authorization header).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web
from yarl import URL

from metavmm.api.auth import PUBLIC, ROLE_ATTR, default_role
from metavmm.api.errors import Handler
from metavmm.api.keys import IDENTITY, REQUEST_ID
from metavmm.api.ui import session as sess
from metavmm.foundation.errors import Forbidden, MetavmmError
from metavmm.services.operations.plan import transfer_of, transfer_text

log = logging.getLogger(__name__)
PREFIX = "/ui"
HERE = Path(__file__).parent
OPEN_PATHS = ("/ui/login", "/ui/static/", "/ui/oidc/")


STREAMS_BODY = "__ui_streams_body__"


def streams_body(handler: Handler) -> Handler:
    """Mark a POST handler that reads its multipart body as a stream (an upload must not be buffered by the
    middleware's form read): the middleware then leaves the CSRF check to the handler, which must make it
    before it acts on anything (:func:`metavmm.api.ui.publish.fields_then_file`)."""
    setattr(handler, STREAMS_BODY, True)
    return handler


@web.middleware
async def ui_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Session, CSRF and role checks, then errors rendered as an HTML page with the right status."""
    try:
        if not request.path.startswith(OPEN_PATHS):
            session = await sess.resolve(request)
            if session is None:
                if request.method == "GET":
                    raise _login_redirect(request)
                raise Forbidden("no dashboard session: log in again")
            if request.method not in ("GET", "HEAD") and not getattr(request.match_info.handler, STREAMS_BODY,
                                                                      False):
                form = await request.post() if request.content_type.startswith(("application/x-www-form",
                                                                                  "multipart/")) else {}
                sent = request.headers.get(sess.CSRF_HEADER) or form.get(sess.CSRF_FIELD)
                sess.check_csrf(session, sent if isinstance(sent, str) else None)
            session.identity.require(default_role(request.method))
            request[IDENTITY] = session.identity
            request[sess.SESSION] = session
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error_page(request, exc.status, exc.reason)
    except MetavmmError as exc:
        return _error_page(request, exc.http_status, exc.message)
    except Exception:
        rid = request.get(REQUEST_ID, "-")
        log.exception("unhandled error in %s %s (request %s)", request.method, request.path, rid)
        return _error_page(request, 500, f"the broker failed; quote request id {rid} to an admin")


def _login_redirect(request: web.Request) -> web.HTTPFound:
    target = request.path_qs if request.method == "GET" else "/ui/"
    return web.HTTPFound(str(URL("/ui/login").with_query(next=target)))


def _error_page(request: web.Request, status: int, message: str) -> web.Response:
    return aiohttp_jinja2.render_template("error.html", request, page_context(request, status=status, title="Error",
                                                                              message=message), status=status)


BREAK = re.compile(r"\r\n?")


async def form_fields(request: web.Request) -> dict[str, str]:
    """The text fields of a dashboard form, every line break as LF. Browsers send a textarea's line breaks as
    CR LF (the HTML form encoding), but user data and SSH keys reach the guest as given, and cloud-init does not
    recognise ``#cloud-config\\r``; a form cannot mean a bare CR, so this undoes the encoding (REST bodies are
    left as sent: their clients send what they mean)."""
    return {k: BREAK.sub("\n", v) for k, v in (await request.post()).items() if isinstance(v, str)}


def page_context(request: web.Request, **values: object) -> dict[str, object]:
    """What every template gets: the caller (None before login), the CSRF token, the current path."""
    session = request.get(sess.SESSION)
    return {"identity": request.get(IDENTITY), "csrf": session.csrf if session else "", "path": request.path,
            **values}


def _public(app: web.Application) -> None:
    """The root auth middleware must let dashboard routes through: this package checks the session itself."""
    for route in app.router.routes():
        setattr(route.handler, ROLE_ATTR, PUBLIC)


def create_ui() -> web.Application:
    from metavmm.api.ui import routes

    ui = web.Application(middlewares=[ui_middleware])
    env = aiohttp_jinja2.setup(ui, loader=jinja2.FileSystemLoader(str(HERE / "templates")),
                               autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined)
    env.globals["csrf_field"] = sess.CSRF_FIELD
    env.globals["transfer_of"] = transfer_of
    env.globals["transfer_text"] = transfer_text
    routes.add_routes(ui)
    ui.router.add_get("/static/{name}", static_file, name="static")
    _public(ui)
    return ui


STATIC = {p.name: p for p in (HERE / "static").iterdir() if p.suffix in (".css", ".js")}
MEDIA = {".css": "text/css", ".js": "text/javascript"}


async def static_file(request: web.Request) -> web.StreamResponse:
    """The package's own CSS and JS, by name only (no path reaches the file system)."""
    path = STATIC.get(request.match_info["name"])
    if path is None:
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={"Content-Type": MEDIA[path.suffix], "Cache-Control": "max-age=3600"})


def setup_ui(app: web.Application, ui: web.Application) -> None:
    """Mount the dashboard ``ui`` (:func:`create_ui`) at /ui, and send a browser's ``GET /`` there (see
    :func:`root_redirect`)."""
    app.add_subapp(PREFIX, ui)
    app.router.add_route("*", "/", root_redirect)


async def root_redirect(request: web.Request) -> web.StreamResponse:
    """``GET /`` from a browser (HTML accepted, no OCCI media type asked for) goes to the dashboard; any
    other client gets what OCCI answers for a path it does not serve."""
    accept, sent = request.headers.get("Accept", ""), request.headers.get("Content-Type", "")
    if request.method == "GET" and "text/html" in accept and "occi" not in accept and "occi" not in sent:
        raise web.HTTPFound(f"{PREFIX}/")
    raise web.HTTPNotFound()


setattr(root_redirect, ROLE_ATTR, PUBLIC)
