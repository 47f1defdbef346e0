"""What needs a person now, read from the catalog as it is (there is no alert store).

Failed provider syncs, failed operations of the caller's projects, quotas at 80 % or more (in-transit
reservations counted, as :func:`metavmm.services.quotas.usage` reports them), prices older than the rate
table's ``stale_after_days``, a stale rate table, image lists whose last sync failed and expired images.
The dashboard's alerts screen renders :func:`current`; the event stream (:mod:`metavmm.services.events`)
compares it with what it last told a client and sends the alerts raised and cleared since, so an alert
reaches an open page without a reload. Both read it with the caller's scope: a member sees the failed
operations, quotas and images of their own project only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, timedelta
from decimal import Decimal

from sqlalchemy import func, true
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.models import (
    ImageListSubscription,
    Operation,
    OperationState,
    Price,
    Project,
    Provider,
    Quota,
    aware,
)
from metavmm.foundation.logs import redact
from metavmm.scheduler.pricing import RateTable
from metavmm.services import quotas
from metavmm.services.identity import Identity
from metavmm.services.marketplace.entries import ImageQuery, audience_for, search
from metavmm.services.marketplace.subscriptions import status_of
from metavmm.services.scope import visible

NEAR_FULL = Decimal("0.8")
LIMIT = 50  # failed operations and expired images listed (the newest)


@dataclass(frozen=True)
class Alert:
    kind: str  # sync, operation, quota, price, image list, image
    what: str  # the thing it is about, as a person names it
    message: str
    href: str | None = None  # where the dashboard shows more

    @property
    def key(self) -> str:
        """One alert's identity across looks: its kind and subject (a message that changes is the same alert)."""
        return f"{self.kind}:{self.what}"

    def as_dict(self) -> dict[str, str | None]:
        return {**asdict(self), "key": self.key}


async def current(session: AsyncSession, caller: Identity, rates: RateTable, today: date | None = None) -> list[Alert]:
    """Every alert the caller may see now, in a stable order (by kind, then as each query orders them)."""
    today = today or date.today()
    out = [Alert("sync", p.name, redact(p.sync_error or "")) for p in (await session.exec(
        select(Provider).where(col(Provider.sync_error).is_not(None)).order_by(col(Provider.name)))).all()]
    for op in (await session.exec(select(Operation).where(
            visible(caller, Operation), col(Operation.state).in_((OperationState.FAILED, OperationState.ROLLED_BACK)))
            .order_by(col(Operation.updated_at).desc(), col(Operation.id)).limit(LIMIT))).all():
        out.append(Alert("operation", f"{op.kind} {op.id[:8]}", redact(op.error or op.state),
                         f"/ui/workloads/{op.target_id}" if op.target_id else "/ui/operations?state=failed"))
    out += await _quotas(session, caller)
    oldest = today - timedelta(days=rates.stale_after_days)
    for name, count, newest in (await session.exec(
            select(Provider.name, func.count(col(Price.id)), func.max(Price.effective_date))
            .join(Provider, col(Provider.id) == col(Price.provider_id))
            .where(col(Price.effective_date) < oldest).group_by(Provider.name).order_by(Provider.name))).all():
        out.append(Alert("price", name, f"{count} prices older than {rates.stale_after_days} days "
                                        f"(newest of them {newest})"))
    age = rates.age_days(today)
    if age is not None and age > rates.stale_after_days:
        out.append(Alert("price", "exchange rates", f"the rate table is {age} days old"))
    for sub in (await session.exec(select(ImageListSubscription).where(col(ImageListSubscription.enabled))
                                   .order_by(col(ImageListSubscription.name)))).all():
        status = status_of(sub)
        if status in ("failing", "expired"):
            expiry = f"the list expired {aware(sub.list_expires_at):%Y-%m-%d %H:%M} UTC" if status == "expired" else ""
            out.append(Alert("image list", sub.name, "; ".join(m for m in (expiry, redact(sub.last_error or "")) if m)))
    expired, _ = await search(session, ImageQuery(state=["expired"], limit=LIMIT), await audience_for(session, caller))
    out += [Alert("image", f"{image.name} v{image.version}", "expired") for image in expired]
    return out


async def _quotas(session: AsyncSession, caller: Identity) -> list[Alert]:
    """Quotas of the caller's projects (an admin's: all) used at :data:`NEAR_FULL` or more, in transit counted."""
    out = []
    projects = (await session.exec(select(Project).where(
        true() if caller.is_admin else col(Project.id) == caller.project_id).order_by(col(Project.name)))).all()
    for project in projects:
        limits = (await session.exec(select(Quota).where(Quota.project_id == project.id)
                                     .order_by(col(Quota.resource)))).all()
        if not limits:
            continue
        used = await quotas.usage(session, project.id or 0)
        for q in limits:
            u = used.get(q.resource, {})
            total = u.get("in_transit", Decimal(0)) + u.get("committed", Decimal(0))
            if q.limit > 0 and total / q.limit >= NEAR_FULL:
                out.append(Alert("quota", f"{project.name}: {q.resource}",
                                 f"{total.normalize()} of {q.limit.normalize()} used "
                                 f"({u.get('in_transit', Decimal(0)).normalize()} in transit)"))
    return out
