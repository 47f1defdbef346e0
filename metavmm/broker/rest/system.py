"""The API's own index and version."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from metavmm import __version__
from metavmm.broker.rest.framework import RestModule

api = RestModule("system", "The API itself")


class ApiIndex(BaseModel):
    version: str
    api: str
    links: dict[str, str]


@api.route("GET", "/", summary="API index", response=ApiIndex)
async def index(_request: web.Request) -> ApiIndex:
    return ApiIndex(version=__version__, api="v1", links={"health": "/healthz", "ready": "/readyz"})
