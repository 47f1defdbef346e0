"""One evaluation of a rebalance policy (:func:`metavmm.services.rebalance.evaluate`) over SIMULATED pools:
how long the decision takes as the pool grows, side by side in one run, with 10% of the hosts hot
(each sheds one VM: a live-first target search through the single-placement pipeline) against none hot
(only the hosts' states are worked out). Nothing is submitted; the time is the scheduler's.

    .venv/bin/python -m bench.rebalance [--hosts 100 400 1600]

With ``--predict``: the plan's predicted imbalance against the one measured after its moves ran, round
by round, on a SIMULATED pool of six hosts of different sizes (Intel and AMD, 32 to 128 cores), two of
them loaded past the policy's high mark. Each round is a sync (the loads), the policy (its plan, with
the prediction, submitted and run through the engine), and a sync again (the loads after the moves).
The sim's host load is its allocation (vCPUs and memory given to guests over what the host has), so
this checks the prediction's bookkeeping (which VM leaves which host, rescaled to the target's size)
against what the catalog then records; a hypervisor's measured load would add its own noise.

    .venv/bin/python -m bench.rebalance --predict [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from sqlmodel import select

from bench import direct  # VMs pinned to hosts, as the rebalance tests make them
from bench.common import sim_snapshot
from metavmm.catalog import db
from metavmm.catalog.models import HostBalance
from metavmm.foundation.config import RebalancePolicy, parse_config
from metavmm.scheduler.snapshot import WorkloadView
from metavmm.services import rebalance_run
from metavmm.services.operations.engine import Engine
from metavmm.services.rebalance import Imbalance, Reading, evaluate
from metavmm.services.sync import sync_all

POOL = """
providers:
  - {kind: sim, name: sim, site_count: 1, hosts_per_site: 6, seed: 8}
operations: {reconcile_interval_s: 0}
rebalance:
  - {name: pool, sites: [sim-000], cpu_high_pct: 85, cpu_low_pct: 70, mem_high_pct: 90, mem_low_pct: 80,
     cooldown_s: 0, max_in_flight: 10}
"""
# (host, VMs, vCPUs each) over seed 8's own allocation (other tenants'): host 0 (Intel, 96 cores, 50%
# already) to 100%, host 3 (AMD, 128 cores, 91%) to 97%; hosts 1 (Intel, 16%) and 5 (AMD, 3%) are the cool
# targets a live move reaches (same vendor); hosts 2 and 4 sit between the marks (80%)
LOAD = (("sim-000-h00000", 6, 8), ("sim-000-h00003", 2, 4), ("sim-000-h00005", 1, 4))


def measure(hosts: int, hot_share: float, seed: int = 5) -> tuple[float, int, int]:
    sites = max(hosts // 100, 1)
    snap = sim_snapshot(sites, hosts // sites, seed=seed)
    rng = random.Random(seed)
    workloads = [WorkloadView(f"w{h.id}-{i}", f"w{h.id}-{i}", None, h.site_id, h.id, 2, 4096)
                 for h in snap.hosts() for i in range(3)]
    snap = replace(snap, workloads=tuple(workloads))
    hot = set(rng.sample(sorted(h.id for h in snap.hosts()), int(hosts * hot_share)))
    readings = {h.id: Reading(95.0 if h.id in hot else rng.uniform(10, 60), 40.0, "trace") for h in snap.hosts()}
    policy = RebalancePolicy(name="bench", sites=[s.name for s in snap.sites], max_in_flight=100, cooldown_s=0)
    started = time.perf_counter()
    ev = evaluate(snap, policy, readings, now=datetime.now(UTC))
    return time.perf_counter() - started, len(ev.moves), len(ev.held)


async def predicted_against_measured(rounds: int) -> list[tuple[int, int, Imbalance, Imbalance, Imbalance, float]]:
    """Per round: (round, moves, imbalance before, predicted, measured after, largest per-host CPU error)."""
    tmp = Path(tempfile.mkdtemp(prefix="metavmm-bench-rebalance-"))
    os.environ["METAVMM_STATE_DIR"] = str(tmp / "state")  # the sim's VMs: this run's own
    url = f"sqlite:///{tmp / 'catalog.db'}"
    await db.upgrade_async(url)
    sql = db.make_engine(url)
    sessions = db.make_sessionmaker(sql)
    config = parse_config(POOL)
    await sync_all(sessions, config)
    engine = Engine(sessions, config, url)
    await engine.start(run_steps=True, poll_s=0.02)
    out = []
    try:
        for host, count, vcpus in LOAD:
            for i in range(count):
                op = await direct.provision(engine, name=f"{host[-2:]}-{i}", provider="sim", region="sim-000",
                                           image="img", host=host, vcpus=vcpus, ram_mib=8192)
                await engine.wait(op.id)
        for n in range(1, rounds + 1):
            await sync_all(sessions, config)  # the loads now (no engine: the policy does not run here)
            (result,) = await rebalance_run.run(sessions, config, engine, policy="pool")
            for op_id in result.operations.values():
                await engine.wait(op_id)
            await sync_all(sessions, config)  # the loads after the moves
            ev = result.evaluation
            async with sessions() as session:
                rows = {b.host_id: b for b in (await session.exec(select(HostBalance))).all()}
            taking = [h.host_id for h in ev.hosts if h.state not in ("maintenance", "down")]
            measured = {hid: (float(rows[hid].cpu_pct or 0), float(rows[hid].mem_pct or 0)) for hid in taking}
            error = max(abs(measured[hid][0] - ev.predicted_loads[hid][0]) for hid in taking)
            after = Imbalance.of(measured)
            assert ev.imbalance is not None and ev.predicted is not None and after is not None
            out.append((n, len(ev.moves), ev.imbalance, ev.predicted, after, error))
    finally:
        await engine.stop()
        await sql.dispose()
    return out


def predict_main(rounds: int) -> None:
    print("predicted against measured imbalance, SIMULATED pool of 6 hosts (allocation loads), one run")
    print(f"{'round':>5} {'moves':>5} {'CPU spread before':>17} {'predicted':>9} {'measured':>8} "
          f"{'mem spread predicted':>20} {'measured':>8} {'max host CPU error':>18}")
    for n, moves, before, predicted, after, error in asyncio.run(predicted_against_measured(rounds)):
        print(f"{n:>5} {moves:>5} {before.cpu_spread_pct:>17.2f} {predicted.cpu_spread_pct:>9.2f} "
              f"{after.cpu_spread_pct:>8.2f} {predicted.mem_spread_pct:>20.2f} {after.mem_spread_pct:>8.2f} "
              f"{error:>18.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[100, 400, 1600])
    parser.add_argument("--predict", action="store_true", help="the plan's prediction against the measure")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    if args.predict:
        predict_main(args.rounds)
        return
    print(f"{'hosts':>6} {'hot':>5} {'seconds':>8} {'moves':>6} {'held':>5}   {'none hot: seconds':>18}")
    for n in args.hosts:
        seconds, moves, held = measure(n, 0.10)
        idle, _, _ = measure(n, 0.0)
        print(f"{n:>6} {int(n * 0.1):>5} {seconds:>8.3f} {moves:>6} {held:>5}   {idle:>18.3f}")


if __name__ == "__main__":
    main()
