"""REST for schools (groups of projects sharing ``school`` images) and publisher namespaces: admin only.

Handlers stay thin: :mod:`metavmm.services.marketplace.schools` does the work; the visibility rule the
membership feeds is :class:`metavmm.services.marketplace.entries.Audience`.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from metavmm.api import keys
from metavmm.api.keys import identity_of
from metavmm.api.rest.framework import RestModule
from metavmm.catalog.db import session_scope
from metavmm.services.marketplace import schools as svc
from metavmm.services.marketplace.schools import PublisherOut, SchoolIn, SchoolOut

api = RestModule("schools", "Schools (groups of projects) and publisher namespaces, managed by admins")


class SchoolName(BaseModel):
    school: str = Field(min_length=1, max_length=128)


class SchoolProject(BaseModel):
    school: str = Field(min_length=1, max_length=128)
    project: str = Field(min_length=1, max_length=128, description="a project id or name")


class PublisherName(BaseModel):
    publisher: str = Field(min_length=1, max_length=255)


class GrantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    project: str | None = Field(description="the project (id or name) that will own it; null: the broker")


@api.route("GET", "/schools", summary="List schools and their member projects", response=list[SchoolOut],
           role="admin")
async def list_schools(request: web.Request) -> list[SchoolOut]:
    async with request.config_dict[keys.SESSIONS]() as session:
        return await svc.list_schools(session)


@api.route("POST", "/schools", summary="Create a school", body=SchoolIn, response=SchoolOut, status=201,
           role="admin", errors=("409",))
async def create_school(request: web.Request, body: SchoolIn) -> SchoolOut:
    async with session_scope(request.config_dict[keys.SESSIONS]) as session:
        return await svc.create_school(session, body)


@api.route("GET", "/schools/{school}", summary="Show a school", params=SchoolName, response=SchoolOut, role="admin")
async def show_school(request: web.Request, params: SchoolName) -> SchoolOut:
    async with request.config_dict[keys.SESSIONS]() as session:
        return await svc.show_school(session, params.school)


@api.route("DELETE", "/schools/{school}", summary="Delete a school (its projects stop sharing school images)",
           params=SchoolName, role="admin")
async def delete_school(request: web.Request, params: SchoolName) -> None:
    async with session_scope(request.config_dict[keys.SESSIONS]) as session:
        await svc.delete_school(session, params.school)


@api.route("PUT", "/schools/{school}/projects/{project}", summary="Add a member project", params=SchoolProject,
           response=SchoolOut, role="admin")
async def add_project(request: web.Request, params: SchoolProject) -> SchoolOut:
    async with session_scope(request.config_dict[keys.SESSIONS]) as session:
        return await svc.add_member(session, params.school, params.project)


@api.route("DELETE", "/schools/{school}/projects/{project}", summary="Remove a member project",
           params=SchoolProject, response=SchoolOut, role="admin")
async def remove_project(request: web.Request, params: SchoolProject) -> SchoolOut:
    async with session_scope(request.config_dict[keys.SESSIONS]) as session:
        return await svc.remove_member(session, params.school, params.project)


@api.route("GET", "/marketplace/publishers", summary="Publisher namespaces and their owners",
           response=list[PublisherOut], role="admin")
async def list_publishers(request: web.Request) -> list[PublisherOut]:
    async with request.config_dict[keys.SESSIONS]() as session:
        return await svc.list_publishers(session)


@api.route("PUT", "/marketplace/publishers/{publisher}", summary="Grant a publisher namespace to a project",
           params=PublisherName, body=GrantIn, response=PublisherOut, role="admin")
async def grant_publisher(request: web.Request, params: PublisherName, body: GrantIn) -> PublisherOut:
    async with session_scope(request.config_dict[keys.SESSIONS]) as session:
        return await svc.grant_publisher(session, params.publisher, body.project, by=identity_of(request).user)
