"""Projects, users, memberships, quotas, API tokens and client certificates.

Admins manage everything; a project admin manages its own project's members, tokens and settings
(never granting more than its own role); members and readers see their own project, themselves and
their own tokens. A token's secret is in the answer of its creation only; it is stored as a hash.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, or_
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.api import keys
from metavmm.api.keys import identity_of
from metavmm.api.rest.common import (
    INT_ID,
    NAME,
    OutModel,
    Timestamp,
    check_if_match,
    etag,
    id_model,
    lock_row,
    send_etag,
    sessions,
)
from metavmm.api.rest.framework import RestModule
from metavmm.api.rest.listing import Page, list_query, paginate
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import (
    ApiToken,
    ClientCertificate,
    Image,
    Membership,
    Operation,
    Project,
    Publisher,
    Quota,
    QuotaReservation,
    Role,
    SchoolMember,
    UiSession,
    User,
    Workload,
)
from metavmm.foundation.errors import Conflict, Forbidden, NotFound, ValidationError
from metavmm.services import quotas as quota_service
from metavmm.services import spend as spend_service
from metavmm.services.identity import (
    Identity,
    canonical_subject,
    end_member_sessions,
    mint_token,
    rank,
    revoke_api_token,
    set_membership,
)

api = RestModule("identity", "Projects, users, roles, quotas and API tokens")


class ProjectOut(OutModel):
    id: int
    name: str
    description: str
    created_at: Timestamp


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = NAME
    description: str = Field(default="", max_length=2000)


class ProjectPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str | None = Field(default=None, max_length=2000)


class UserOut(OutModel):
    id: int
    name: str
    email: str | None
    oidc_subject: str | None
    created_at: Timestamp


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = NAME
    email: str | None = Field(default=None, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")
    oidc_subject: str | None = Field(default=None, min_length=1, max_length=255)


class WhoAmI(BaseModel):
    user_id: int
    user: str
    project_id: int
    project: str
    role: Role
    via: str


class MemberOut(BaseModel):
    user_id: int
    user: str
    project_id: int
    role: Role


class MemberSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role


class QuotaOut(BaseModel):
    resource: str
    limit: Decimal | None = Field(description="None: no limit set")
    currency: str | None
    in_transit: Decimal = Field(description="reserved by requests the providers have not confirmed yet")
    committed: Decimal


class QuotaSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit: Decimal = Field(ge=0, le=Decimal("1e12"), max_digits=18, decimal_places=4)
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$", description="for budget_monthly")


class TokenOut(OutModel):
    id: str
    name: str
    prefix: str = Field(description="the first characters of the secret, to recognise it")
    user_id: int
    project_id: int
    role: Role
    created_at: Timestamp
    expires_at: Timestamp | None
    revoked: bool


class TokenCreated(TokenOut):
    secret: str = Field(description="the token itself: shown only now, stored only as a hash")


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="", max_length=128)
    role: Role | None = Field(default=None, description="default: your own role")
    user_id: int | None = Field(default=None, ge=1, le=2**31 - 1,
                                description="mint for another member of the project (project admins)")
    days: int | None = Field(default=None, ge=1, le=3650, description="lifetime; default: the configured maximum")


class CertificateOut(OutModel):
    id: int
    subject: str
    user_id: int
    project_id: int
    created_at: Timestamp


class CertificateCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subject: str = Field(min_length=3, max_length=512, description="RFC 4514 subject, e.g. CN=alice,O=NCHC,C=TW")
    project_id: int = INT_ID


ProjectId = id_model("ProjectId", "project_id")


UserId = id_model("UserId", "user_id")


class MemberId(BaseModel):
    project_id: int = INT_ID
    user_id: int = INT_ID


class QuotaKey(BaseModel):
    project_id: int = INT_ID
    resource: str = Field(pattern=quota_service.RESOURCE_PATTERN)


TokenId = id_model("TokenId", "token_id", uuid=True)


class CertificateId(BaseModel):
    user_id: int = INT_ID
    certificate_id: int = INT_ID


ProjectQuery = list_query("ProjectQuery", ["name", "created_at"], name=str)
MemberQuery = list_query("MemberQuery", ["user", "role"], role=Role)
CertificateQuery = list_query("CertificateQuery", ["subject", "created_at"])
UserQuery = list_query("UserQuery", ["name", "created_at"], name=str)
TokenQuery = list_query("TokenQuery", ["created_at", "name"], user_id=int, project_id=int, revoked=bool)


def _may_see_project(identity: Identity, project_id: int) -> None:
    if not identity.is_admin and identity.project_id != project_id:
        raise NotFound(f"no project {project_id}")


def _may_manage(identity: Identity, project_id: int) -> None:
    _may_see_project(identity, project_id)
    if not identity.can_manage(project_id):
        raise Forbidden(f"managing project {project_id} needs the project_admin role")


# --- who am I -----------------------------------------------------------------------------------


@api.route("GET", "/whoami", summary="The caller's identity, project and role", response=WhoAmI)
async def whoami(request: web.Request) -> WhoAmI:
    i = identity_of(request)
    return WhoAmI(user_id=i.user_id, user=i.user, project_id=i.project_id, project=i.project, role=Role(i.role),
                  via=i.via)


# --- projects -----------------------------------------------------------------------------------


@api.route("GET", "/projects", summary="List projects (yours, or all for admins)", query=ProjectQuery,
           response=Page[ProjectOut])
async def list_projects(request: web.Request, query: Any) -> Any:
    identity = identity_of(request)
    stmt = select(Project) if identity.is_admin else select(Project).where(Project.id == identity.project_id)
    async with sessions(request)() as session:
        return await paginate(session, stmt, query, {"name": Project.name, "created_at": Project.created_at},
                              ProjectOut.model_validate, Page[ProjectOut], default_sort=Project.id)


@api.route("POST", "/projects", summary="Create a project", body=ProjectCreate, response=ProjectOut, status=201,
           role="admin")
async def create_project(request: web.Request, body: ProjectCreate) -> ProjectOut:
    async with session_scope(sessions(request)) as session:
        if (await session.exec(select(Project).where(Project.name == body.name))).first():
            raise Conflict(f"a project named {body.name} exists")
        row = Project(name=body.name, description=body.description)
        session.add(row)
        await session.flush()
        out = ProjectOut.model_validate(row)
    send_etag(request, etag(out))
    return out


@api.route("GET", "/projects/{project_id}", summary="Show a project", params=ProjectId, response=ProjectOut,
           etag=True)
async def get_project(request: web.Request, params: ProjectId) -> ProjectOut:
    _may_see_project(identity_of(request), params.project_id)
    async with sessions(request)() as session:
        row = await session.get(Project, params.project_id)
    if row is None:
        raise NotFound(f"no project {params.project_id}")
    out = ProjectOut.model_validate(row)
    send_etag(request, etag(out))
    return out


@api.route("PATCH", "/projects/{project_id}", summary="Change a project (needs If-Match)", params=ProjectId,
           body=ProjectPatch, response=ProjectOut, role="project_admin", etag=True, if_match=True)
async def patch_project(request: web.Request, params: ProjectId, body: ProjectPatch) -> ProjectOut:
    _may_manage(identity_of(request), params.project_id)
    async with session_scope(sessions(request)) as session:
        await lock_row(session, Project, params.project_id)
        row = await session.get(Project, params.project_id)
        if row is None:
            raise NotFound(f"no project {params.project_id}")
        check_if_match(request, etag(ProjectOut.model_validate(row)))
        if body.description is not None:
            row.description = body.description
        session.add(row)
        await session.flush()
        out = ProjectOut.model_validate(row)
    send_etag(request, etag(out))
    return out


@api.route("DELETE", "/projects/{project_id}", summary="Delete an empty project", params=ProjectId, role="admin")
async def delete_project(request: web.Request, params: ProjectId) -> None:
    async with session_scope(sessions(request)) as session:
        row = await session.get(Project, params.project_id)
        if row is None:
            raise NotFound(f"no project {params.project_id}")
        for model in (Workload, Operation, Image, QuotaReservation):
            count = (await session.exec(select(func.count()).select_from(model)
                                        .where(model.project_id == row.id))).one()  # type: ignore[attr-defined]
            if count:
                raise Conflict(f"project {row.name} still has {count} {model.__tablename__} rows")
        for model in (UiSession, Membership, Quota, ApiToken, ClientCertificate, SchoolMember, Publisher):
            for dep in (await session.exec(select(model).where(model.project_id == row.id))).all():  # type: ignore[attr-defined]
                await session.delete(dep)
        await session.flush()
        await session.delete(row)


# --- members ------------------------------------------------------------------------------------


@api.route("GET", "/projects/{project_id}/members", summary="List a project's members and roles",
           params=ProjectId, query=MemberQuery, response=Page[MemberOut])
async def list_members(request: web.Request, params: ProjectId, query: Any) -> Any:
    _may_see_project(identity_of(request), params.project_id)
    stmt = (select(Membership, User).join(User, User.id == Membership.user_id)
            .where(Membership.project_id == params.project_id))

    def render(row: Any) -> MemberOut:
        m, u = row
        return MemberOut(user_id=u.id or 0, user=u.name, project_id=m.project_id, role=Role(m.role))

    async with sessions(request)() as session:
        return await paginate(session, stmt, query, {"user": User.name, "role": Membership.role}, render,
                              Page[MemberOut], default_sort=User.id)


@api.route("PUT", "/projects/{project_id}/members/{user_id}", summary="Add a member or change their role",
           params=MemberId, body=MemberSet, response=MemberOut, role="project_admin")
async def set_member(request: web.Request, params: MemberId, body: MemberSet) -> MemberOut:
    identity = identity_of(request)
    _may_manage(identity, params.project_id)
    if rank(body.role) > rank(identity.role):
        raise Forbidden(f"you cannot grant {body.role}, which is above your own role {identity.role}")
    async with session_scope(sessions(request)) as session:
        user = await session.get(User, params.user_id)
        if user is None or await session.get(Project, params.project_id) is None:
            raise NotFound(f"no user {params.user_id} or project {params.project_id}")
        if body.role != Role.ADMIN:
            await _keep_own_admin(session, identity, params.user_id, params.project_id)
        row = await set_membership(session, params.user_id, params.project_id, body.role)
    return MemberOut(user_id=user.id or 0, user=user.name, project_id=row.project_id, role=Role(row.role))


@api.route("DELETE", "/projects/{project_id}/members/{user_id}", summary="Remove a member (their tokens stop working)",
           params=MemberId, role="project_admin")
async def remove_member(request: web.Request, params: MemberId) -> None:
    identity = identity_of(request)
    _may_manage(identity, params.project_id)
    async with session_scope(sessions(request)) as session:
        row = (await session.exec(select(Membership).where(Membership.project_id == params.project_id,
                                                           Membership.user_id == params.user_id))).first()
        if row is None:
            raise NotFound(f"user {params.user_id} is not a member of project {params.project_id}")
        if rank(row.role) > rank(identity.role):
            raise Forbidden(f"you cannot remove a {row.role}")
        await _keep_own_admin(session, identity, params.user_id, params.project_id)
        await session.delete(row)
        await end_member_sessions(session, params.user_id, params.project_id)


async def _keep_own_admin(session: AsyncSession, identity: Identity, user_id: int, project_id: int) -> None:
    """An admin may not drop (remove or demote) their own last admin membership: the federation could be
    left with no one able to undo it. Another admin can."""
    if user_id != identity.user_id or not identity.is_admin:
        return
    admin_rows = (await session.exec(select(Membership).where(Membership.user_id == user_id,
                                                              Membership.role == Role.ADMIN))).all()
    if [m.project_id for m in admin_rows] == [project_id]:
        raise Conflict("this is your last admin membership; another admin must remove or change it")


# --- quotas -------------------------------------------------------------------------------------


@api.route("GET", "/projects/{project_id}/quotas", summary="A project's limits and use (in transit and committed)",
           params=ProjectId, response=list[QuotaOut])
async def list_quotas(request: web.Request, params: ProjectId) -> list[QuotaOut]:
    _may_see_project(identity_of(request), params.project_id)
    async with sessions(request)() as session:
        if await session.get(Project, params.project_id) is None:
            raise NotFound(f"no project {params.project_id}")
        limits = {q.resource: q for q in (await session.exec(select(Quota).where(
            Quota.project_id == params.project_id))).all()}
        used = await quota_service.usage(session, params.project_id)
    out = []
    for resource in sorted(set(limits) | set(used)):
        q = limits.get(resource)
        u = used.get(resource, {})
        out.append(QuotaOut(resource=resource, limit=q.limit if q else None, currency=q.currency if q else None,
                            in_transit=u.get("in_transit", Decimal(0)), committed=u.get("committed", Decimal(0))))
    return out


# --- costs (showback) ---------------------------------------------------------------------------


class CostQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    period: str | None = Field(default=None, pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$",
                               description="the month, YYYY-MM (UTC); default: this month")


class CostLineOut(BaseModel):
    workload_id: str
    workload_name: str
    kind: Literal["compute", "storage"] = Field(description="a compute (its hours running or stopped) or a "
                                                "volume (storage: its size while it exists, attached or not)")
    provider: str | None
    site: str | None
    flavor: str | None
    hours: Decimal = Field(description="hours it ran (a volume: existed) in the period (a running one: up to now)")
    amount: Decimal = Field(description="its cost in the period: the hours at each stretch's price, plus its "
                            "one-off charges")
    one_off: Decimal = Field(description="the part of amount that one-off charges make: the egress its moves "
                             "paid (a cross-site transfer of its disk, GiB x the price of the site it left)")
    currency: str | None = Field(description="None: no price was known (the hours count, the amount is 0)")
    price_sources: list[str] = Field(description="where the prices came from: placement (the price the "
                                     "scheduler placed it at, its disk included), storage (its disk alone, "
                                     "while it was stopped), volume (a volume's size at its site's storage "
                                     "price), egress (a move's one-off charge) or none")
    burst_policy: str | None = Field(description="the burst policy that sent it to a public cloud")
    running: bool = Field(description="still running (a volume: still there): its cost grows until the period "
                          "ends")


class CostTotalOut(BaseModel):
    currency: str | None
    amount: Decimal


class ProjectCostsOut(BaseModel):
    project_id: int
    project: str
    period: str
    start: Timestamp
    end: Timestamp
    totals: list[CostTotalOut]
    workloads: list[CostLineOut]


@api.route("GET", "/projects/{project_id}/costs", summary="A project's cost in a month, per workload (showback, "
           "from the spend ledger: deleted workloads included)", params=ProjectId, query=CostQuery,
           response=ProjectCostsOut)
async def project_costs(request: web.Request, params: ProjectId, query: CostQuery) -> ProjectCostsOut:
    _may_see_project(identity_of(request), params.project_id)
    async with sessions(request)() as session:
        return costs_out(await spend_service.project_costs(session, params.project_id, query.period))


def costs_out(costs: spend_service.ProjectCosts) -> ProjectCostsOut:
    """The REST (and ``metavmm project costs --json``) rendering of a project's costs."""
    return ProjectCostsOut(
        project_id=costs.project_id, project=costs.project, period=costs.period, start=costs.start, end=costs.end,
        totals=_totals_out(costs.totals),
        workloads=[CostLineOut(workload_id=c.workload_id, workload_name=c.workload_name, kind=c.kind,
                               provider=c.provider, site=c.site, flavor=c.flavor, hours=c.hours, amount=c.amount,
                               one_off=c.one_off, currency=c.currency,
                               price_sources=c.price_sources, burst_policy=c.burst_policy, running=c.running)
                   for c in costs.lines])


