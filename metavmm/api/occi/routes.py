"""OCCI 1.2 HTTP routes at the root of the broker (GFD.223): thin handlers over :class:`OcciService`.

Each handler parses (:func:`negotiate.read_request`), calls the service, and renders
(:func:`negotiate.render`); errors become OCCI errors in the client's rendering in :func:`occi`.
Methods a path does not support answer 405 with ``Allow``. Every response of the application carries
``Server: metavmm/<version> OCCI/1.2``.

Call :func:`setup_occi` last in ``create_app``: mixin collections live at locations clients choose
(user mixins), served by one trailing-slash route that must come after every other route.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from metavmm.api import keys
from metavmm.api.occi import infrastructure as infra
from metavmm.api.occi.catalog_view import KINDS
from metavmm.api.occi.model import Entity, Kind, Mixin
from metavmm.api.occi.negotiate import (
    ACCEPTED,
    JSON,
    LIST_MEDIA,
    SERVER,
    Categories,
    Collection,
    check_version,
    choose,
    error_response,
    read_request,
    render,
)
from metavmm.api.occi.parse import OcciRequest
from metavmm.api.occi.service import RESOURCE_TERMS, OcciService, is_uuid
from metavmm.api.occi.upload import os_tpl_download, os_tpl_upload
from metavmm.catalog.changes import TtlCache
from metavmm.foundation.errors import MetavmmError, MethodNotAllowed, NotFound, PayloadTooLarge, ValidationError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_PAGE = 1000
DEFAULT_PAGE = 100
PAGING = f"default {DEFAULT_PAGE}, at most {MAX_PAGE}; ?page=N&number=M; the next page in Link rel=next"
QUERY_PATHS = ("/-/", "/.well-known/org/ogf/occi/-/")


def occi(methods: dict[str, Handler]) -> Handler:
    """One route handler dispatching by method; every error is rendered as an OCCI error."""
    allow = tuple(sorted({*methods, "HEAD"} if "GET" in methods else methods))

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            check_version(request)
            method = "GET" if request.method == "HEAD" else request.method
            if method not in methods:
                raise MethodNotAllowed(request.method, request.path, allow)
            return await methods[method](request)
        except MetavmmError as exc:
            return error_response(request, exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error_response(request, exc)

    return handle


# --- helpers -------------------------------------------------------------------------------------------------


def _query(request: web.Request) -> dict[str, str]:
    """Query parameters split on '&' and ';' (GFD.223's example uses ?page=1;number=100)."""
    out = {}
    for part in re.split(r"[&;]", request.query_string):
        name, _, value = part.partition("=")
        if name:
            out[name] = value
    return out


def _window(request: web.Request) -> tuple[int, int]:
    """GFD.223 paging, by default: ``page`` (from 1) of ``number`` entities (``DEFAULT_PAGE`` unless asked,
    at most ``MAX_PAGE``, else 413). The default keeps a text/occi collection (one X-OCCI-Location per
    entity, in headers) far under common clients' header limits (GFD.229: no truncation of header data)."""
    query = _query(request)
    try:
        page, number = int(query.get("page", "1")), int(query.get("number", str(DEFAULT_PAGE)))
    except ValueError:
        raise ValidationError("page and number must be integers") from None
    if page < 1 or number < 1:
        raise ValidationError("page starts at 1 and number must be at least 1")
    if number > MAX_PAGE:
        raise PayloadTooLarge(f"number={number} is more than this server renders at once (at most {MAX_PAGE})")
    return page, number


def _next_page(request: web.Request, page: int, number: int, after: str | None = None) -> str:
    """The URL of the page after ``page``, the request's other query parameters kept; ``after``: the id the
    page ended with (see :meth:`OcciService.locations`)."""
    rest = "&".join(f"{k}={v}" for k, v in _query(request).items() if k not in ("page", "number", "after"))
    return f"{request.scheme}://{request.host}{request.path}?page={page + 1}&number={number}" + \
        (f"&after={after}" if after else "") + (f"&{rest}" if rest else "")


def _page(request: web.Request, entities: list[Entity]) -> tuple[list[Entity], str | None]:
    """The requested page of ``entities`` (see :func:`_window`) and the next page's URL while there is one."""
    page, number = _window(request)
    chosen = entities[(page - 1) * number: page * number]
    return chosen, (None if len(entities) <= page * number else _next_page(request, page, number))


def _filter(entities: list[Entity], req: OcciRequest) -> list[Entity]:
    """Entities matching every Category and X-OCCI-Attribute the client sent as a filter."""
    out = []
    for e in entities:
        types = {e.kind.type_id, *(m.type_id for m in e.mixins)}
        if any(c.type_id not in types for c in req.categories):
            continue
        if any(str(e.attributes.get(k)) != str(v) for k, v in req.attributes.items()):
            continue
        out.append(e)
    return out


async def _collection(request: web.Request, entities: list[Entity], *, links: bool = False) -> web.Response:
    req = await read_request(request)
    chosen, after = _page(request, _filter(entities, req))
    return _listing(request, Collection(chosen, links=links), [e.location for e in chosen], after)


def _listing(request: web.Request, payload: Collection, locations: list[str], after: str | None) -> web.Response:
    resp = render(request, payload, locations=locations)
    resp.headers["X-OCCI-Paging"] = PAGING
    if after is not None:
        resp.headers.add("Link", f'<{after}>; rel="next"')  # RFC 8288, in every rendering
    return resp


def _sql_title(kind: Kind, req: OcciRequest) -> tuple[bool, str | None]:
    """Whether the filter the client sent can be applied in SQL, and the title it asks for: no filter, a
    Category naming the kind itself, and ``occi.core.title`` of a resource kind (the workload's name) can;
    any other Category (a mixin) or attribute cannot (the collection is then built whole, filtered, paged)."""
    if any(c.type_id != kind.type_id for c in req.categories):
        return False, None
    if set(req.attributes) - {"occi.core.title"} or (req.attributes and kind.term not in RESOURCE_TERMS):
        return False, None
    title = req.attributes.get("occi.core.title")
    return True, None if title is None else str(title)


async def _kind_listing(request: web.Request, svc: OcciService, kind: Kind, *, links: bool) -> web.Response:
    """A kind's collection. Unfiltered, or filtered in SQL (:func:`_sql_title`), only the page is read (issue 16
    item 14): as ids alone when it is listed as locations (every rendering but JSON), else its entities; either
    way the next-page link names the last entity listed (``after=``, see :meth:`OcciService._keyset`). Any other
    filter builds the collection whole, then filters and pages it."""
    req = await read_request(request)
    in_sql, title = _sql_title(kind, req)
    if not in_sql:
        chosen, after = _page(request, _filter(await svc.collection(kind), req))
        return _listing(request, Collection(chosen, links=links), [e.location for e in chosen], after)
    page, number = _window(request)
    window = ((page - 1) * number, number + 1)  # one more: is there a next page?
    marker = _query(request).get("after")
    marker = marker.lower() if marker and is_uuid(marker) else None
    chosen: list[Entity] = []
    if choose(request, LIST_MEDIA) == JSON:
        entities = await svc.collection(kind, window=window, after=marker, title=title)
        found, chosen = [e.location for e in entities], entities[:number]
    else:
        found = await svc.locations(kind, *window, after=marker, title=title)
    after = _next_page(request, page, number, found[number - 1].rsplit("/", 1)[1]) if len(found) > number else None
    return _listing(request, Collection(chosen, links=links), found[:number], after)


async def _created(request: web.Request, svc: OcciService, kind: Kind, path: str) -> web.Response:
    """201 with Location (absolute); the body lists the location, or is the entity in JSON."""
    url = f"{request.scheme}://{request.host}{path}"
    if choose(request, (JSON, "text/plain", "text/occi")) == JSON:
        resp = render(request, await svc.get(kind, path.rsplit("/", 1)[1]), status=201)
    else:
        resp = render(request, Collection([]), status=201, locations=[path])
    resp.headers["Location"] = url
    return resp


def _saving(request: web.Request, template: Mixin) -> web.Response:
    """The answer to a save (GFD.224: the rendering of the new OS template): 202 while the export runs,
    Location the os_tpl mixin's, the body its rendering (it joins the query interface when the image is
    published; until then its location answers 404)."""
    resp = render(request, Categories(kinds=[], mixins=[template]), status=202)
    resp.headers["Location"] = f"{request.scheme}://{request.host}{template.location}"
    return resp


def _action(request: web.Request, req: OcciRequest) -> str | None:
    """The ``?action=`` term; with it a JSON body must be an action invocation (GFD.225 requires its
    ``action`` member: the query string does not stand in for it), an empty body is no rendering at all."""
    value = _query(request).get("action")
    if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9\-_.]{0,63}", value):
        raise ValidationError(f"action={value[:64]!r} is not an action term")
    if value is not None and req.document not in (None, "action"):
        raise ValidationError("the action invocation: member 'action' is missing (GFD.225 requires action)")
    return value


