"""What a project burst this month, from the spend ledger (SQLite and PostgreSQL): the hours each burst
compute ran in the month at its price, whenever it was created, deleted ones included."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from metavmm.catalog.models import Project, Workload
from metavmm.foundation.config import BurstPolicy
from metavmm.scheduler.snapshot import Snapshot, build_snapshot
from metavmm.services.placement import burst_spend


def _burst(outcome: str, policy: str, per_hour: str, cost: str = "1") -> dict[str, Any]:
    return {"placement": {"provider": "cloud", "price_per_hour": per_hour,
                          "cost_per_hour": {"amount": per_hour, "currency": "USD"},
                          "burst": {"outcome": outcome, "policy": policy, "burst_cost": cost}}}


def _snapshot(budget: Decimal | None = Decimal(100)) -> Snapshot:
    policies = (BurstPolicy(name="overflow", allowed_providers=["x"], monthly_budget=budget),)
    return replace(build_snapshot(currency="USD", providers=[], sites=[], hosts=[], flavors=[], prices=[]),
                   policies=policies)


def _month_start() -> datetime:
    return datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


async def _projects(s: Any) -> tuple[int, int]:
    alpha, beta = Project(name="alpha"), Project(name="beta")
    s.add_all([alpha, beta])
    await s.commit()
    return alpha.id, beta.id  # type: ignore[return-value]


def _hours_since(ts: datetime) -> Decimal:
    return Decimal(str((datetime.now(UTC) - ts).total_seconds())) / 3600


async def test_a_burst_created_last_month_and_still_running_costs_its_hours_this_month(sessions: Any) -> None:
    """Fails on the old code (it counted only this month's creates: 0 here)."""
    async with sessions() as s:
        alpha, beta = await _projects(s)
        started = _month_start() - timedelta(days=3)
        s.add_all([
            Workload(project_id=alpha, kind="compute", name="old", spec=_burst("burst", "overflow", "2"),
                     observed_state="running", created_at=started, updated_at=started),
            Workload(project_id=alpha, kind="compute", name="home", spec=_burst("on-prem", "overflow", "9"),
                     observed_state="running", created_at=started, updated_at=started),
            Workload(project_id=beta, kind="compute", name="theirs", spec=_burst("burst", "overflow", "50"),
                     observed_state="running", created_at=started, updated_at=started),
        ])
        await s.commit()
        low = _hours_since(_month_start()) * 2
        spent = await burst_spend(s, _snapshot(), alpha)
        high = _hours_since(_month_start()) * 2
        assert set(spent) == {"overflow"} and low - Decimal("1e-6") <= spent["overflow"] <= high + Decimal("1e-6")
        assert await burst_spend(s, _snapshot(), None) == {}
        assert await burst_spend(s, _snapshot(None), alpha) == {}  # nothing to count against: not read


async def test_a_deleted_burst_keeps_its_cost_in_the_month(sessions: Any) -> None:
    """Fails on the old code (an OCCI delete purges the row, and its burst cost went with it)."""
    async with sessions() as s:
        alpha, _ = await _projects(s)
        started = max(_month_start(), datetime.now(UTC) - timedelta(hours=5))
        w = Workload(project_id=alpha, kind="compute", name="gone", spec=_burst("burst", "overflow", "3"),
                     observed_state="running", updated_at=started)
        s.add(w)
        await s.commit()
        await s.delete(w)
        await s.commit()
        first = await burst_spend(s, _snapshot(), alpha)
        assert first["overflow"] >= _hours_since(started) * 3 - Decimal("0.01") > 0
        assert await burst_spend(s, _snapshot(), alpha) == first  # closed at the delete: it grows no more


async def test_a_burst_create_in_transit_counts_its_estimate_until_it_runs(sessions: Any) -> None:
    """A pending burst create has no ledger hours yet: its estimate counts (else a burst of creates would
    each see the budget untouched); once it runs, the ledger's hours replace it."""
    async with sessions() as s:
        alpha, _ = await _projects(s)
        w = Workload(project_id=alpha, kind="compute", name="coming", spec=_burst("burst", "overflow", "2", "48"),
                     observed_state="pending")
        failed = Workload(project_id=alpha, kind="compute", name="failed", observed_state="pending",
                          desired_state="deleted", spec=_burst("burst", "overflow", "2", "500"))
        s.add_all([w, failed])
        await s.commit()
        assert await burst_spend(s, _snapshot(), alpha) == {"overflow": Decimal(48)}
        w.observed_state, w.updated_at = "running", datetime.now(UTC)
        s.add(w)
        await s.commit()
        assert (await burst_spend(s, _snapshot(), alpha))["overflow"] < Decimal("0.01")  # seconds at 2/h
