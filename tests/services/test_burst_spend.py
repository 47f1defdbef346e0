"""What a project burst this month, read from its workloads' placement summaries (SQLite and PostgreSQL)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from metavmm.catalog.models import Project, Workload
from metavmm.foundation.config import BurstPolicy
from metavmm.scheduler.snapshot import build_snapshot
from metavmm.services.placement import burst_spend


def _burst(outcome: str, policy: str, cost: str) -> dict[str, Any]:
    return {"placement": {"burst": {"outcome": outcome, "policy": policy, "burst_cost": cost}}}


async def test_this_months_burst_spend_per_policy(sessions: Any) -> None:
    async with sessions() as s:
        alpha, beta = Project(name="alpha"), Project(name="beta")
        s.add_all([alpha, beta])
        await s.commit()
        last_month = datetime.now(UTC).replace(day=1) - timedelta(days=2)
        s.add_all([
            Workload(project_id=alpha.id, kind="compute", name="a", spec=_burst("burst", "overflow", "1.25")),
            Workload(project_id=alpha.id, kind="compute", name="b", spec=_burst("burst", "overflow", "2.5")),
            Workload(project_id=alpha.id, kind="compute", name="c", spec=_burst("burst", "gpu", "10")),
            Workload(project_id=alpha.id, kind="compute", name="home", spec=_burst("on-prem", "overflow", "9")),
            Workload(project_id=alpha.id, kind="compute", name="bad", spec=_burst("burst", "overflow", "lots")),
            Workload(project_id=alpha.id, kind="compute", name="plain", spec={"placement": {"site": "x"}}),
            Workload(project_id=alpha.id, kind="compute", name="bare", spec={}),
            Workload(project_id=alpha.id, kind="compute", name="old", spec=_burst("burst", "overflow", "100"),
                     created_at=last_month),
            Workload(project_id=beta.id, kind="compute", name="theirs", spec=_burst("burst", "overflow", "50")),
        ])
        await s.commit()
        policies = (BurstPolicy(name="overflow", allowed_providers=["x"], monthly_budget=Decimal(100)),)
        snap = replace(build_snapshot(currency="USD", providers=[], sites=[], hosts=[], flavors=[], prices=[]),
                       policies=policies)
        assert await burst_spend(s, snap, alpha.id) == {"overflow": Decimal("3.75"), "gpu": Decimal("10")}
        assert await burst_spend(s, snap, None) == {}
        unbudgeted = replace(snap, policies=(policies[0].model_copy(update={"monthly_budget": None}),))
        assert await burst_spend(s, unbudgeted, alpha.id) == {}  # nothing to count against: not read