def _deleted() -> web.Response:
    return web.Response(status=204, headers={"Server": SERVER})


# --- query interface -----------------------------------------------------------------------------------------


async def query_get(request: web.Request) -> web.Response:
    svc = await OcciService.for_request(request)
    reg = await svc.registry()
    req = await read_request(request)
    kinds, mixins, actions = reg.kinds, reg.mixins, reg.actions
    if req.categories:
        wanted = {c.type_id for c in req.categories}
        kinds = [k for k in kinds if k.type_id in wanted]
        mixins = [m for m in mixins if m.type_id in wanted or wanted & {*m.depends, *m.applies}]
        actions = [a for a in actions if a.type_id in wanted or any(a in k.actions for k in kinds)]
    resp = render(request, Categories(kinds, mixins, actions))
    resp.headers["X-OCCI-Paging"] = PAGING  # every kind and mixin collection is paged so
    return resp


async def query_post(request: web.Request) -> web.Response:
    svc = await OcciService.for_request(request)
    await svc.define_mixins((await read_request(request)).categories)
    return render(request, Categories(mixins=[]))


async def query_delete(request: web.Request) -> web.Response:
    svc = await OcciService.for_request(request)
    await svc.delete_mixins((await read_request(request)).categories)
    return render(request, Categories(mixins=[]))


