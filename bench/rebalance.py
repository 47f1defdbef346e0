"""One evaluation of a rebalance policy (:func:`metavmm.services.rebalance.evaluate`) over SIMULATED pools:
how long the decision takes as the pool grows, side by side in one run, with 10% of the hosts hot
(each sheds one VM: a live-first target search through the single-placement pipeline) against none hot
(only the hosts' states are worked out). Nothing is submitted; the time is the scheduler's.

    .venv/bin/python -m bench.rebalance [--hosts 100 400 1600]
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace
from datetime import UTC, datetime

from bench.common import sim_snapshot
from metavmm.foundation.config import RebalancePolicy
from metavmm.scheduler.snapshot import WorkloadView
from metavmm.services.rebalance import Reading, evaluate


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[100, 400, 1600])
    args = parser.parse_args()
    print(f"{'hosts':>6} {'hot':>5} {'seconds':>8} {'moves':>6} {'held':>5}   {'none hot: seconds':>18}")
    for n in args.hosts:
        seconds, moves, held = measure(n, 0.10)
        idle, _, _ = measure(n, 0.0)
        print(f"{n:>6} {int(n * 0.1):>5} {seconds:>8.3f} {moves:>6} {held:>5}   {idle:>18.3f}")


if __name__ == "__main__":
    main()
