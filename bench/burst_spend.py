"""What reading a project's burst spend this month costs a create when a burst policy has a budget.

    .venv/bin/python -m bench.burst_spend [--database sqlite:///path | postgresql://...] [--workloads 10000]

One project with N compute workloads created this month, a third of them burst (each keeps its burst
cost in ``spec.placement.burst``); :func:`metavmm.services.placement.burst_spend` is timed (median of
5), side by side with reading every workload's spec and summing in Python (what it did first).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import replace
from decimal import Decimal

from sqlmodel import select

from metavmm.catalog import db
from metavmm.catalog.models import Project, Workload
from metavmm.foundation.config import BurstPolicy
from metavmm.scheduler.snapshot import build_snapshot
from metavmm.services.placement import burst_spend


async def _python_sum(session, project_id: int) -> dict[str, Decimal]:  # type: ignore[no-untyped-def]
    out: dict[str, Decimal] = {}
    for spec in (await session.exec(select(Workload.spec).where(Workload.project_id == project_id))).all():
        b = ((spec or {}).get("placement") or {}).get("burst") or {}
        if b.get("outcome") == "burst":
            out[b["policy"]] = out.get(b["policy"], Decimal(0)) + Decimal(b["burst_cost"])
    return out


async def run(url: str, n: int) -> None:
    await db.upgrade_async(url)
    engine = db.make_engine(url)
    maker = db.make_sessionmaker(engine)
    try:
        async with maker() as s:
            project = Project(name=f"bench-{time.time_ns()}")
            s.add(project)
            await s.commit()
            s.add_all([Workload(project_id=project.id, kind="compute", name=f"w{i}", spec={"placement": {"burst": {
                "outcome": "burst" if i % 3 == 0 else "on-prem", "policy": "overflow", "burst_cost": "1.25"}}})
                for i in range(n)])
            await s.commit()
        snap = replace(build_snapshot(currency="USD", providers=[], sites=[], hosts=[], flavors=[], prices=[]),
                       policies=(BurstPolicy(name="overflow", allowed_providers=["x"], monthly_budget=Decimal(1)),))
        for label, fn in (("burst_spend (JSON path in the database)", lambda s: burst_spend(s, snap, project.id)),
                          ("every spec read, summed in Python", lambda s: _python_sum(s, project.id))):
            times = []
            async with maker() as s:
                for _ in range(5):
                    started = time.perf_counter()
                    result = await fn(s)
                    times.append(time.perf_counter() - started)
            print(f"{label:42s} {statistics.median(times) * 1000:7.1f} ms  {dict(result)}")
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database")
    parser.add_argument("--workloads", type=int, default=10_000)
    args = parser.parse_args()
    url = args.database or f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    print(f"{args.workloads} workloads of one project this month, {url.split(':')[0]}")
    asyncio.run(run(url, args.workloads))


if __name__ == "__main__":
    main()