# --- kind collections and entities -------------------------------------------------------------------------


def kind_routes(kind: Kind) -> tuple[Handler, Handler]:
    links = kind in infra.LINK_KINDS

    async def list_all(request: web.Request) -> web.Response:
        return await _kind_listing(request, await OcciService.for_request(request), kind, links=links)

    async def create_or_act(request: web.Request) -> web.Response:
        svc = await OcciService.for_request(request)
        req = await read_request(request)
        action = _action(request, req)
        if action is not None:
            for entity in await svc.collection(kind):
                if any(a.term == action for a in entity.actions):
                    await svc.act(kind, entity.id, action, req)
            return await _kind_listing(request, svc, kind, links=links)
        if not req.categories and not req.attributes:
            raise ValidationError(f"send a {kind.term} rendering (Category {kind.term} and its attributes)")
        path = await svc.create(kind, req, _clean_id(req.entity_id))
        return await _created(request, svc, kind, path)

    async def delete_all(request: web.Request) -> web.Response:
        await (await OcciService.for_request(request)).delete_all(kind)
        return _deleted()

    async def get_one(request: web.Request) -> web.Response:
        cache = request.app.get(keys.OCCI_READS)
        ident = request.get(keys.IDENTITY)
        if cache is None or ident is None:  # (no identity: for_request refuses)
            svc = await OcciService.for_request(request)
            return render(request, await svc.get(kind, request.match_info["id"]))
        # the answer (a 404 too) by project, path and how it is rendered; ended by any write (see _read_caches).
        # A hit needs nothing but the caller's project: the auth middleware already checked the role.
        key = (ident.project_id, request.path, request.headers.get("Accept", ""), request.host)

        async def read() -> tuple[tuple[int, bytes, CIMultiDict[str]], None]:
            svc = await OcciService.for_request(request)
            try:
                resp = render(request, await svc.get(kind, request.match_info["id"]))
            except NotFound as exc:
                resp = error_response(request, exc)
            assert isinstance(resp.body, bytes)
            return (resp.status, resp.body, CIMultiDict(resp.headers)), None

        # one catalog read for every request that misses at once (an entry ending under 32 concurrent GETs was read
        # 32 times, the pool's overflow connections opened for it in the loop's thread: stalls of 0.2 to 0.5 s)
        answer = await cache.read_through(key, read)
        assert answer is not None
        _offer(request, cache, key)
        return _replay(answer)

    async def update_or_act(request: web.Request) -> web.Response:
        svc = await OcciService.for_request(request)
        req = await read_request(request)
        entity_id = request.match_info["id"]
        action = _action(request, req)
        if action is None:
            await svc.update(kind, entity_id, req)
        elif (template := await svc.act(kind, entity_id, action, req)) is not None:
            return _saving(request, template)
        return render(request, await svc.get(kind, entity_id))

    async def put_one(request: web.Request) -> web.Response:
        svc = await OcciService.for_request(request)
        req = await read_request(request)
        entity_id = request.match_info["id"]
        try:
            await svc.get(kind, entity_id)
        except MetavmmError as exc:
            if exc.http_status != 404:
                raise
            return await _created(request, svc, kind, await svc.create(kind, req, entity_id))
        await svc.update(kind, entity_id, req, replace=True)
        return render(request, await svc.get(kind, entity_id))

    async def delete_one(request: web.Request) -> web.Response:
        await (await OcciService.for_request(request)).delete(kind, request.match_info["id"])
        return _deleted()

    collection = occi({"GET": list_all, "POST": create_or_act, "DELETE": delete_all})
    entity = occi({"GET": get_one, "POST": update_or_act, "PUT": put_one, "DELETE": delete_one})
    return collection, entity


def _offer(request: web.Request, cache: TtlCache[Any], key: Hashable) -> None:
    """Let the fast path (:mod:`metavmm.api.fastpath`) replay this answer to this caller, as it is, for as long as
    the read cache keeps it."""
    if (left := cache.left(key)) is not None:
        request[keys.REPLAYABLE] = left