class CostGroupOut(BaseModel):
    key: str = Field(description="the project's id (empty: no project) or the provider's name (empty: unplaced)")
    name: str
    workloads: int = Field(description="workloads that accrued in the period")
    hours: Decimal
    totals: list[CostTotalOut]


class FederationCostsOut(BaseModel):
    period: str
    start: Timestamp
    end: Timestamp
    totals: list[CostTotalOut]
    projects: list[CostGroupOut]
    providers: list[CostGroupOut] = Field(description="a workload that moved counts at each provider for its "
                                          "hours there")


def _totals_out(totals: dict[str, Decimal]) -> list[CostTotalOut]:
    return [CostTotalOut(currency=c or None, amount=a) for c, a in sorted(totals.items())]


@api.route("GET", "/costs", summary="The federation's cost in a month, per project and per provider (admins; "
           "from the spend ledger: deleted workloads and projects included)", query=CostQuery,
           response=FederationCostsOut)
async def federation_costs(request: web.Request, query: CostQuery) -> FederationCostsOut:
    if not identity_of(request).is_admin:
        raise Forbidden("the federation's costs name every project: they need the admin role "
                        "(a project's own costs: GET /projects/{id}/costs)")
    async with sessions(request)() as session:
        return federation_costs_out(await spend_service.federation_costs(session, query.period))


