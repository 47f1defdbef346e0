"""``metavmm school`` (groups of projects that share ``school`` images) and ``metavmm publisher``
(who owns a publisher namespace): the operator's side of what REST offers admins under ``/schools`` and
``/marketplace/publishers``, through the same services."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from rich.table import Table

from metavmm.cli.common import Settings, console, pass_settings
from metavmm.cli.identity import _run

if TYPE_CHECKING:  # the schools service (SQLModel, pydantic) loads when a command runs, not for --help
    from sqlmodel.ext.asyncio.session import AsyncSession

    from metavmm.services.marketplace.schools import PublisherOut, SchoolOut


def _show(school: SchoolOut) -> None:
    members = ", ".join(school.projects) or "no member projects"
    console.print(f"school {school.name}: {members}", highlight=False)


@click.group("school")
def school_group() -> None:
    """Schools: groups of projects that share school images."""


@school_group.command("create")
@click.argument("name")
@click.option("--description", default="")
@pass_settings
def school_create(settings: Settings, name: str, description: str) -> None:
    """Create a school (no member projects yet)."""
    from metavmm.services.marketplace import schools as svc

    body = svc.SchoolIn(name=name, description=description)

    async def work(session: AsyncSession) -> SchoolOut:
        return await svc.create_school(session, body)

    _show(_run(settings, work))


@school_group.command("list")
@pass_settings
def school_list(settings: Settings) -> None:
    """Schools and their member projects."""
    from metavmm.services.marketplace import schools as svc

    table = Table("school", "projects", "description")
    for school in _run(settings, svc.list_schools):
        table.add_row(school.name, ", ".join(school.projects), school.description)
    console.print(table)


@school_group.command("add")
@click.argument("school")
@click.argument("project")
@pass_settings
def school_add(settings: Settings, school: str, project: str) -> None:
    """Make PROJECT (a name or id) a member of SCHOOL."""
    from metavmm.services.marketplace import schools as svc

    async def work(session: AsyncSession) -> SchoolOut:
        return await svc.add_member(session, school, project)

    _show(_run(settings, work))


@school_group.command("remove")
@click.argument("school")
@click.argument("project")
@pass_settings
def school_remove(settings: Settings, school: str, project: str) -> None:
    """Remove PROJECT from SCHOOL (it stops seeing the school's images)."""
    from metavmm.services.marketplace import schools as svc

    async def work(session: AsyncSession) -> SchoolOut:
        return await svc.remove_member(session, school, project)

    _show(_run(settings, work))


@school_group.command("delete")
@click.argument("school")
@pass_settings
def school_delete(settings: Settings, school: str) -> None:
    """Delete SCHOOL (its projects stop sharing school images)."""
    from metavmm.services.marketplace import schools as svc

    async def work(session: AsyncSession) -> None:
        await svc.delete_school(session, school)

    _run(settings, work)
    console.print(f"school {school} deleted", highlight=False)


@click.group("publisher")
def publisher_group() -> None:
    """Publisher namespaces: which project publishes under which name."""


@publisher_group.command("list")
@pass_settings
def publisher_list(settings: Settings) -> None:
    """Namespaces and their owners (claimed by a first publish, or granted)."""
    from metavmm.services.marketplace import schools as svc

    table = Table("publisher", "project", "granted by")
    for row in _run(settings, svc.list_publishers):
        table.add_row(row.name, row.project or "(broker)", row.granted_by or "-")
    console.print(table)


@publisher_group.command("grant")
@click.argument("publisher")
@click.option("--project", help="the project (name or id) that will own it")
@click.option("--broker", is_flag=True, help="the broker's own (only admins publish into it)")
@pass_settings
def publisher_grant(settings: Settings, publisher: str, project: str | None, broker: bool) -> None:
    """Give PUBLISHER to a project (or to the broker), whoever owned it before."""
    from metavmm.services.marketplace import schools as svc

    if (project is None) == (not broker):
        raise click.UsageError("give exactly one of --project or --broker")

    async def work(session: AsyncSession) -> PublisherOut:
        return await svc.grant_publisher(session, publisher, project, by="cli")

    out = _run(settings, work)
    console.print(f"publisher {out.name}: {out.project or '(broker)'}", highlight=False)