def _replay(answer: tuple[int, bytes, CIMultiDict[str]]) -> web.Response:
    status, body, headers = answer
    return web.Response(status=status, body=body, headers=headers)


def _clean_id(entity_id: str | None) -> str | None:
    """The client's id for a POSTed entity when it is a UUID (bare, urn:uuid: or a location); else the
    server chooses (the JSON schema makes every client send an id, often a placeholder)."""
    if entity_id is None:
        return None
    clean = entity_id.removeprefix("urn:uuid:").rstrip("/").rsplit("/", 1)[-1].lower()
    return clean if is_uuid(clean) else None


# --- mixin collections ---------------------------------------------------------------------------------------


async def _mixin_at(request: web.Request) -> tuple[OcciService, Mixin | Kind]:
    svc = await OcciService.for_request(request)
    cat = (await svc.registry()).by_location(request.path)
    if cat is None:
        raise web.HTTPNotFound(text=f"nothing at {request.path}: not an entity, kind or mixin location")
    return svc, cat


async def mixin_get(request: web.Request) -> web.Response:
    svc, cat = await _mixin_at(request)
    if isinstance(cat, Kind):
        return await _collection(request, await svc.collection(cat))
    return await _collection(request, await svc.collection(None, cat))


async def download_get(request: web.Request) -> web.StreamResponse:
    """The os_tpl download extension's location: with ``os_tpl=`` a disk, else the (empty) mixin collection."""
    return await (os_tpl_download if "os_tpl" in request.query else mixin_get)(request)


async def mixin_post(request: web.Request) -> web.Response:
    svc, cat = await _mixin_at(request)
    if not isinstance(cat, Mixin):
        raise MethodNotAllowed("POST", request.path, ("GET",))
    req = await read_request(request)
    await svc.associate(cat, req.locations)
    return await _collection(request, await svc.collection(None, cat))


async def mixin_put(request: web.Request) -> web.Response:
    svc, cat = await _mixin_at(request)
    if not isinstance(cat, Mixin):
        raise MethodNotAllowed("PUT", request.path, ("GET",))
    await svc.associate(cat, (await read_request(request)).locations, replace=True)
    return await _collection(request, await svc.collection(None, cat))


async def mixin_delete(request: web.Request) -> web.Response:
    svc, cat = await _mixin_at(request)
    if not isinstance(cat, Mixin):
        raise MethodNotAllowed("DELETE", request.path, ("GET",))
    await svc.dissociate(cat, (await read_request(request)).locations)
    return render(request, Collection([]), locations=[])


# --- wiring --------------------------------------------------------------------------------------------------


def stamp(request: web.Request, response: web.StreamResponse) -> None:
    """Every response of the broker says ``Server: metavmm/<version> OCCI/1.2``, and outside ``/api/`` what the
    server accepts (GFD.223). The root middleware stamps what it returns or lets through; :func:`stamp_streams`
    what a handler sends itself before the middleware sees it."""
    response.headers["Server"] = SERVER
    if not request.path.startswith("/api/"):
        response.headers.setdefault("Accept", ACCEPTED)


async def _stamp_on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    stamp(request, response)


def stamp_streams(*apps: web.Application) -> None:
    """Stamp the responses the handlers of ``apps`` (the REST and dashboard sub-applications) prepare themselves
    (event streams, downloads). Not the root's: a signal per response costs a cached OCCI GET about 1.5 us, and
    the root middleware stamps everything else (issue 16 item 14)."""
    for app in apps:
        app.on_response_prepare.append(_stamp_on_prepare)


def setup_occi(app: web.Application) -> None:
    """Add the OCCI interface at the root of ``app`` (call it after every other route)."""
    query = occi({"GET": query_get, "POST": query_post, "DELETE": query_delete})
    for path in QUERY_PATHS:
        app.router.add_route("*", path, query)
    for kind in KINDS.values():
        collection, entity = kind_routes(kind)
        assert kind.location is not None
        app.router.add_route("*", kind.location + "{id}", entity)  # first: the router tries an entity's first
        app.router.add_route("*", kind.location, collection)
        app.router.add_route("*", kind.location.rstrip("/"), collection)
    assert infra.OS_TPL_UPLOAD.location is not None
    app.router.add_route("*", infra.OS_TPL_UPLOAD.location, occi({"GET": mixin_get, "PUT": os_tpl_upload}))
    assert infra.OS_TPL_DOWNLOAD.location is not None
    app.router.add_route("*", infra.OS_TPL_DOWNLOAD.location, occi({"GET": download_get}))
    mixins = occi({"GET": mixin_get, "POST": mixin_post, "PUT": mixin_put, "DELETE": mixin_delete})
    app.router.add_route("*", r"/{location:(?!api/)[A-Za-z0-9\-_./]+/}", mixins)