def federation_costs_out(costs: spend_service.FederationCosts) -> FederationCostsOut:
    """The REST (and ``metavmm costs --json``) rendering of the federation's costs."""
    def groups(rows: list[spend_service.CostGroup]) -> list[CostGroupOut]:
        return [CostGroupOut(key=g.key, name=g.name, workloads=g.workloads, hours=g.hours,
                             totals=_totals_out(g.totals)) for g in rows]

    return FederationCostsOut(period=costs.period, start=costs.start, end=costs.end, totals=_totals_out(costs.totals),
                              projects=groups(costs.projects), providers=groups(costs.providers))


@api.route("PUT", "/projects/{project_id}/quotas/{resource}",
           summary="Set a limit: instances, vcpus, ram_mib, storage_gib, gpus:<MODEL> or budget_monthly",
           params=QuotaKey, body=QuotaSet, response=QuotaOut, role="admin")
async def set_quota(request: web.Request, params: QuotaKey, body: QuotaSet) -> QuotaOut:
    if params.resource == "budget_monthly" and not body.currency:
        raise ValidationError("budget_monthly needs a currency")
    async with session_scope(sessions(request)) as session:
        if await session.get(Project, params.project_id) is None:
            raise NotFound(f"no project {params.project_id}")
        await quota_service.lock_project(session, params.project_id)
        row = (await session.exec(select(Quota).where(Quota.project_id == params.project_id,
                                                      Quota.resource == params.resource))).first()
        row = row or Quota(project_id=params.project_id, resource=params.resource, limit=body.limit)
        row.limit, row.currency = body.limit, body.currency
        session.add(row)
        used = (await quota_service.usage(session, params.project_id)).get(params.resource, {})
    return QuotaOut(resource=params.resource, limit=body.limit, currency=body.currency,
                    in_transit=used.get("in_transit", Decimal(0)), committed=used.get("committed", Decimal(0)))


