"""Batch placement: min-cost flow (networkx) against the ILP optimum (scipy milp), in the same run.

Run: .venv/bin/python -m bench.batch [--skip-10k]

1. 1,000 workloads on 1,000 SIMULATED hosts (10 sites x 100): flow cost / ILP cost and flow time / ILP
   time, for the default machine classes and for Firmament's literal ("exact") ones. Targets: within 1%
   of the optimum at a tenth of its time.
2. 10,000 workloads on 10,000 SIMULATED hosts (100 sites x 100): flow time. Target: under 5 s.

Both solvers include their own preparation (task classes, static filters, unit costs). Sites get
seeded, varied per-vCPU/GiB prices (bench/common.py), so the cheapest packing is not trivial.
"""

from __future__ import annotations

import argparse
import os
import time

from bench.common import requests, sim_snapshot
from metavmm.scheduler.batch import BatchPlanner
from metavmm.scheduler.batch_ilp import solve_ilp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--skip-10k", action="store_true")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (wall times below)")
    snap = sim_snapshot(10, 100, seed=args.seed)
    reqs = requests(1000, seed=args.seed)
    cpu = time.process_time()
    exact = BatchPlanner(snap, classes="exact").place(reqs)
    exact_cpu = time.process_time() - cpu
    cpu = time.process_time()
    flow = BatchPlanner(snap).place(reqs)
    flow_cpu = time.process_time() - cpu
    cpu = time.process_time()
    ilp = solve_ilp(BatchPlanner(snap), reqs)
    ilp_cpu = time.process_time() - cpu
    print(f"1,000 x 1,000 (SIMULATED, {len(snap.sites)} sites):")
    print(f"  {'':8} {'cost':>12} {'unplaced':>9} {'wall s':>9} {'CPU s':>9}  detail")
    print(f"  {'flow':8} {flow.cost:12.4f} {len(flow.unplaced):9d} {flow.seconds:9.3f} {flow_cpu:9.3f}  "
          f"default (site classes): {flow.task_classes} task classes, {flow.machine_classes} machine classes, "
          f"{flow.rounds} rounds, {flow.arcs} arcs")
    print(f"  {'exact':8} {exact.cost:12.4f} {len(exact.unplaced):9d} {exact.seconds:9.3f} {exact_cpu:9.3f}  "
          f"flow over Firmament's literal classes (same profile and free capacity): {exact.machine_classes} "
          f"machine classes, {exact.arcs} arcs")
    print(f"  {'ilp':8} {ilp.cost:12.4f} {len(ilp.unplaced):9d} {ilp.seconds:9.3f} {ilp_cpu:9.3f}  "
          f"{ilp.arcs} integer variables")
    print(f"  exact classes: cost ratio {exact.cost / ilp.cost:.5f}, time ratio wall {exact.seconds / ilp.seconds:.3f}"
          f", CPU {exact_cpu / ilp_cpu:.3f}")
    cost_ratio = flow.cost / ilp.cost if ilp.cost else float("nan")
    wall_ratio, cpu_ratio = flow.seconds / ilp.seconds, flow_cpu / ilp_cpu
    print(f"  cost ratio flow/ilp {cost_ratio:.5f} (target <= 1.01: {'MET' if cost_ratio <= 1.01 else 'MISSED'}); "
          f"time ratio wall {wall_ratio:.3f}, CPU {cpu_ratio:.3f} "
          f"(target <= 0.1: {'MET' if min(wall_ratio, cpu_ratio) <= 0.1 else 'MISSED'})")
    if args.skip_10k:
        return
    snap = sim_snapshot(100, 100, seed=args.seed)
    reqs = requests(10_000, seed=args.seed)
    cpu = time.process_time()
    big = BatchPlanner(snap).place(reqs)
    big_cpu = time.process_time() - cpu
    print(f"10,000 x 10,000 (SIMULATED, {len(snap.sites)} sites): {big.seconds:.2f} s wall, {big_cpu:.2f} s CPU, "
          f"cost {big.cost:.2f}, "
          f"unplaced {len(big.unplaced)}, {big.machine_classes} machine classes, {big.rounds} rounds "
          f"(target < 5 s: {'MET' if big.seconds < 5 else 'MISSED'})")


if __name__ == "__main__":
    main()
