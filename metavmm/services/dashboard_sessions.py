"""Dashboard sessions kept in the catalog (table ``ui_session``), not in a broker's memory.

A login opens a row; the browser's cookie holds a random id of which the catalog keeps only the SHA-256,
so a copy of the table logs nobody in. Because the row is in the catalog, a session survives a broker
restart and every broker sharing the catalog honours it (no sticky sessions). Each request resolves the
identity again: from the API token the session was opened with (by the token's id: a revoked or expired
token, or a removed membership, ends the session at the next click), or, for an OIDC login, from the
user's membership capped at the role the login gave. Logout, the absolute end (``expires_at``), an idle
spell longer than :data:`IDLE` and a failed resolution delete the row; :func:`revoke_api_token
<metavmm.services.identity.revoke_api_token>` and :func:`end_member_sessions
<metavmm.services.identity.end_member_sessions>` delete a token's or a membership's rows at once.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, or_, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.db import is_busy
from metavmm.catalog.models import Project, UiSession, User, aware, utcnow
from metavmm.services.identity import Identity, hash_secret, identity_for, identity_of_token_id

log = logging.getLogger(__name__)

IDLE = timedelta(hours=8)
MAX_AGE = timedelta(hours=24)
TOUCH_EVERY = timedelta(seconds=60)  # last_seen_at is written at most this often: a page view is not a write
MAX_PER_USER = 50  # a login loop with a valid token cannot grow the table without bound


@dataclass(frozen=True)
class Opened:
    sid: str  # the cookie's value; shown to the browser once, never stored
    csrf: str
    expires_at: datetime


@dataclass(frozen=True)
class Resolved:
    identity: Identity
    csrf: str


async def open_session(session: AsyncSession, identity: Identity, *, token_id: str | None = None,
                       token_expires: datetime | None = None) -> Opened:
    """A new session for ``identity`` (a new id at every login: no fixation). Expired rows are swept here,
    so the table holds live sessions only without a background job."""
    now = utcnow()
    await sweep(session, now)
    mine = (await session.exec(select(UiSession.id_sha256).where(UiSession.user_id == identity.user_id)
                               .order_by(col(UiSession.last_seen_at).desc()).offset(MAX_PER_USER - 1))).all()
    if mine:
        await session.exec(delete(UiSession).where(col(UiSession.id_sha256).in_(mine)))  # type: ignore[call-overload]
    sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    ends = now + MAX_AGE if token_expires is None else min(now + MAX_AGE, aware(token_expires))
    session.add(UiSession(id_sha256=hash_secret(sid), user_id=identity.user_id, project_id=identity.project_id,
                          token_id=token_id, role=identity.role, via=identity.via, csrf=csrf, created_at=now,
                          expires_at=ends, last_seen_at=now))
    await session.flush()
    return Opened(sid, csrf, ends)


async def resolve(session: AsyncSession, sid: str | None, *, touch: bool = True) -> Resolved | None:
    """The identity and CSRF token of the session the cookie names, or None (and the row gone) when it
    is unknown, over, idle too long or its token or membership no longer holds. Commits what it changes.
    ``touch=False`` (an open event stream checking its session) leaves the idle clock alone: a tab left
    open is not a user at work, so its session still ends after :data:`IDLE`."""
    if not sid or len(sid) > 128:
        return None
    row = await session.get(UiSession, hash_secret(sid))
    if row is None:
        return None
    now = utcnow()
    identity = None
    if aware(row.expires_at) > now and aware(row.last_seen_at) + IDLE > now:
        identity = await _identity(session, row)
    # statements, not the ORM's row writes: another request (or broker) may have deleted the row meanwhile
    this = col(UiSession.id_sha256) == row.id_sha256
    csrf = row.csrf  # read now: a rollback below expires the row
    if identity is None:
        await session.exec(delete(UiSession).where(this))  # type: ignore[call-overload]
        await session.commit()
        return None
    if touch and now - aware(row.last_seen_at) >= TOUCH_EVERY:
        try:
            await session.exec(update(UiSession).where(this).values(last_seen_at=now))  # type: ignore[call-overload]
            await session.commit()
        except Exception as exc:  # the idle clock is best effort: a busy catalog must not fail the page view
            if not is_busy(exc):
                raise
            await session.rollback()
            log.info("dashboard session's last-seen time not written (catalog busy); the next request tries again")
    return Resolved(identity, csrf)


async def _identity(session: AsyncSession, row: UiSession) -> Identity | None:
    if row.token_id is not None:
        return await identity_of_token_id(session, row.token_id)
    user, project = await session.get(User, row.user_id), await session.get(Project, row.project_id)
    if user is None or project is None:
        return None
    return await identity_for(session, user, project, row.via, ceiling=row.role)


async def close(session: AsyncSession, sid: str | None) -> None:
    """Logout: the row goes, so the cookie is refused by every broker from now on."""
    if sid and len(sid) <= 128:
        await session.exec(delete(UiSession).where(  # type: ignore[call-overload]
            col(UiSession.id_sha256) == hash_secret(sid)))


async def sweep(session: AsyncSession, now: datetime | None = None) -> None:
    """Delete every session past its end or idle longer than :data:`IDLE`."""
    now = now or utcnow()
    await session.exec(delete(UiSession).where(  # type: ignore[call-overload]
        or_(col(UiSession.expires_at) <= now, col(UiSession.last_seen_at) <= now - IDLE)))


async def count(session: AsyncSession, **where: object) -> int:
    """How many sessions match (``user_id=``, ``token_id=``...): what tests and admins ask."""
    stmt = select(func.count()).select_from(UiSession)
    for name, value in where.items():
        stmt = stmt.where(getattr(UiSession, name) == value)
    return int((await session.exec(stmt)).one())
