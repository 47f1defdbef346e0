"""``metavmm token``, ``metavmm project`` and ``metavmm user``: identity from the command line.

``metavmm token create --project P --role R [--user NAME]`` is how the first admin gets in: it creates
the project, the user and the membership if needed, and prints the token once (it is stored hashed).
These commands act on the database directly, so they are for whoever runs the broker, not for users
(``metavmm project costs NAME`` is the showback ``GET /projects/{id}/costs`` gives members over REST).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.table import Table

from metavmm.catalog import db
from metavmm.catalog.enums import Role
from metavmm.cli.common import Settings, console, pass_settings, yes
from metavmm.foundation.errors import MetavmmError

if TYPE_CHECKING:  # SQLModel, the tables and the identity service load when a command runs, not for --help
    from sqlmodel.ext.asyncio.session import AsyncSession

    from metavmm.services.spend import FederationCosts

T = TypeVar("T")
ROLES = click.Choice([r.value for r in Role])


def _run(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async def go() -> T:
        await db.upgrade_async(settings.database)
        engine = db.make_engine(settings.database)
        try:
            async with db.session_scope(db.make_sessionmaker(engine)) as session:
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(go())


@click.group("token")
def token_group() -> None:
    """API tokens for scripts and OCCI clients."""


@token_group.command("create")
@click.option("--project", required=True, help="project name (created if missing)")
@click.option("--role", type=ROLES, default="member", show_default=True)
@click.option("--user", "user_name", default=None, help="user name (created if missing); default: the project's "
              "name with the role, e.g. ops-admin")
@click.option("--name", default="cli", show_default=True, help="a label for the token")
@click.option("--days", type=click.IntRange(1, 3650), default=None, help="lifetime (default: no expiry)")
@pass_settings
def token_create(settings: Settings, project: str, role: str, user_name: str | None, name: str,
                 days: int | None) -> None:
    """Mint a token (and its project, user and membership if needed); prints the secret once."""
    from metavmm.services.identity import get_or_create_project, get_or_create_user, mint_token, rank, set_membership

    rank(role)

    async def work(session: AsyncSession) -> tuple[str, str, str]:
        proj = await get_or_create_project(session, project)
        user = await get_or_create_user(session, user_name or f"{project}-{role}")
        await set_membership(session, user.id or 0, proj.id or 0, role)
        row, secret = await mint_token(session, user_id=user.id or 0, project_id=proj.id or 0, role=role, name=name,
                                       days=days)
        return secret, user.name, row.id

    secret, user, token_id = _run(settings, work)
    console.print(f"token {token_id} for user {user}, {role} in project {project} (shown once):", highlight=False)
    click.echo(secret)


@token_group.command("list")
@click.option("--project", default=None, help="only tokens of this project")
@pass_settings
def token_list(settings: Settings, project: str | None) -> None:
    """List tokens (never their secrets)."""
    from sqlmodel import select

    from metavmm.catalog.models import ApiToken, Project, User

    async def work(session: AsyncSession) -> list[Any]:
        stmt = (select(ApiToken, User.name, Project.name).join(User, User.id == ApiToken.user_id)
                .join(Project, Project.id == ApiToken.project_id).order_by(ApiToken.created_at))
        if project:
            stmt = stmt.where(Project.name == project)
        return list((await session.exec(stmt)).all())

    table = Table(title="API tokens")
    for col in ("id", "prefix", "name", "user", "project", "role", "expires", "revoked"):
        table.add_column(col)
    for tok, user, proj in _run(settings, work):
        table.add_row(tok.id, tok.prefix + "...", tok.name, user, proj, tok.role,
                      str(tok.expires_at or "-"), "yes" if tok.revoked else "no")
    console.print(table)


@token_group.command("revoke")
@click.argument("token_id")
@pass_settings
def token_revoke(settings: Settings, token_id: str) -> None:
    """Revoke a token by id."""
    from metavmm.catalog.models import ApiToken
    from metavmm.services.identity import revoke_api_token

    async def work(session: AsyncSession) -> bool:
        row = await session.get(ApiToken, token_id)
        if row is None:
            return False
        await revoke_api_token(session, row)
        return True

    if not _run(settings, work):
        raise click.BadParameter(f"no token {token_id}", param_hint="TOKEN_ID")
    console.print(f"token {token_id} revoked")


@click.group("project")
def project_group() -> None:
    """Projects."""


@project_group.command("create")
@click.argument("name")
@click.option("--description", default="")
@pass_settings
def project_create(settings: Settings, name: str, description: str) -> None:
    """Create a project (no error if it exists)."""
    from metavmm.services.identity import get_or_create_project

    async def work(session: AsyncSession) -> int:
        proj = await get_or_create_project(session, name)
        if description:
            proj.description = description
            session.add(proj)
        return proj.id or 0

    console.print(f"project {name} (id {_run(settings, work)})")


@project_group.command("costs")
@click.argument("name", required=False)
@click.option("--period", default=None, metavar="YYYY-MM", help="the month (UTC); default: this month")
@click.option("--json", "as_json", is_flag=True, help="print JSON (the REST answer's shape) instead of a table")
@pass_settings
def project_costs(settings: Settings, name: str | None, period: str | None, as_json: bool) -> None:
    """What a project's workloads cost in a month, from the spend ledger (showback): hours each ran in the
    month at its price, running ones up to now, deleted ones included. Without NAME: every project's and
    every provider's totals (``GET /costs``)."""
    from sqlmodel import select

    from metavmm.catalog.models import Project
    from metavmm.foundation.errors import NotFound
    from metavmm.services.spend import FederationCosts, ProjectCosts, federation_costs
    from metavmm.services.spend import project_costs as read

    async def work(session: AsyncSession) -> ProjectCosts | FederationCosts:
        if name is None:
            return await federation_costs(session, period)
        project = (await session.exec(select(Project).where(Project.name == name))).first()
        if project is None or project.id is None:
            raise NotFound(f"no project {name}")
        return await read(session, project.id, period)

    try:
        costs = _run(settings, work)
    except MetavmmError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        from metavmm.api.rest.identity import costs_out, federation_costs_out

        out = federation_costs_out(costs) if isinstance(costs, FederationCosts) else costs_out(costs)
        click.echo(out.model_dump_json(indent=2))
        return
    if isinstance(costs, FederationCosts):
        _federation_tables(costs)
    else:
        table = Table(title=f"costs of {costs.project} in {costs.period}")
        columns = ("workload", "kind", "provider", "site", "flavor", "hours", "amount", "one-off", "currency",
                   "price", "burst", "running")
        for column in columns:
            table.add_column(column, justify="right" if column in ("hours", "amount", "one-off") else "left")
        for c in costs.lines:
            table.add_row(c.workload_name, c.kind, c.provider or "-", c.site or "-", c.flavor or "-",
                          f"{c.hours:.2f}", f"{c.amount:.4f}", f"{c.one_off:.4f}" if c.one_off else "-",
                          c.currency or "-", ",".join(c.price_sources), c.burst_policy or "-", yes(c.running))
        console.print(table)
    for currency, amount in sorted(costs.totals.items()):
        console.print(f"total {amount:.4f} {currency or '(unpriced)'}")


