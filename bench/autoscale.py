"""What the broker's auto-scaling loop costs, and how fast a group reacts, on the sim provider.

A catalog with ``--groups`` groups of ``--members`` running sim members each (created through the
autoscale service, the engine running in this process). Measured side by side in one run:

- one round of the loop (``evaluate_all``) with nothing to do, when the groups' rule reads ``cpu`` (a
  driver call per provider per group) and when it reads a pushed metric (no driver call): seconds per
  round and milliseconds per group, median of ``--rounds``;
- the reaction of one group to a CPU step (every member at 90 %): from the step to the decision
  written, and to the new member running (its create operation ended), median of ``--steps``.

    .venv/bin/python -m bench.autoscale [--groups 50] [--members 2] [--rounds 5] [--steps 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from metavmm.catalog import db
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import utcnow
from metavmm.drivers.sim import SimDriver
from metavmm.foundation.config import parse_config
from metavmm.services.autoscale.service import AutoscaleService, GroupRequest
from metavmm.services.identity import operator_identity
from metavmm.services.operations import store
from metavmm.services.operations.engine import Engine
from metavmm.services.placement import Placer
from metavmm.services.sync import sync_all
from metavmm.services.workloads.service import WorkloadService

FEDERATION = """
federation: {name: bench, sync_interval_s: 0}
providers:
  - {name: sim, kind: sim, site_count: 2, hosts_per_site: 20, seed: 7}
operations: {concurrency: 8, reconcile_interval_s: 0, retry_base_s: 0.01}
scheduler: {cpu_allocation_ratio: 16}
"""


async def _ended(sessions: Any, ops: list[str]) -> None:
    while True:
        states = [(await store.get(sessions, op)).state for op in ops]
        if all(s in store.TERMINAL for s in states):
            assert set(states) <= {"succeeded"}, states
            return
        await asyncio.sleep(0.02)


async def run(groups: int, members: int, rounds: int, steps: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="metavmm-bench-autoscale-"))
    os.environ["METAVMM_STATE_DIR"] = str(root / "state")
    config = parse_config(FEDERATION)
    url = f"sqlite:///{root / 'catalog.db'}"
    await db.upgrade_async(url)
    sql = db.make_engine(url)
    sessions = db.make_sessionmaker(sql)
    await sync_all(sessions, config)
    engine = Engine(sessions, config, url)
    async with session_scope(sessions) as s:
        caller = await operator_identity(s)
    svc = AutoscaleService(WorkloadService(sessions, config, engine, Placer(config)))
    sim = SimDriver(config.provider("sim"))  # type: ignore[arg-type]
    await engine.start(run_steps=True, poll_s=0.02)
    out: dict[str, Any] = {"groups": groups, "members": members}
    try:
        ids = []
        for i in range(groups):
            rule = {"name": "hot", "type": "metric", "metric": "cpu", "above": 70}
            view = await svc.create(caller, GroupRequest(name=f"g{i}", min_size=members, max_size=members + steps + 1,
                                                         vcpus=1, ram_mib=256, rules=(rule,), cooldown_out_s=0))
            ids.append(view.group.id)
            assert view.last_decision is not None
            await _ended(sessions, view.last_decision.operations)
        for kind, rule in (("cpu", {"name": "hot", "type": "metric", "metric": "cpu", "above": 70}),
                           ("pushed", {"name": "hot", "type": "metric", "metric": "queue", "above": 70})):
            for gid in ids:
                await svc.update(caller, gid, rules=[rule])
            times = []
            for _ in range(rounds):
                started = time.perf_counter()
                assert await svc.evaluate_all() == []
                times.append(time.perf_counter() - started)
            median = statistics.median(times)
            out[f"round_{kind}_s"] = round(median, 4)
            out[f"per_group_{kind}_ms"] = round(median / groups * 1000, 2)
        await svc.update(caller, ids[0], rules=[{"name": "hot", "type": "metric", "metric": "cpu", "above": 70}])
        decided, running = [], []
        now = utcnow()
        for step in range(steps):
            for m in (await svc.get(caller, ids[0])).members:
                sim.ex_set_cpu_percent(m.workload.provider_resource_id or "", 90)
            started = time.perf_counter()
            decision = await svc.evaluate(caller, ids[0], now=now + timedelta(seconds=step))
            decided.append(time.perf_counter() - started)
            assert decision is not None and decision.action == "scale-out", decision
            await _ended(sessions, decision.operations)
            running.append(time.perf_counter() - started)
        out["decision_ms"] = round(statistics.median(decided) * 1000, 1)
        out["to_running_ms"] = round(statistics.median(running) * 1000, 1)
        for gid in ids:
            await _ended(sessions, [op.id for op in await svc.delete(caller, gid)])
        assert sim.ex_vms() == []
    finally:
        await engine.stop()
        await svc.cpu.close()
        await sql.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=50)
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    result = asyncio.run(run(args.groups, args.members, args.rounds, args.steps))
    print(f"{result['groups']} groups of {result['members']} running sim members")
    print(f"one loop round, nothing to do: cpu rule {result['round_cpu_s']:.3f} s ({result['per_group_cpu_ms']} "
          f"ms/group), pushed-metric rule {result['round_pushed_s']:.3f} s ({result['per_group_pushed_ms']} ms/group)")
    print(f"a CPU step to the decision: {result['decision_ms']} ms; to the new member running: "
          f"{result['to_running_ms']} ms (medians)")


if __name__ == "__main__":
    main()
