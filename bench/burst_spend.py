"""What reading a project's burst spend this month costs a create when a burst policy has a budget.

    .venv/bin/python -m bench.burst_spend [--database sqlite:///path | postgresql://...] [--rows 10000]

One project with N spend ledger rows (``spend_accrual``) over four months, a third of them burst, 1% still
open (running). Timed, median of 5, side by side in one run:

- :func:`metavmm.services.placement.burst_spend`, the ledger read every create with a budgeted policy
  makes (one indexed SUM over the month's closed stretches, the open ones accrued to now, and the burst
  creates still in transit through the (project, state) index; the N workloads here are stopped);
- every ledger row read and summed in Python (what a read without the SQL sum would cost);
- the old estimate read it replaced: the burst cost kept in each workload created this month
  (``spec.placement.burst``, a JSON path in the database) over N workloads;
- the showback read of the month (:func:`metavmm.catalog.spend.period_costs`, every line of the month);
- the periodic round (:func:`metavmm.catalog.spend.accrue_all`) over the open stretches.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, insert
from sqlmodel import col, select

from metavmm.catalog import db
from metavmm.catalog.models import Project, SpendAccrual, Workload
from metavmm.catalog.spend import accrue_round, month_start, period_costs
from metavmm.foundation.config import BurstPolicy
from metavmm.scheduler.snapshot import build_snapshot
from metavmm.services.placement import burst_spend


async def _python_sum(session: Any, project_id: int) -> dict[str, Decimal]:
    """Every ledger row of the project read, the month's burst ones summed in Python (the same answer)."""
    now = datetime.now(UTC)
    out: dict[str, Decimal] = {}
    for line in await period_costs(session, project_id, month_start(now), month_start(now + timedelta(days=32))):
        if line.burst_policy:
            out[line.burst_policy] = out.get(line.burst_policy, Decimal(0)) + line.amount
    return out


async def _old_estimates(session: Any, project_id: int) -> dict[str, Decimal]:
    """The read the ledger replaced: this month's creates' burst estimates, a JSON path in the database."""
    verdict = Workload.spec["placement"]["burst"]  # type: ignore[index]
    rows = (await session.exec(select(verdict["policy"].as_string(), verdict["burst_cost"].as_string()).where(
        Workload.project_id == project_id, Workload.kind == "compute",
        Workload.created_at >= month_start(datetime.now(UTC)),
        verdict["outcome"].as_string() == "burst"))).all()  # type: ignore[operator]
    out: dict[str, Decimal] = {}
    for policy, cost in rows:
        out[policy] = out.get(policy, Decimal(0)) + Decimal(cost)
    return out


def _ledger_rows(project_id: int, n: int, now: datetime) -> list[dict[str, Any]]:
    """N stretches over the last four months (a third burst, 1% open), as plain rows for one INSERT."""
    this_month = month_start(now)
    rows = []
    for i in range(n):
        is_open = i % 100 == 0  # running: the round cut it at this month's start
        month = this_month if is_open else month_start(this_month - timedelta(days=31 * (i % 4)))
        start = min(month + timedelta(hours=i % 500), now - timedelta(hours=2))
        end = None if is_open else start + timedelta(hours=1)
        rows.append({"project_id": project_id, "workload_id": f"w{i}", "workload_name": f"w{i}", "provider": "cloud",
                     "site": "cloud-1", "flavor": "m4", "period_start": start, "period_end": end,
                     "hours": Decimal(1), "price_per_hour": Decimal("1.25"), "currency": "USD",
                     "amount": Decimal("1.25"), "price_source": "placement",
                     "burst_policy": "overflow" if i % 3 == 0 else None, "accrued_at": end or start})
    return rows


async def _time(maker: Any, fn: Callable[[Any], Awaitable[Any]], repeat: int = 5) -> tuple[float, Any]:
    """The median of ``repeat`` calls in one open session (a create reads inside its own transaction); the
    round's writes are flushed inside the timing, then rolled back so each call starts from the same rows."""
    times, result = [], None
    async with maker() as s:
        await s.exec(select(func.count()).select_from(Project))  # the connection is open before the first call
        for _ in range(repeat):
            started = time.perf_counter()
            result = await fn(s)
            await s.flush()
            times.append(time.perf_counter() - started)
            if s.new or s.dirty or result == 0 or isinstance(result, int):
                await s.rollback()
    return statistics.median(times), result


async def run(url: str, n: int) -> None:
    await db.upgrade_async(url)
    engine = db.make_engine(url)
    maker = db.make_sessionmaker(engine)
    now = datetime.now(UTC)
    try:
        async with maker() as s:
            project = Project(name=f"bench-{time.time_ns()}")
            s.add(project)
            await s.commit()
            pid = project.id
            await s.exec(insert(SpendAccrual), params=_ledger_rows(pid, n, now))  # type: ignore[call-overload]
            # the old read's input: N workloads created this month, a third burst (no ledger rows: not running)
            await s.exec(insert(Workload), params=[{  # type: ignore[call-overload]
                "id": f"{pid}-{i}", "project_id": pid, "kind": "compute", "name": f"w{i}", "spec": {"placement": {
                    "burst": {"outcome": "burst" if i % 3 == 0 else "on-prem", "policy": "overflow",
                              "burst_cost": "1.25"}}}, "desired_state": "active", "observed_state": "stopped",
                "managed": True, "present": True, "version": 1, "created_at": now, "updated_at": now}
                for i in range(n)])
            await s.commit()
            count = (await s.exec(select(func.count()).select_from(SpendAccrual)
                                  .where(col(SpendAccrual.project_id) == pid))).one()
        snap = replace(build_snapshot(currency="USD", providers=[], sites=[], hosts=[], flavors=[], prices=[]),
                       policies=(BurstPolicy(name="overflow", allowed_providers=["x"], monthly_budget=Decimal(1)),))
        start = month_start(now)
        end = month_start(start + timedelta(days=32))
        print(f"{count} ledger rows of one project ({count // 100} open), {n} workloads")
        for label, fn in (
                ("burst_spend (ledger: SQL sum + open rows)", lambda s: burst_spend(s, snap, pid)),
                ("the month's rows read, summed in Python", lambda s: _python_sum(s, pid)),
                ("old: this month's creates' estimates", lambda s: _old_estimates(s, pid)),
                ("showback: period_costs of the month", lambda s: period_costs(s, pid, start, end)),
                ("periodic round (accrue_all, open rows)", lambda s: accrue_round(s))):
            seconds, result = await _time(maker, fn)
            shown = {k: f"{v:.2f}" for k, v in result.items()} if isinstance(result, dict) else (
                f"{len(result)} lines" if isinstance(result, list) else f"{result} rows written")
            print(f"{label:44s} {seconds * 1000:8.1f} ms  {shown}")
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database")
    parser.add_argument("--rows", type=int, default=10_000, help="ledger rows (and workloads for the old read)")
    args = parser.parse_args()
    url = args.database or f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    print(f"database: {url.split(':')[0]}")
    asyncio.run(run(url, args.rows))


if __name__ == "__main__":
    main()
