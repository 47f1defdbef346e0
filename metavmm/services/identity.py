"""Who is calling, in which project, with which role; and the API tokens that say so.

Every authenticated request carries one :class:`Identity` (request key :data:`metavmm.api.keys.IDENTITY`). Roles are
ordered: ``reader`` < ``member`` < ``project_admin`` < ``admin``. ``admin`` is federation-wide (a
membership with role admin in any project makes the user an admin everywhere); the other roles
hold in one project. An API token is minted for one user in one project with a role; when used,
its role is capped by the user's current membership, so removing a member disables their tokens.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from cryptography import x509
from cryptography.x509.oid import NameOID
from sqlalchemy import and_, delete, func
from sqlalchemy.orm import aliased
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.models import ApiToken, Membership, Project, Role, UiSession, User
from metavmm.foundation.errors import Forbidden, NotFound, ValidationError
from metavmm.services.vocabulary import DEFAULT_PROJECT

T = TypeVar("T", Project, User)
OPERATOR = "operator"
RANK = {Role.READER: 0, Role.MEMBER: 1, Role.PROJECT_ADMIN: 2, Role.ADMIN: 3}
TOKEN_PREFIX = "mvm_"


def rank(role: str) -> int:
    known = RANK.get(role)  # type: ignore[call-overload]  # a Role is a str: the common case, one lookup
    if known is not None:
        return known
    try:
        return RANK[Role(role)]
    except ValueError:
        raise ValidationError(f"unknown role {role!r}; expected one of {', '.join(r.value for r in Role)}") from None


def cap(role: str, ceiling: str) -> str:
    """The lower of two roles."""
    return role if rank(role) <= rank(ceiling) else ceiling


@dataclass(frozen=True)
class Identity:
    """The caller of one request. ``via`` says how it proved itself: token, oidc or x509."""

    user_id: int
    user: str
    project_id: int
    project: str
    role: str
    via: str

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    def at_least(self, role: str) -> bool:
        return rank(self.role) >= rank(role)

    def require(self, role: str) -> None:
        if not self.at_least(role):
            raise Forbidden(f"this needs the {role} role; you are {self.role} in project {self.project}")

    def can_manage(self, project_id: int) -> bool:
        """Admins manage every project; project admins their own."""
        return self.is_admin or (self.project_id == project_id and self.at_least(Role.PROJECT_ADMIN))


def canonical_subject(text: str) -> str:
    """A certificate subject as the broker stores and compares it: parsed as an RFC 4514 name and
    written back by cryptography, so spacing and escaping match what a presented certificate yields.
    Comparison is exact on that string (attribute types, order and values), never a substring."""
    try:
        name = x509.Name.from_rfc4514_string(text, {"emailAddress": NameOID.EMAIL_ADDRESS})
    except ValueError:
        raise ValidationError(f"{text!r} is not an RFC 4514 subject (e.g. CN=alice,O=NCHC,C=TW; "
                              "no space after commas, special characters escaped)") from None
    if not list(name):
        raise ValidationError("the subject names no attributes")
    return name.rfc4514_string()


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def effective_role(session: AsyncSession, user_id: int, project_id: int) -> str | None:
    """The user's role in the project: admin anywhere wins; None when the user is not a member."""
    rows = (await session.exec(select(Membership).where(Membership.user_id == user_id))).all()
    if any(m.role == Role.ADMIN for m in rows):
        return Role.ADMIN
    return next((m.role for m in rows if m.project_id == project_id), None)


async def identity_for(session: AsyncSession, user: User, project: Project, via: str,
                       ceiling: str = Role.ADMIN) -> Identity | None:
    role = await effective_role(session, user.id or 0, project.id or 0)
    if role is None:
        return None
    return Identity(user.id or 0, user.name, project.id or 0, project.name, cap(role, ceiling), via)


IDENTITY_TABLES = ("api_token", "membership", "user_account", "project")
"""What :func:`token_identity` reads: a cache of its answers ends when one of them changes."""


async def identity_from_token(session: AsyncSession, secret: str) -> Identity | None:
    """The identity an API token stands for, or None if it is unknown, revoked, expired or orphaned."""
    return (await token_identity(session, secret))[0]


async def token_identity(session: AsyncSession, secret: str) -> tuple[Identity | None, datetime | None]:
    """:func:`identity_from_token` and the token's expiry (a cache must not keep it longer). One query."""
    if not secret.startswith(TOKEN_PREFIX):
        return None, None
    identity, token = await _token_row_identity(session, ApiToken.secret_sha256 == hash_secret(secret))
    return identity, _expiry(token) if identity is not None and token is not None else None


async def token_and_identity(session: AsyncSession, secret: str) -> tuple[Identity, ApiToken] | None:
    """The identity of a presented secret with its token row (a dashboard session keeps the row's id)."""
    if not secret.startswith(TOKEN_PREFIX):
        return None
    identity, token = await _token_row_identity(session, ApiToken.secret_sha256 == hash_secret(secret))
    return (identity, token) if identity is not None and token is not None else None