@api.route("DELETE", "/projects/{project_id}/quotas/{resource}", summary="Remove a limit", params=QuotaKey,
           role="admin")
async def delete_quota(request: web.Request, params: QuotaKey) -> None:
    async with session_scope(sessions(request)) as session:
        row = (await session.exec(select(Quota).where(Quota.project_id == params.project_id,
                                                      Quota.resource == params.resource))).first()
        if row is None:
            raise NotFound(f"project {params.project_id} has no {params.resource} limit")
        await session.delete(row)


# --- users --------------------------------------------------------------------------------------


def _users_visible(identity: Identity) -> Any:
    if identity.is_admin:
        return select(User)
    members = select(Membership.user_id).where(Membership.project_id == identity.project_id)
    if identity.at_least(Role.PROJECT_ADMIN):
        return select(User).where(User.id.in_(members))  # type: ignore[union-attr]
    return select(User).where(User.id == identity.user_id)


@api.route("GET", "/users", summary="List users (yourself; your project's for project admins; all for admins)",
           query=UserQuery, response=Page[UserOut])
async def list_users(request: web.Request, query: Any) -> Any:
    async with sessions(request)() as session:
        return await paginate(session, _users_visible(identity_of(request)), query,
                              {"name": User.name, "created_at": User.created_at}, UserOut.model_validate,
                              Page[UserOut], default_sort=User.id)


