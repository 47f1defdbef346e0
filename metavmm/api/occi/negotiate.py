"""Content negotiation, request parsing and response building: the one place that knows media types.

Handlers hand over a payload (categories, one entity, a collection, or a message) and this module
picks the rendering from ``Accept`` (406 when nothing fits), calls the pure renderer and builds the
response. It also enforces the protocol's version rule (501 for a client asking for OCCI > 1.2) and
parses request bodies by ``Content-Type``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from aiohttp import web

from metavmm import __version__
from metavmm.api.occi import render_json, render_text
from metavmm.api.occi.model import Action, Entity, Kind, Mixin
from metavmm.api.occi.parse import OcciRequest, parse_json, parse_text_fields, parse_text_plain, parse_uri_list
from metavmm.foundation.errors import (
    MetavmmError,
    MethodNotAllowed,
    NotAcceptable,
    PayloadTooLarge,
    UnsupportedMediaType,
    UnsupportedOperation,
    ValidationError,
)

OCCI_VERSION = (1, 2)
SERVER = f"metavmm/{__version__} OCCI/1.2"
TEXT_PLAIN, TEXT_OCCI, JSON, URI_LIST = "text/plain", "text/occi", "application/occi+json", "text/uri-list"
ALIASES = {"text/occi+plain": TEXT_PLAIN, "application/json": JSON}
ENTITY_MEDIA = (TEXT_PLAIN, TEXT_OCCI, JSON)
LIST_MEDIA = (TEXT_PLAIN, TEXT_OCCI, JSON, URI_LIST)
ACCEPTED = ", ".join(LIST_MEDIA)
"""What the server accepts in requests: every response says so in ``Accept`` (GFD.223 SHOULD)."""
_VERSION = re.compile(r"OCCI/(\d{1,4})\.(\d{1,4})")


@dataclass
class Categories:
    kinds: list[Kind] = field(default_factory=list)
    mixins: list[Mixin] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)


@dataclass
class Collection:
    entities: list[Entity]
    links: bool = False  # a collection of links (renders {"links": [...]} when empty)


Payload = Categories | Entity | Collection | str


def check_version(request: web.Request) -> None:
    """501 when the client's User-Agent asks for a newer OCCI than 1.2 (GFD.223, Versioning)."""
    for major, minor in _VERSION.findall(request.headers.get("User-Agent", "")):
        if (int(major), int(minor)) > OCCI_VERSION:
            raise UnsupportedOperation(f"this server implements OCCI/1.2; the client asked for OCCI/{major}.{minor}")


def _accept(header: str) -> list[tuple[str, float]]:
    out = []
    for i, item in enumerate(header.split(",")[:64]):
        media, *params = (p.strip() for p in item.split(";"))
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        if media:
            out.append((media.lower(), q - i * 1e-6))  # ties keep the client's order
    return sorted(out, key=lambda x: -x[1])


def choose(request: web.Request, offered: tuple[str, ...]) -> str:
    """The best of ``offered`` for the request's Accept header (text/plain when the client does not care)."""
    return choose_for(request.headers.get("Accept", ""), offered)


def choose_for(header: str, offered: tuple[str, ...]) -> str:
    """The best of ``offered`` for an Accept header's value (also one read from a request aiohttp could not
    parse, see :mod:`metavmm.api.server`); 406 when none fits."""
    header = header.strip()
    if not header:
        return offered[0]
    for media, q in _accept(header):
        if q <= 0:
            continue
        media = ALIASES.get(media, media)
        if media in offered:
            return media
        if media in ("*/*", "text/*"):
            return offered[0]
        if media == "application/*" and JSON in offered:
            return JSON
    if any(ALIASES.get(m, m) == URI_LIST for m, _ in _accept(header)):
        raise NotAcceptable("text/uri-list renders collections only; ask for text/plain, text/occi or "
                            "application/occi+json here")
    raise NotAcceptable(f"none of the accepted media types ({header[:200]}) is offered here; "
                        f"offered: {', '.join(offered)}")


