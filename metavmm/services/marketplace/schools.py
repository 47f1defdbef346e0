"""Schools and publisher namespaces: the groups and grants admins manage.

A school is a named group of member projects; an image published with ``school`` visibility is seen by
its owning project and every project sharing a school with it (the rule itself is
:class:`~metavmm.services.marketplace.entries.Audience`). A publisher namespace is owned by one project
(see :func:`~metavmm.services.marketplace.publish.claim_namespace`); an admin may grant it to another.
Callers check the admin role; these functions check only the catalog.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.models import Project, Publisher, School, SchoolMember, aware
from metavmm.foundation.errors import Conflict, NotFound

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class SchoolIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128, pattern=NAME)
    description: str = Field(default="", max_length=10_000)


UtcTime = Annotated[datetime, AfterValidator(aware)]
"""A catalog timestamp as UTC (SQLite reads it back naive)."""


class SchoolOut(BaseModel):
    name: str
    description: str
    created_at: UtcTime
    projects: list[str] = Field(description="member projects, by name")


class PublisherOut(BaseModel):
    name: str
    project: str | None = Field(description="the owning project; null: the broker's own")
    granted_by: str | None = Field(description="the admin who granted it; null: claimed by a first publish")
    created_at: UtcTime


async def _school(session: AsyncSession, name: str) -> School:
    row = (await session.exec(select(School).where(School.name == name))).first()
    if row is None:
        raise NotFound(f"no school {name}")
    return row


async def project_by_ref(session: AsyncSession, ref: str | int) -> Project:
    """A project by id or by name."""
    row = await session.get(Project, int(ref)) if str(ref).isdigit() else None
    if row is None:
        row = (await session.exec(select(Project).where(Project.name == str(ref)))).first()
    if row is None:
        raise NotFound(f"no project {ref}")
    return row


async def school_out(session: AsyncSession, school: School) -> SchoolOut:
    names = (await session.exec(select(Project.name).join(SchoolMember, col(SchoolMember.project_id) == Project.id)
                                .where(SchoolMember.school_id == school.id).order_by(Project.name))).all()
    return SchoolOut(name=school.name, description=school.description, created_at=school.created_at,
                     projects=list(names))


async def create_school(session: AsyncSession, body: SchoolIn) -> SchoolOut:
    if (await session.exec(select(School).where(School.name == body.name))).first() is not None:
        raise Conflict(f"school {body.name} already exists")
    school = School(name=body.name, description=body.description)
    session.add(school)
    await session.flush()
    return await school_out(session, school)


async def list_schools(session: AsyncSession) -> list[SchoolOut]:
    return [await school_out(session, s) for s in (await session.exec(select(School).order_by(School.name))).all()]


async def show_school(session: AsyncSession, name: str) -> SchoolOut:
    return await school_out(session, await _school(session, name))


async def add_member(session: AsyncSession, school_name: str, project_ref: str | int) -> SchoolOut:
    """Make a project a member (adding a member twice is a no-op: the answer is the same)."""
    school, project = await _school(session, school_name), await project_by_ref(session, project_ref)
    assert school.id is not None and project.id is not None
    if await session.get(SchoolMember, (school.id, project.id)) is None:
        session.add(SchoolMember(school_id=school.id, project_id=project.id))
        await session.flush()
    return await school_out(session, school)


async def remove_member(session: AsyncSession, school_name: str, project_ref: str | int) -> SchoolOut:
    school, project = await _school(session, school_name), await project_by_ref(session, project_ref)
    row = await session.get(SchoolMember, (school.id, project.id))
    if row is None:
        raise NotFound(f"project {project.name} is not a member of school {school.name}")
    await session.delete(row)
    await session.flush()
    return await school_out(session, school)


async def delete_school(session: AsyncSession, name: str) -> None:
    school = await _school(session, name)
    for row in (await session.exec(select(SchoolMember).where(SchoolMember.school_id == school.id))).all():
        await session.delete(row)
    await session.flush()
    await session.delete(school)


async def publisher_out(session: AsyncSession, row: Publisher) -> PublisherOut:
    project = await session.get(Project, row.project_id) if row.project_id is not None else None
    return PublisherOut(name=row.name, project=project.name if project else None, granted_by=row.granted_by,
                        created_at=row.created_at)


async def list_publishers(session: AsyncSession) -> list[PublisherOut]:
    rows = (await session.exec(select(Publisher).order_by(Publisher.name))).all()
    return [await publisher_out(session, r) for r in rows]


async def grant_publisher(session: AsyncSession, name: str, project_ref: str | int | None, *,
                          by: str) -> PublisherOut:
    """Give the namespace ``name`` to a project (None: the broker's own), whoever owned it before."""
    project = await project_by_ref(session, project_ref) if project_ref is not None else None
    row = await session.get(Publisher, name)
    if row is None:
        row = Publisher(name=name)
    row.project_id, row.granted_by = (project.id if project else None), by
    session.add(row)
    await session.flush()
    return await publisher_out(session, row)