@api.route("POST", "/users", summary="Create a user", body=UserCreate, response=UserOut, status=201, role="admin")
async def create_user(request: web.Request, body: UserCreate) -> UserOut:
    async with session_scope(sessions(request)) as session:
        clash = or_(User.name == body.name, User.oidc_subject == body.oidc_subject) if body.oidc_subject \
            else User.name == body.name
        if (await session.exec(select(User).where(clash))).first():
            raise Conflict(f"a user named {body.name} (or with that OIDC subject) exists")
        row = User(name=body.name, email=body.email, oidc_subject=body.oidc_subject)
        session.add(row)
        await session.flush()
        return UserOut.model_validate(row)


@api.route("GET", "/users/{user_id}", summary="Show a user", params=UserId, response=UserOut)
async def get_user(request: web.Request, params: UserId) -> UserOut:
    async with sessions(request)() as session:
        row = (await session.exec(_users_visible(identity_of(request)).where(User.id == params.user_id))).first()
    if row is None:
        raise NotFound(f"no user {params.user_id}")
    return UserOut.model_validate(row)


@api.route("GET", "/users/{user_id}/certificates", summary="X.509 client certificates mapped to a user",
           params=UserId, query=CertificateQuery, response=Page[CertificateOut], role="admin")
async def list_certificates(request: web.Request, params: UserId, query: Any) -> Any:
    stmt = select(ClientCertificate).where(ClientCertificate.user_id == params.user_id)
    async with sessions(request)() as session:
        return await paginate(session, stmt, query, {"subject": ClientCertificate.subject,
                                                     "created_at": ClientCertificate.created_at},
                              CertificateOut.model_validate, Page[CertificateOut], default_sort=ClientCertificate.id)