def _federation_tables(costs: FederationCosts) -> None:
    for title, groups in (("project", costs.projects), ("provider", costs.providers)):
        table = Table(title=f"costs per {title} in {costs.period}")
        for column in (title, "workloads", "hours", "amount"):
            table.add_column(column, justify="left" if column == title else "right")
        for g in groups:
            amounts = ", ".join(f"{a:.4f} {c or '(unpriced)'}" for c, a in sorted(g.totals.items()))
            table.add_row(g.name, str(g.workloads), f"{g.hours:.2f}", amounts)
        console.print(table)


@click.group("user")
def user_group() -> None:
    """Users, their memberships and client certificates."""


@user_group.command("add")
@click.argument("name")
@click.option("--project", required=True)
@click.option("--role", type=ROLES, default="member", show_default=True)
@click.option("--oidc-subject", default=None, help="the `sub` of this user's OIDC tokens")
@pass_settings
def user_add(settings: Settings, name: str, project: str, role: str, oidc_subject: str | None) -> None:
    """Create a user if needed and give them a role in a project."""
    from metavmm.services.identity import get_or_create_project, get_or_create_user, set_membership

    async def work(session: AsyncSession) -> None:
        proj = await get_or_create_project(session, project)
        user = await get_or_create_user(session, name)
        if oidc_subject:
            user.oidc_subject = oidc_subject
            session.add(user)
        await set_membership(session, user.id or 0, proj.id or 0, role)

    _run(settings, work)
    console.print(f"user {name}: {role} in project {project}")


@user_group.command("map-cert")
@click.argument("name")
@click.option("--subject", required=True, help="RFC 4514 subject, e.g. CN=alice,O=NCHC,C=TW")
@click.option("--project", required=True)
@pass_settings
def user_map_cert(settings: Settings, name: str, subject: str, project: str) -> None:
    """Let an X.509 client certificate with this subject act as the user in the project."""
    from sqlmodel import select

    from metavmm.catalog.models import ClientCertificate, Project, User
    from metavmm.services.identity import canonical_subject

    async def work(session: AsyncSession) -> None:
        user = (await session.exec(select(User).where(User.name == name))).first()
        proj = (await session.exec(select(Project).where(Project.name == project))).first()
        if user is None or proj is None:
            raise click.BadParameter(f"no user {name} or project {project}")
        session.add(ClientCertificate(subject=canonical_subject(subject), user_id=user.id or 0,
                                      project_id=proj.id or 0))

    _run(settings, work)
    console.print(f"certificate {subject} maps to {name} in {project}", highlight=False)


def register(main: click.Group) -> None:
    """Add the identity command groups to the ``metavmm`` command."""
    for group in (token_group, project_group, user_group):
        main.add_command(group)
