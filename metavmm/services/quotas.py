"""Quotas counted with in-transit use, so two concurrent requests cannot both pass a limit only one fits.

A request's demand (instances, vcpus, ram_mib, storage_gib, ``gpus:<MODEL>``, budget_monthly) is
checked and reserved in one transaction that first takes the project's write lock: an
``UPDATE project SET name = name`` on the project row. On PostgreSQL that is a row lock held to the
commit; on SQLite the first write of a transaction takes the database's single writer lock. So the
read of current use and the insert of the new reservation cannot interleave with another request for
the same project. Use is the sum of reservation rows: ``in_transit`` from the request until the
provider confirms the resource, ``committed`` after, deleted when the resource is gone (the operations
engine calls :func:`commit` and :func:`release`; cancelling a pending create releases at once).
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from sqlalchemy import delete, func, insert, text, update
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.models import Price, Quota, QuotaReservation, Workload, utcnow
from metavmm.foundation.errors import QuotaExceeded

HOURS_PER_MONTH = Decimal(730)
RESOURCES = ("instances", "vcpus", "ram_mib", "storage_gib", "budget_monthly")  # plus gpus:<MODEL>
RESOURCE_PATTERN = r"^(instances|vcpus|ram_mib|storage_gib|budget_monthly|gpus:[A-Za-z0-9_.-]{1,48})$"


def demand_of(kind: str, vcpus: int, ram_mib: int, disk_gib: int, gpu_model: str | None,
              gpu_count: int) -> dict[str, Decimal]:
    """What one workload counts against its project's quota."""
    if kind == "storage":
        return {"storage_gib": Decimal(disk_gib)}
    if kind != "compute":
        return {}
    need = {"instances": Decimal(1), "vcpus": Decimal(vcpus), "ram_mib": Decimal(ram_mib),
            "storage_gib": Decimal(disk_gib)}
    if gpu_model and gpu_count:
        need[f"gpus:{gpu_model}"] = Decimal(gpu_count)
    return need


async def monthly_cost(session: AsyncSession, flavor: str | None, currency: str | None) -> Decimal | None:
    """An estimate for the budget quota: the cheapest hourly price of the flavor in the quota's currency,
    times 730 hours; None when no such price is known (the budget is then not charged)."""
    if not flavor or not currency:
        return None
    stmt = select(func.min(Price.amount)).where(Price.flavor_name == flavor, Price.unit == "hour",
                                                Price.currency == currency)
    hourly = (await session.exec(stmt)).one()
    return Decimal(hourly) * HOURS_PER_MONTH if hourly is not None else None


async def lock_project(session: AsyncSession, project_id: int) -> None:
    """Serialise quota decisions of one project until the transaction ends (see the module docstring).
    Must be the first statement of its transaction on SQLite."""
    await session.exec(text("UPDATE project SET name = name WHERE id = :pid").bindparams(pid=project_id))  # type: ignore[call-overload]


async def usage(session: AsyncSession, project_id: int) -> dict[str, dict[str, Decimal]]:
    """``{resource: {"in_transit": x, "committed": y}}`` for one project."""
    stmt = (select(QuotaReservation.resource, QuotaReservation.state, func.sum(QuotaReservation.amount))
            .where(QuotaReservation.project_id == project_id)
            .group_by(QuotaReservation.resource, QuotaReservation.state))
    out: dict[str, dict[str, Decimal]] = defaultdict(lambda: {"in_transit": Decimal(0), "committed": Decimal(0)})
    for resource, state, amount in (await session.exec(stmt)).all():
        out[resource][state] = Decimal(amount)
    return dict(out)


async def reserve(session: AsyncSession, project_id: int, need: dict[str, Decimal], *, workload_id: str,
                  operation_id: str | None, flavor: str | None = None, locked: bool = False) -> None:
    """Check ``need`` against the project's limits and reserve it, or raise QuotaExceeded naming every
    resource that does not fit. The caller commits (or rolls back) the transaction; ``locked``: the
    caller took the project's lock in it already (one statement less while holding the write lock)."""
    if not locked:
        await lock_project(session, project_id)
    need = await check(session, project_id, need, flavor=flavor)
    await hold(session, project_id, need, workload_id=workload_id, operation_id=operation_id)


async def hold(session: AsyncSession, project_id: int, need: dict[str, Decimal], *, workload_id: str,
               operation_id: str | None) -> None:
    """Write the reservation rows of a ``need`` :func:`check` passed, in one statement (a create holds the
    write lock while it runs). The workload row must exist."""
    await hold_many(session, project_id, [(need, workload_id, operation_id)])