async def read_request(request: web.Request) -> OcciRequest:
    """Parse the request's OCCI content: headers (text/occi) and/or the body, by Content-Type."""
    media = ALIASES.get(request.content_type, request.content_type)
    try:
        body = await request.read() if request.can_read_body else b""
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"the request body is larger than {request.client_max_size} bytes") from None
    headers = parse_text_fields(request.headers.items())
    if not body.strip():
        return headers
    if media == JSON:
        parsed = parse_json(body)
    else:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise ValidationError("the body is not UTF-8 text") from None
        if media in (TEXT_PLAIN, TEXT_OCCI, "application/octet-stream"):
            parsed = parse_text_plain(text) if media != TEXT_OCCI else parse_text_fields(())
        elif media == URI_LIST:
            parsed = parse_uri_list(text)
        else:
            raise UnsupportedMediaType(f"Content-Type {request.content_type!r} is not an OCCI rendering; send "
                                       f"text/plain, text/occi, application/occi+json or text/uri-list")
    if headers.empty:
        return parsed
    parsed.categories = headers.categories + parsed.categories
    parsed.links = headers.links + parsed.links
    parsed.attributes = {**headers.attributes, **parsed.attributes}
    parsed.locations = headers.locations + parsed.locations
    return parsed


def absolute(request: web.Request, path: str) -> str:
    """``path`` as a URL on the host the client asked."""
    return _absolute(request, [path])[0]


def _absolute(request: web.Request, paths: list[str]) -> list[str]:
    """``paths`` as URLs on the host the client asked (a listing's 1000 locations: the base is made once)."""
    base = f"{request.scheme}://{request.host}"
    return [p if "://" in p else base + p for p in paths]


def render(request: web.Request, payload: Payload, *, status: int = 200,
           locations: list[str] | None = None) -> web.Response:
    """Render ``payload`` in the negotiated media type. ``locations`` (paths) make a location listing."""
    offered = LIST_MEDIA if locations is not None else ENTITY_MEDIA
    media = choose(request, offered)
    urls = _absolute(request, locations or [])
    if media == JSON:
        body = json.dumps(_json_payload(payload), separators=(",", ":"))
        return _response(status, JSON, [], body)
    if media == URI_LIST:
        headers, text = render_text.render_uri_list(urls)
        return _response(status, URI_LIST, headers, text)
    fields = _text_fields(payload, urls)
    if media == TEXT_OCCI:
        headers, text = render_text.render_text_occi(fields)
    else:
        headers, text = render_text.render_text_plain(fields)
        if not fields and isinstance(payload, str):
            text = payload + "\n"
    return _response(status, media, headers, text)


def _json_payload(payload: Payload) -> object:
    if isinstance(payload, Categories):
        return render_json.render_categories(payload.kinds, payload.mixins, payload.actions)
    if isinstance(payload, Collection):
        return render_json.render_collection(payload.entities, links=payload.links)
    if isinstance(payload, Entity):
        return render_json.render_entity(payload)
    return {"message": payload}


def _text_fields(payload: Payload, urls: list[str]) -> render_text.Fields:
    if isinstance(payload, Categories):
        return render_text.category_fields([*payload.kinds, *payload.mixins, *payload.actions])
    if isinstance(payload, Collection):
        return render_text.location_fields(urls)
    if isinstance(payload, Entity):
        return render_text.entity_fields(payload)
    return []


def _response(status: int, media: str, headers: list[tuple[str, str]], body: str) -> web.Response:
    resp = web.Response(status=status, text=body, content_type=media)
    for name, value in headers:
        resp.headers.add(name, value)
    resp.headers["Server"] = SERVER
    resp.headers["Accept"] = ACCEPTED
    return resp


def error_response(request: web.Request, exc: MetavmmError | web.HTTPException) -> web.Response:
    """An OCCI error: the status and a message that says what was wrong, in the client's rendering."""
    status = exc.http_status if isinstance(exc, MetavmmError) else exc.status
    message = exc.message if isinstance(exc, MetavmmError) else (exc.text or exc.reason)
    try:
        media = choose(request, ENTITY_MEDIA)
    except MetavmmError:
        media = TEXT_PLAIN  # an error about Accept itself is answered in the mandatory rendering
    if media == JSON:
        resp = _response(status, JSON, [], json.dumps({"error": {"code": status, "message": message}}))
    else:
        resp = _response(status, TEXT_PLAIN if media != TEXT_OCCI else TEXT_OCCI, [], message + "\n")
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Basic realm="metavmm"'
    if isinstance(exc, web.HTTPMethodNotAllowed):
        resp.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
    elif isinstance(exc, MethodNotAllowed):
        resp.headers["Allow"] = ",".join(exc.allow)
    return resp
