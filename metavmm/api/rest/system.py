"""The API itself: index, version, the OpenAPI document and its docs page (all public)."""

from __future__ import annotations

from functools import cache
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from metavmm import __version__
from metavmm.api.rest.framework import RestModule

api = RestModule("system", "The API itself")


class ApiIndex(BaseModel):
    version: str
    api: str
    links: dict[str, str]


@api.route("GET", "/", summary="API index", response=ApiIndex, role="public")
async def index(_request: web.Request) -> ApiIndex:
    return ApiIndex(version=__version__, api="v1", links={"health": "/healthz", "ready": "/readyz",
                                                          "openapi": "/api/v1/openapi.json", "docs": "/api/v1/docs"})


@cache
def document() -> dict[str, Any]:
    """The OpenAPI document of every registered module (built once per process: routes do not change)."""
    from metavmm.api.rest import modules
    from metavmm.api.rest.openapi import build

    return build(modules())


@api.route("GET", "/openapi.json", summary="The OpenAPI 3.1 document of this API", response=dict[str, Any],
           role="public")
async def openapi_json(_request: web.Request) -> dict[str, Any]:
    return document()


@api.route("GET", "/docs", summary="Browsable API documentation (HTML, works offline)", response=str,
           media_type="text/html", role="public")
async def docs_page(_request: web.Request) -> web.Response:
    from metavmm.api.rest.openapi import docs_page as page

    return web.Response(text=page(), content_type="text/html")