@api.route("POST", "/users/{user_id}/certificates", summary="Map an X.509 client certificate subject to a user",
           params=UserId, body=CertificateCreate, response=CertificateOut, status=201, role="admin")
async def add_certificate(request: web.Request, params: UserId, body: CertificateCreate) -> CertificateOut:
    async with session_scope(sessions(request)) as session:
        if await session.get(User, params.user_id) is None or await session.get(Project, body.project_id) is None:
            raise NotFound(f"no user {params.user_id} or project {body.project_id}")
        subject = canonical_subject(body.subject)
        if (await session.exec(select(ClientCertificate).where(ClientCertificate.subject == subject))).first():
            raise Conflict(f"subject {subject} is already mapped")
        row = ClientCertificate(subject=subject, user_id=params.user_id, project_id=body.project_id)
        session.add(row)
        await session.flush()
        return CertificateOut.model_validate(row)


@api.route("DELETE", "/users/{user_id}/certificates/{certificate_id}", summary="Unmap a client certificate",
           params=CertificateId, role="admin")
async def delete_certificate(request: web.Request, params: CertificateId) -> None:
    async with session_scope(sessions(request)) as session:
        row = await session.get(ClientCertificate, params.certificate_id)
        if row is None or row.user_id != params.user_id:
            raise NotFound(f"no certificate {params.certificate_id} of user {params.user_id}")
        await session.delete(row)


# --- tokens -------------------------------------------------------------------------------------


def _tokens_visible(identity: Identity) -> Any:
    if identity.is_admin:
        return select(ApiToken)
    if identity.at_least(Role.PROJECT_ADMIN):
        return select(ApiToken).where(ApiToken.project_id == identity.project_id)
    return select(ApiToken).where(ApiToken.user_id == identity.user_id, ApiToken.project_id == identity.project_id)


@api.route("GET", "/tokens", summary="List API tokens (never their secrets)", query=TokenQuery,
           response=Page[TokenOut])
async def list_tokens(request: web.Request, query: Any) -> Any:
    async with sessions(request)() as session:
        return await paginate(session, _tokens_visible(identity_of(request)), query,
                              {"created_at": ApiToken.created_at, "name": ApiToken.name, "user_id": ApiToken.user_id,
                               "project_id": ApiToken.project_id, "revoked": ApiToken.revoked},
                              TokenOut.model_validate, Page[TokenOut], default_sort=ApiToken.id)


@api.route("POST", "/tokens", summary="Mint an API token in your project; the secret is shown once",
           body=TokenCreate, response=TokenCreated, status=201, role="member")
async def create_token(request: web.Request, body: TokenCreate) -> TokenCreated:
    identity = identity_of(request)
    role = body.role or Role(identity.role)
    if rank(role) > rank(identity.role):
        raise Forbidden(f"a token cannot have more than your own role ({identity.role})")
    user_id = body.user_id or identity.user_id
    if user_id != identity.user_id and not identity.can_manage(identity.project_id):
        raise Forbidden("minting tokens for others needs the project_admin role")
    max_days = _max_days(request)
    days = min(body.days or max_days, max_days)
    async with session_scope(sessions(request)) as session:
        if user_id != identity.user_id:
            stmt = select(Membership).where(Membership.user_id == user_id, Membership.project_id == identity.project_id)
            member = (await session.exec(stmt)).first()
            if member is None:
                raise NotFound(f"user {user_id} is not a member of project {identity.project}")
        row, secret = await mint_token(session, user_id=user_id, project_id=identity.project_id, role=role,
                                       name=body.name, days=days)
        return TokenCreated.model_validate({**row.model_dump(), "secret": secret})


def _max_days(request: web.Request) -> int:
    return request.config_dict[keys.CONFIG].auth.token_max_days


@api.route("DELETE", "/tokens/{token_id}", summary="Revoke an API token", params=TokenId, role="reader")
async def revoke_token(request: web.Request, params: TokenId) -> None:
    identity = identity_of(request)
    async with session_scope(sessions(request)) as session:
        row = (await session.exec(_tokens_visible(identity).where(ApiToken.id == params.token_id))).first()
        if row is None:
            raise NotFound(f"no token {params.token_id}")
        await revoke_api_token(session, row)
