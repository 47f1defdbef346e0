"""Single placements per second on a 10,000-host, 100-site SIMULATED catalog (sim driver).

Run: .venv/bin/python -m bench.placement [--sites 100] [--hosts-per-site 100] [--n 2000]

Measures placement only: the snapshot is built once from the sim driver's inventory (no database),
then requests of common shapes are placed one after another, each reserving its capacity so the next
decision sees it. Target: 1,000 decisions per second.
"""

from __future__ import annotations

import argparse
import os
import random
import time

from bench.common import SHAPES, sim_snapshot
from metavmm.scheduler.graph import FederationGraph
from metavmm.scheduler.pipeline import Scheduler
from metavmm.scheduler.request import ImageRef, PlacementRequest


def _rate(sched: Scheduler, reqs: list[PlacementRequest], **kw: object) -> tuple[float, float, int]:
    """(decisions per wall second, per CPU second of this process, placed). CPU time is reported too
    because the benchmark machine is shared: wall time there measures the neighbours as well."""
    wall, cpu = time.perf_counter(), time.process_time()
    placed = sum(sched.place(r, **kw).placed for r in reqs)  # type: ignore[arg-type]
    return len(reqs) / (time.perf_counter() - wall), len(reqs) / (time.process_time() - cpu), placed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sites", type=int, default=100)
    ap.add_argument("--hosts-per-site", type=int, default=100)
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    t = time.perf_counter()
    snap = sim_snapshot(args.sites, args.hosts_per_site)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    graph = FederationGraph(snap)
    nodes, edges = graph.graph.number_of_nodes(), graph.graph.number_of_edges()
    graph_s = time.perf_counter() - t
    print(f"catalog: {snap.host_count} hosts in {len(snap.sites)} sites (SIMULATED); snapshot {build_s:.2f} s, "
          f"networkx graph {nodes} nodes / {edges} edges in {graph_s:.2f} s")

    rng = random.Random(1)
    plain = [PlacementRequest(f"p{i}", *rng.choice(SHAPES)) for i in range(args.n)]
    image = ImageRef(format="vmdk", size_bytes=8 << 30, hypervisor="esxi", replica_sites=(snap.sites[0].id,))
    with_image = [PlacementRequest(f"i{i}", *rng.choice(SHAPES), image=image) for i in range(args.n)]
    gpu = [PlacementRequest(f"g{i}", 8, 65536, gpu_model="H100", gpu_count=rng.choice((1, 2, 4)))
           for i in range(args.n // 4)]
    impossible = [PlacementRequest(f"x{i}", 4, 8192, gpu_model="H200", gpu_count=1) for i in range(args.n // 4)]
    explain = plain[: max(args.n // 20, 20)]

    def warm() -> Scheduler:
        """A scheduler whose per-host views exist already (the first decision builds them: timed apart)."""
        sched = Scheduler(snap, graph=graph)
        sched.place(PlacementRequest("warm-up", 1, 1024), reserve=False)
        return sched

    t = time.perf_counter()
    warm()
    print(f"first decision on a fresh Scheduler (builds 10,000 host views): {time.perf_counter() - t:.2f} s")
    rows = [
        ("plain shapes, reserve each", *_rate(warm(), plain), len(plain)),
        ("with an ESXi image (virt-v2v + transfer routes)", *_rate(warm(), with_image), len(with_image)),
        ("GPU H100 x1-4", *_rate(warm(), gpu), len(gpu)),
        ("impossible (no H200): full explanation", *_rate(warm(), impossible), len(impossible)),
        ("explain=True (every site opened)", *_rate(warm(), explain, explain=True, reserve=False), len(explain)),
    ]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'workload':50} {'wall /s':>9} {'CPU /s':>9} {'placed':>12}")
    for name, rate, cpu_rate, placed, n in rows:
        print(f"{name:50} {rate:9.0f} {cpu_rate:9.0f} {placed:>6}/{n:<5}")
    best = max(rows[0][1], rows[0][2])
    print(f"target: 1,000 decisions/s on plain shapes -> wall {rows[0][1]:.0f}, CPU {rows[0][2]:.0f}: "
          f"{'MET' if best >= 1000 else 'MISSED'}{' (by CPU time)' if rows[0][1] < 1000 <= best else ''}")


if __name__ == "__main__":
    main()