async def hold_many(session: AsyncSession, project_id: int,
                    needs: list[tuple[dict[str, Decimal], str, str | None]]) -> None:
    """:func:`hold` for several workloads (need, workload id, operation id), in one statement."""
    now = utcnow()
    rows = [{"project_id": project_id, "workload_id": workload_id, "operation_id": operation_id,
             "resource": resource, "amount": amount, "state": "in_transit", "created_at": now}
            for need, workload_id, operation_id in needs for resource, amount in need.items() if amount]
    if rows:
        await session.exec(insert(QuotaReservation), params=rows)  # type: ignore[call-overload]


async def check(session: AsyncSession, project_id: int, need: dict[str, Decimal], *, flavor: str | None = None,
                count: int = 1, what: str = "") -> dict[str, Decimal]:
    """``count`` times ``need`` against the project's limits, reserving nothing (a cluster checks its whole
    class at once before it reserves seat by seat): the need with its budget, or QuotaExceeded naming
    every resource that does not fit. The caller holds the project's lock."""
    limits = await Limits.read(session, project_id)
    return await limits.check(session, need, flavor=flavor, count=count, what=what)


class Limits:
    """A project's quotas and use, read once under its lock, for several creates in one transaction: each
    :meth:`check` sees what the ones before it :meth:`add` ed (issue 23 item 15: a batch of creates reads
    the quota once, not once per create)."""

    def __init__(self, project_id: int, quotas: dict[str, Quota]) -> None:
        self.project_id, self.quotas = project_id, quotas
        self.used: dict[str, Decimal] | None = None  # read when a limit first applies
        self.costs: dict[tuple[str | None, str | None], Decimal | None] = {}

    @classmethod
    async def read(cls, session: AsyncSession, project_id: int) -> Limits:
        rows = (await session.exec(select(Quota).where(Quota.project_id == project_id))).all()
        return cls(project_id, {q.resource: q for q in rows})

    async def check(self, session: AsyncSession, need: dict[str, Decimal], *, flavor: str | None = None,
                    count: int = 1, what: str = "") -> dict[str, Decimal]:
        """The need (times ``count``, with its budget) if it fits beside the use and what was added, else
        QuotaExceeded naming every resource that does not fit."""
        quotas = self.quotas
        need = {k: v * count for k, v in need.items()}
        if "budget_monthly" in quotas:
            currency = quotas["budget_monthly"].currency
            if (flavor, currency) not in self.costs:
                self.costs[(flavor, currency)] = await monthly_cost(session, flavor, currency)
            cost = self.costs[(flavor, currency)]
            if cost is not None:
                need["budget_monthly"] = cost * count
        if not any(amount and resource in quotas for resource, amount in need.items()):
            return need  # no limit applies: the use need not be summed (one query less under the lock)
        if self.used is None:
            self.used = {r: sum(v.values(), Decimal(0)) for r, v in (await usage(session, self.project_id)).items()}
        over = []
        for resource, amount in sorted(need.items()):
            quota = quotas.get(resource)
            if quota is None or amount == 0:
                continue
            current = self.used.get(resource, Decimal(0))
            if current + amount > quota.limit:
                over.append(f"{resource}: need {_n(amount)}, used {_n(current)} of {_n(quota.limit)}")
        if over:
            raise QuotaExceeded("quota exceeded" + (f" for {what}" if what else "") + ": " + "; ".join(over))
        return need

    def add(self, need: dict[str, Decimal]) -> None:
        """Count a need that will be held in this transaction."""
        if self.used is not None:
            for resource, amount in need.items():
                self.used[resource] = self.used.get(resource, Decimal(0)) + amount


def _n(value: Decimal) -> str:
    return format(value.normalize(), "f")


async def commit(session: AsyncSession, workload_id: str) -> None:
    """The provider confirmed the workload: its use is no longer in transit."""
    await session.exec(update(QuotaReservation).where(QuotaReservation.workload_id == workload_id)  # type: ignore[call-overload]
                       .values(state="committed"))


async def release(session: AsyncSession, workload_id: str) -> None:
    """The workload is gone (or was never created): give its quota back."""
    await session.exec(delete(QuotaReservation).where(QuotaReservation.workload_id == workload_id))  # type: ignore[call-overload]


async def give_back(session: AsyncSession, workload_id: str, why: str, observed: str = "cancelled") -> None:
    """A create that never produced its resource (cancelled before it ran, or rolled back): release the
    quota and mark the workload row as never-present, so it counts nowhere and lists as gone."""
    await release(session, workload_id)
    await session.exec(update(Workload).where(Workload.id == workload_id)  # type: ignore[call-overload]
                       .values(desired_state="deleted", observed_state=observed, present=False,
                               state_message=why[:500], version=Workload.version + 1, updated_at=utcnow()))