async def identity_of_token_id(session: AsyncSession, token_id: str) -> Identity | None:
    """What the token with this id stands for now: None once it is revoked, expired or its user removed."""
    return (await _token_row_identity(session, ApiToken.id == token_id))[0]


async def _token_row_identity(session: AsyncSession, where: Any) -> tuple[Identity | None, ApiToken | None]:
    admin = aliased(Membership)
    is_admin = (select(func.count()).select_from(admin)
                .where(admin.user_id == ApiToken.user_id, admin.role == Role.ADMIN)
                .correlate(ApiToken).scalar_subquery())
    stmt = (select(ApiToken, User.name, Project.name, Membership.role, is_admin)
            .join(User, User.id == ApiToken.user_id).join(Project, Project.id == ApiToken.project_id)
            .outerjoin(Membership, and_(Membership.user_id == ApiToken.user_id,
                                        Membership.project_id == ApiToken.project_id))
            .where(where))
    row = (await session.exec(stmt)).first()
    if row is None:
        return None, None
    token, user, project, member_role, admin_count = row
    expires = _expiry(token)
    if token.revoked or (expires is not None and expires <= datetime.now(UTC)):
        return None, token
    role = Role.ADMIN if admin_count else member_role
    if role is None:
        return None, token
    return Identity(token.user_id, user, token.project_id, project, cap(role, token.role), "token"), token


def _expiry(token: ApiToken) -> datetime | None:
    return _aware(token.expires_at) if token.expires_at is not None else None


async def revoke_api_token(session: AsyncSession, token: ApiToken) -> None:
    """Revoke ``token`` and end the dashboard sessions opened with it (their rows go at once, on every
    broker sharing the catalog; a session resolves its token on each request anyway)."""
    token.revoked = True
    session.add(token)
    await session.exec(delete(UiSession).where(col(UiSession.token_id) == token.id))  # type: ignore[call-overload]


async def end_member_sessions(session: AsyncSession, user_id: int, project_id: int) -> None:
    """A membership removed: the user's dashboard sessions in that project end with it."""
    await session.exec(delete(UiSession).where(col(UiSession.user_id) == user_id,  # type: ignore[call-overload]
                                               col(UiSession.project_id) == project_id))


def _aware(ts: datetime) -> datetime:
    """SQLite returns naive timestamps; everything the broker writes is UTC."""
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


# --- services shared by the CLI and the REST API ---------------------------------------------------


async def _by_name(session: AsyncSession, model: type[T], name: str) -> T:
    row = (await session.exec(select(model).where(model.name == name))).first()  # type: ignore[attr-defined]
    if row is None:
        row = model(name=name)
        session.add(row)
        await session.flush()
    return row


async def get_or_create_project(session: AsyncSession, name: str) -> Project:
    return await _by_name(session, Project, name)


async def get_or_create_user(session: AsyncSession, name: str) -> User:
    return await _by_name(session, User, name)


async def set_membership(session: AsyncSession, user_id: int, project_id: int, role: str) -> Membership:
    rank(role)
    row = (await session.exec(select(Membership).where(Membership.user_id == user_id,
                                                       Membership.project_id == project_id))).first()
    if row is None:
        row = Membership(user_id=user_id, project_id=project_id, role=role)
    else:
        row.role = role
    session.add(row)
    await session.flush()
    return row


async def operator_identity(session: AsyncSession, project: str | None = None) -> Identity:
    """The caller of a ``metavmm`` command that changes workloads: whoever runs it holds the catalog's
    database, so it acts as an admin, in ``project`` (which must exist) or the default project (created
    if missing), through the same workload service as REST and OCCI callers. It is a value, not a user
    row: nothing about it is stored, and no token can stand for it."""
    if project is None or project == DEFAULT_PROJECT:
        row = await get_or_create_project(session, DEFAULT_PROJECT)
    else:
        row = (await session.exec(select(Project).where(Project.name == project))).first()
        if row is None:
            raise NotFound(f"no project {project}; create it with: metavmm project create {project}")
    return Identity(0, OPERATOR, row.id or 0, row.name, Role.ADMIN, "cli")


async def mint_token(session: AsyncSession, *, user_id: int, project_id: int, role: str, name: str = "",
                     days: int | None = None) -> tuple[ApiToken, str]:
    """A new API token: returns the row and the secret, which is shown once and never stored."""
    if await session.get(User, user_id) is None:
        raise NotFound(f"no user {user_id}")
    if await session.get(Project, project_id) is None:
        raise NotFound(f"no project {project_id}")
    rank(role)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires = datetime.now(UTC) + timedelta(days=days) if days else None
    row = ApiToken(name=name, prefix=secret[:12], secret_sha256=hash_secret(secret), user_id=user_id,
                   project_id=project_id, role=role, expires_at=expires)
    session.add(row)
    await session.flush()
    return row, secret
