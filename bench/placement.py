"""Single placements per second on a 10,000-host, 100-site SIMULATED catalog (sim driver), and the
latency of a ``POST /placements`` dry run before and after it became the create's own decision.

Run: .venv/bin/python -m bench.placement [--sites 100] [--hosts-per-site 100] [--n 2000] [--no-memory]
     .venv/bin/python -m bench.placement --against /tmp/old [--rounds 3] [--n 1000] [--gc-freeze]
     .venv/bin/python -m bench.placement --dry-run [--sites 20] [--hosts-per-site 50] [--n 200] [--in-transit 100]

The first measures placement only: the snapshot is built once from the sim driver's inventory (no
database), then requests of common shapes are placed one after another, each reserving its capacity so
the next decision sees it. Targets (issue 17): 5,000 plain decisions per second and 1,000 explained
ones; kube-scheduler's own threshold at 5,000 nodes (680 pods/s) is printed as a reference line. Peak
memory is measured in a separate pass under tracemalloc (it slows Python down, so never while timing):
the snapshot, the graph, a warm Scheduler and a run of plain and explained decisions.

``--against DIR`` runs the same rows on the scheduler of another checkout (``git -C /work/main archive main |
tar -x -C DIR``) and on this one, each in a child process, alternating for ``--rounds`` rounds so that a
shared machine's load falls on both alike, and prints both side by side (the best round of each, CPU
and wall). Its extra row, *explain, a fresh Scheduler per request*, is what a create's dry run does: the
Placer builds a Scheduler per request that shares only the snapshot's views, so every per-shape memo is
cold.

``--gc-freeze`` adds a run of this tree whose child calls ``gc.freeze()`` once after its setup (the snapshot,
the graph, the first Scheduler), as ``metavmm serve`` does once its startup is done, side by side with the
same tree unfrozen (and ``--against``'s tree, if given); each child also reports what one full garbage
collection costs it afterwards (the pause a freeze shortens).

``--dry-run`` measures what the ``POST /placements`` handler does, minus HTTP, on a SQLite catalog synced
from the sim driver with ``--in-transit`` creates still pending and a burst policy configured, three
ways interleaved request by request (so the machine's load hits all alike):

- *before*: the old handler: a fresh snapshot from the catalog, a bare Scheduler (no ledger, no
  burst policy), the answer rendered;
- *after*: the Placer a create uses: the cached snapshot, the in-transit ledger read, the burst
  policy, the Placer's checks, the executable steps and the placement summary, rendered;
- *after, no cache*: the same with a fresh snapshot each time (what the cache saves).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import SHAPES, sim_snapshot
from metavmm.scheduler.graph import FederationGraph
from metavmm.scheduler.pipeline import Scheduler, ViewCache
from metavmm.scheduler.request import ImageRef, PlacementRequest
from metavmm.scheduler.snapshot import Snapshot


def _settled() -> tuple[float, float]:
    """A full garbage collection, then the wall and CPU clocks: the collection that the setup's new objects
    (a catalog, a warm Scheduler's 10,000 views) make due is not charged to whichever row it falls in. A
    row's own collections still count. Without this a ~70-90 ms pass (150,000-210,000 objects) lands in
    some rows of ~0.3 s and not in others, depending on how many objects the setup made."""
    gc.collect()
    return time.perf_counter(), time.process_time()


def _rate(sched: Scheduler, reqs: list[PlacementRequest], **kw: object) -> tuple[float, float, int]:
    """(decisions per wall second, per CPU second of this process, placed). CPU time is reported too
    because the benchmark machine is shared: wall time there measures the neighbours as well."""
    wall, cpu = _settled()
    placed = sum(sched.place(r, **kw).placed for r in reqs)  # type: ignore[arg-type]
    return len(reqs) / (time.perf_counter() - wall), len(reqs) / (time.process_time() - cpu), placed


DRY_RUN_FEDERATION = """
federation: {{name: bench, currency: USD}}
providers:
  - {{name: home, kind: sim, site_count: {sites}, hosts_per_site: {hosts}, seed: 7}}
  - {{name: cloud, kind: sim, on_prem: false, hosts_per_site: 0, price_per_vcpu_hour: "0.05"}}
policies:
  - {{name: overflow, when_utilisation_above: 0.95, allowed_providers: [cloud], monthly_budget: "1000"}}
"""


async def _dry_run_latency(sites: int, hosts: int, n: int, in_transit: int) -> None:
    from sqlmodel import select

    from metavmm.catalog import db
    from metavmm.catalog import models as m
    from metavmm.catalog.db import session_scope
    from metavmm.foundation.config import parse_config
    from metavmm.scheduler import service
    from metavmm.scheduler.schemas import PlacementOut
    from metavmm.services.placement import Placer
    from metavmm.services.sync import sync_all

    config = parse_config(DRY_RUN_FEDERATION.format(sites=sites, hosts=hosts))
    providers = frozenset(p.name for p in config.providers)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        await db.upgrade_async(url)
        engine = db.make_engine(url)
        sessions = db.make_sessionmaker(engine)
        t = time.perf_counter()
        for p in config.providers:  # one at a time: a 10,000-host sync holds SQLite's writer lock for long
            assert (await sync_all(sessions, config, only={p.name}))[0].error is None
        sync_s = time.perf_counter() - t
        async with session_scope(sessions) as s:  # creates placed but not run yet: the ledger's rows
            host_rows = (await s.exec(select(m.Host).limit(in_transit))).all()
            for i, h in enumerate(host_rows):
                w = m.Workload(kind="compute", name=f"t{i}", spec={"vcpus": 1, "ram_mib": 1024, "placement": {
                    "site_id": h.site_id, "host_id": h.id}})
                s.add(w)
                await s.flush()
                s.add(m.Operation(kind="create", target_id=w.id, state=m.OperationState.PENDING, steps=[]))
        rng = random.Random(3)
        reqs = [PlacementRequest(f"d{i}", *rng.choice(SHAPES)) for i in range(n)]
        cached, fresh = Placer(config), Placer(config, cache=False)

        async def before(req: PlacementRequest) -> PlacementOut:
            snap = await service.snapshot(sessions, config)
            return PlacementOut.of(Scheduler(snap).place(req, reserve=False))

        async def after(placer: Placer, req: PlacementRequest) -> PlacementOut:
            async with sessions() as session:
                planned = await placer.dry_run(session, req, providers=providers)
            return PlacementOut.of(planned.placement, planned.where)

        runs: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in ("before", "after", "after-fresh")}
        placed = dict.fromkeys(runs, 0)
        await before(reqs[0])
        await after(cached, reqs[0])  # warm-up: first snapshot, imports
        for req in reqs:
            for name, call in (("before", lambda r=req: before(r)), ("after", lambda r=req: after(cached, r)),
                               ("after-fresh", lambda r=req: after(fresh, r))):
                wall, cpu = time.perf_counter(), time.process_time()
                out = await call()
                runs[name][0].append((time.perf_counter() - wall) * 1000)
                runs[name][1].append((time.process_time() - cpu) * 1000)
                placed[name] += out.placed
        await engine.dispose()
    hosts_n = sites * hosts
    print(f"catalog: {hosts_n} SIMULATED hosts in {sites} sites + 1 cloud site, SQLite, synced in {sync_s:.1f} s; "
          f"{in_transit} creates in transit; burst policy configured; n={n}, interleaved; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'POST /placements equivalent':44} {'median ms':>10} {'p95 ms':>8} {'CPU median':>11} {'placed':>7}")
    labels = {"before": "before: fresh snapshot, bare Scheduler", "after": "after: the create's Placer (cached)",
              "after-fresh": "after, fresh snapshot each time"}
    for name, (wall_ms, cpu_ms) in runs.items():
        p95 = statistics.quantiles(wall_ms, n=20)[-1]
        print(f"{labels[name]:44} {statistics.median(wall_ms):10.2f} {p95:8.2f} {statistics.median(cpu_ms):11.2f} "
              f"{placed[name]:>7}")


def _rows(snap: Snapshot, graph: FederationGraph, plain: list[PlacementRequest], with_image: list[PlacementRequest],
          gpu: list[PlacementRequest], impossible: list[PlacementRequest], explain: list[PlacementRequest],
          warm: Callable[[], Scheduler]) -> list[tuple[str, float, float, int, int]]:
    """(workload, wall /s, CPU /s, placed, n) per row."""
    rows = [
        ("plain shapes, reserve each", *_rate(warm(), plain), len(plain)),
        ("with an ESXi image (virt-v2v + transfer routes)", *_rate(warm(), with_image), len(with_image)),
        ("GPU H100 x1-4", *_rate(warm(), gpu), len(gpu)),
        ("impossible (no H200): full explanation", *_rate(warm(), impossible), len(impossible)),
        ("explain=True (every site opened)", *_rate(warm(), explain, explain=True, reserve=False), len(explain)),
    ]
    if "every_host" in inspect.signature(Scheduler.place).parameters:  # absent before issue 17 (a before run)
        full = explain[: max(len(explain) // 5, 5)]
        rows.append(("explain, every host listed (every_host=True)",
                     *_rate(warm(), full, explain=True, every_host=True, reserve=False), len(full)))
    views = ViewCache()
    Scheduler(snap, graph=graph, views=views).place(explain[0], reserve=False)  # the Placer's shared views
    cold = explain[: max(len(explain) // 5, 5)]
    wall, cpu = _settled()
    placed = sum(Scheduler(snap, graph=graph, views=views).place(r, explain=True, reserve=False).placed for r in cold)
    rows.append(("explain, a fresh Scheduler per request (dry run)", len(cold) / (time.perf_counter() - wall),
                 len(cold) / (time.process_time() - cpu), placed, len(cold)))
    return rows


KUBE_SCHEDULER_PODS_PER_S = 680  # kube-scheduler's scheduling-throughput threshold at 5,000 nodes (SIG scalability)
TARGET_PLAIN, TARGET_EXPLAIN = 5000, 1000


def _peak_memory(sites: int, hosts: int, reqs: list[PlacementRequest], explain: list[PlacementRequest]) -> float:
    """Peak traced MiB of building the catalog and deciding ``reqs`` (reserving) and ``explain`` on it."""
    tracemalloc.start()
    try:
        snap = sim_snapshot(sites, hosts)
        sched = Scheduler(snap, graph=FederationGraph(snap))
        for r in reqs:
            sched.place(r)
        for r in explain:
            sched.place(r, explain=True, reserve=False)
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def _requests(snap: Snapshot, n: int) -> dict[str, list[PlacementRequest]]:
    """The rows' requests: plain shapes, with an ESXi image, GPU, impossible, and the explained ones."""
    rng = random.Random(1)
    plain = [PlacementRequest(f"p{i}", *rng.choice(SHAPES)) for i in range(n)]
    image = ImageRef(format="vmdk", size_bytes=8 << 30, hypervisor="esxi", replica_sites=(snap.sites[0].id,))
    with_image = [PlacementRequest(f"i{i}", *rng.choice(SHAPES), image=image) for i in range(n)]
    gpu = [PlacementRequest(f"g{i}", 8, 65536, gpu_model="H100", gpu_count=rng.choice((1, 2, 4)))
           for i in range(n // 4)]
    impossible = [PlacementRequest(f"x{i}", 4, 8192, gpu_model="H200", gpu_count=1) for i in range(n // 4)]
    return {"plain": plain, "with_image": with_image, "gpu": gpu, "impossible": impossible,
            "explain": plain[: max(n // 20, 20)]}


def _full_collection_ms() -> tuple[float, int]:
    """(CPU ms of one full garbage collection, the best of 3; objects the collector tracks): what every
    full pass costs this process, the pause ``gc.freeze()`` shortens."""
    times = []
    for _ in range(3):
        cpu = time.process_time()
        gc.collect()
        times.append((time.process_time() - cpu) * 1000)
    return min(times), len(gc.get_objects())


def _measure(sites: int, hosts: int, n: int, *, verbose: bool = True,
             freeze: bool = False) -> list[tuple[str, float, float, int, int]]:
    t = time.perf_counter()
    snap = sim_snapshot(sites, hosts)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    graph = FederationGraph(snap)
    nodes, edges = graph.graph.number_of_nodes(), graph.graph.number_of_edges()
    graph_s = time.perf_counter() - t
    if verbose:
        print(f"catalog: {snap.host_count} hosts in {len(snap.sites)} sites (SIMULATED); snapshot {build_s:.2f} s, "
              f"networkx graph {nodes} nodes / {edges} edges in {graph_s:.2f} s")
    reqs = _requests(snap, n)

    def warm() -> Scheduler:
        """A scheduler whose per-host views exist already (the first decision builds them: timed apart)."""
        sched = Scheduler(snap, graph=graph)
        sched.place(PlacementRequest("warm-up", 1, 1024), reserve=False)
        return sched

    t = time.perf_counter()
    warm()
    if verbose:
        print(f"first decision on a fresh Scheduler (builds 10,000 host views): {time.perf_counter() - t:.2f} s")
    if freeze:  # what ``metavmm serve`` does once its startup is done (cli/serve.py): here after the setup
        gc.collect()
        gc.freeze()
    return _rows(snap, graph, reqs["plain"], reqs["with_image"], reqs["gpu"], reqs["impossible"], reqs["explain"],
                 warm)


def _targets(rows: list[tuple[str, float, float, int, int]]) -> None:
    print(f"{'reference: kube-scheduler threshold, 5,000 nodes':50} {KUBE_SCHEDULER_PODS_PER_S:9d}")
    for label, row, target in (("plain", rows[0], TARGET_PLAIN), ("explain", rows[4], TARGET_EXPLAIN)):
        best = max(row[1], row[2])
        print(f"target: {target:,} decisions/s {label} -> wall {row[1]:.0f}, CPU {row[2]:.0f}: "
              f"{'MET' if best >= target else 'MISSED'}{' (by CPU time)' if row[1] < target <= best else ''}")


def _against(variants: list[tuple[str, Path, list[str]]], sites: int, hosts: int, n: int, rounds: int) -> None:
    """The rows on each variant (a label, a tree whose scheduler runs, the child's extra flags), alternating in
    child processes for ``rounds`` rounds, side by side: the best round of each, the ratio to the first."""
    here = Path(__file__).resolve()
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in variants}
    for _ in range(rounds):
        for label, tree, flags in variants:
            out = subprocess.run([sys.executable, str(here), "--child", "--sites", str(sites), "--hosts-per-site",
                                  str(hosts), "--n", str(n), *flags], check=True, capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": str(tree)}).stdout
            runs[label].append(json.loads(out.strip().splitlines()[-1]))
    best = {label: [max(column, key=lambda r: r[2]) for column in zip(*(d["rows"] for d in done), strict=False)]
            for label, done in runs.items()}
    labels = [label for label, _, _ in variants]
    print(f"{sites * hosts} SIMULATED hosts in {sites} sites, n={n}; "
          + "; ".join(f"{label}: {tree}{' ' + ' '.join(flags) if flags else ''}" for label, tree, flags in variants)
          + f"; best of {rounds} alternating rounds; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    others = labels[1:]
    print(f"{'workload (CPU decisions/s; wall /s)':50} " + " ".join(f"{label[:14]:>14}" for label in labels)
          + " " + " ".join(f"{'x ' + label[:8]:>10}" for label in others)
          + " " + " ".join(f"{'wall ' + label[:9]:>14}" for label in labels) + f" {'placed':>12}")
    rows = {label: {r[0]: r for r in best[label]} for label in labels}
    for name, *_ in best[labels[-1]]:
        got = [rows[label].get(name) for label in labels]
        cpu = " ".join(f"{r[2]:14.0f}" if r else f"{'-':>14}" for r in got)
        base = got[0]
        ratio = " ".join(f"{r[2] / base[2]:10.2f}" if r and base else f"{'-':>10}" for r in got[1:])
        wall = " ".join(f"{r[1]:14.0f}" if r else f"{'-':>14}" for r in got)
        last = got[-1]
        same = "" if all(r is None or r[3] == last[3] for r in got) else \
            " (" + ", ".join(f"{label}: {r[3]}" for label, r in zip(labels, got, strict=True) if r) + ")"
        print(f"{name:50} {cpu} {ratio} {wall} {last[3]:>6}/{last[4]:<5}{same}")
    for label in labels:
        collections = [d["gc"] for d in runs[label]]
        print(f"{label}: a full garbage collection after the rows takes {min(c[0] for c in collections):.1f} ms CPU "
              f"(best of {rounds} runs), {collections[-1][1]:,} objects tracked")
    _targets(best["after"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sites", type=int, default=None)
    ap.add_argument("--hosts-per-site", type=int, default=None)
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--dry-run", action="store_true", help="POST /placements latency, before and after")
    ap.add_argument("--in-transit", type=int, default=100)
    ap.add_argument("--no-memory", action="store_true", help="skip the tracemalloc pass")
    ap.add_argument("--against", type=Path, default=None, help="another checkout's tree: run both, side by side")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gc-freeze", action="store_true", help="also run this tree with gc.freeze() after the setup "
                    "(as `metavmm serve` does after its startup), side by side with it unfrozen")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # --against's runs: rows as JSON
    args = ap.parse_args()
    if args.dry_run:
        asyncio.run(_dry_run_latency(args.sites or 20, args.hosts_per_site or 50, args.n or 200, args.in_transit))
        return
    args.sites, args.hosts_per_site, args.n = args.sites or 100, args.hosts_per_site or 100, args.n or 2000
    here = Path(__file__).resolve().parent.parent
    if args.child:
        rows = _measure(args.sites, args.hosts_per_site, args.n, verbose=False, freeze=args.gc_freeze)
        print(json.dumps({"rows": rows, "gc": _full_collection_ms()}))
        return
    if args.against is not None or args.gc_freeze:
        variants = [("before", args.against, [])] if args.against is not None else []
        variants.append(("after", here, []))
        if args.gc_freeze:
            variants.append(("after, frozen", here, ["--gc-freeze"]))
        _against(variants, args.sites, args.hosts_per_site, args.n, args.rounds)
        return
    rows = _measure(args.sites, args.hosts_per_site, args.n)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'workload':50} {'wall /s':>9} {'CPU /s':>9} {'placed':>12}")
    for name, rate, cpu_rate, placed, n in rows:
        print(f"{name:50} {rate:9.0f} {cpu_rate:9.0f} {placed:>6}/{n:<5}")
    _targets(rows)
    if not args.no_memory:
        reqs = _requests(sim_snapshot(args.sites, args.hosts_per_site), args.n)
        peak = _peak_memory(args.sites, args.hosts_per_site, reqs["plain"][:500], reqs["explain"][:10])
        print(f"peak memory (tracemalloc): {peak:.0f} MiB for the catalog, graph, Scheduler, 500 plain and "
              f"10 explained decisions")


if __name__ == "__main__":
    main()
