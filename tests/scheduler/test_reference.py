"""The pipeline's choices and explanations against a brute-force calculation on random catalogs.

The pipeline keeps per-shape site rankings, per-site numpy columns, class-level verdicts and memos
patched per ledger change; the reference here has none of that: it builds every view fresh from the
snapshot and the ledger, asks every rule of every candidate one by one and scores with plain Python
floats, following the documented order (sites ranked by their best slot, the best site's best slot,
a GPU candidate for work without GPUs only when nothing else fits). A speed trick that changes a
decision or a verdict fails here. Catalogs are seeded: GPU hosts and flavors, arm64 hosts and flavors,
hosts down, two hypervisors, sites above and below the explanation's grouping size.
"""

from __future__ import annotations

import random
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest

from metavmm.scheduler.costs import wastes_gpus
from metavmm.scheduler.pipeline import EXPLAIN_GROUP_OVER, Scheduler
from metavmm.scheduler.request import PlacementRequest
from metavmm.scheduler.snapshot import FlavorView, ProviderView, Snapshot, build_snapshot
from metavmm.scheduler.views import CandidateView, site_view, slot_views
from tests.scheduler.conftest import KVM_CAPS, MILAN, SKYLAKE, host, parts, prices


def _catalog(rng: random.Random) -> Snapshot:
    providers = [ProviderView(1, "dc", "openstack", True, KVM_CAPS),
                 ProviderView(2, "aws", "aws", False, frozenset({"gpu"}))]
    n_sites = rng.randint(2, 4)
    sites = [(i, 1, f"dc/s{i}", f"s{i}", rng.choice(("TW", "DE"))) for i in range(1, n_sites + 1)]
    sites.append((99, 2, "aws/r1", "r1", "US"))
    hosts, hid, rows = [], 0, []
    for site_id, *_ in sites[:-1]:
        for _ in range(rng.choice((1, 3, 5, EXPLAIN_GROUP_OVER + rng.randint(1, 8)))):
            hid += 1
            cores = rng.choice((8, 16, 32, 64))
            gpus = rng.choice(({}, {}, {}, {"H100": rng.choice((2, 4, 8))}, {"A30": 2}))
            arm = rng.random() < 0.2
            hosts.append(host(hid, site_id, cores=cores, mem_gib=rng.choice((32, 64, 256)),
                              used_vcpus=rng.randint(0, cores), used_gib=rng.randint(0, 24), gpus=gpus,
                              arch="aarch64" if arm else "x86_64",
                              vendor="ARM" if arm else rng.choice(("Intel", "AMD")),
                              features=frozenset() if arm else rng.choice((SKYLAKE, MILAN)),
                              hv=rng.choice(("kvm", "kvm", "kvm", "esxi")), nested=rng.random() < 0.7,
                              state=rng.choice(("up",) * 9 + ("down",))))
        rows += parts(1, f"s{site_id}", str(round(rng.uniform(0.01, 0.03), 4)),
                      str(round(rng.uniform(0.002, 0.005), 4)), H100=str(round(rng.uniform(2, 6), 2)), A30="0.9")
    flavors = [FlavorView(101, "m5.xlarge", 2, None, 4, 16384, arch="x86_64"),
               FlavorView(102, "m7g.xlarge", 2, None, 4, 16384, arch="aarch64"),
               FlavorView(103, "p5.48xlarge", 2, None, 192, 2048 * 1024, gpu_model="H100", gpu_count=8)]
    rows += prices(2, "r1", **{"m5.xlarge": "0.192", "m7g.xlarge": "0.163", "p5.48xlarge": "98.32"})
    return build_snapshot(currency="USD", providers=providers, sites=sites, hosts=hosts, flavors=flavors, prices=rows)


def _request(rng: random.Random, i: int) -> PlacementRequest:
    kw: dict[str, Any] = {}
    roll = rng.random()
    if roll < 0.25:
        kw = {"gpu_model": rng.choice(("H100", "h100", "A30")), "gpu_count": rng.choice((1, 2, 4))}
    elif roll < 0.4:
        kw = {"cpu_arch": "aarch64"}
    elif roll < 0.5:
        kw = {"nested_virt": True, "strategy": "spread"}
    elif roll < 0.55:
        kw = {"residency": ("DE",)}
    return PlacementRequest(f"r{i}", rng.choice((1, 2, 4, 8, 16)), rng.choice((1, 2, 8, 16, 64)) * 1024, **kw)


def _totals(values_by_cost: list[tuple[float, list[float]]]) -> list[float]:
    """Min-max normalised, weighted, summed (an infinite cost normalises to 1), in plain floats."""
    n = len(values_by_cost[0][1]) if values_by_cost else 0
    totals = [0.0] * n
    inf = float("inf")
    for weight, values in values_by_cost:
        finite = [x for x in values if x != inf]
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
        span = hi - lo
        if span <= 0 and len(finite) == n:
            continue
        for i, x in enumerate(values):
            totals[i] += weight * (1.0 if x == inf else ((x - lo) / span if span > 0 else 0.0))
    return totals


def _first_failing(sched: Scheduler, view: CandidateView, req: PlacementRequest, scopes: tuple[str, ...]):
    for f in sched.filters:
        if f.scope in scopes:
            v = f.check(view, req)
            if not v.ok:
                return f.name, v.code
    return None


def _reference(sched: Scheduler, req: PlacementRequest) -> tuple[str | None, dict[str, tuple[str, str] | None]]:
    """(the chosen candidate's name or None, every host's and flavor's first failing rule or None)."""
    snap, ledger, settings, graph = sched.snapshot, sched.ledger, sched.settings, sched.graph
    verdicts: dict[str, tuple[str, str] | None] = {}
    passing_sites = []
    for site in snap.sites:
        sv = site_view(site, ledger, settings)
        slots = slot_views(site, ledger, settings)
        site_failed = _first_failing(sched, sv, req, ("site", "slot"))
        for v in slots:
            if site_failed is not None and site_failed[0] in ("residency", "policy"):
                verdicts[v.name] = site_failed
            else:
                verdicts[v.name] = _first_failing(sched, v, req, ("slot",))
        if site_failed is None:
            passing_sites.append((sv, slots))
    totals = _totals([(c.weight, [c.cost(sv, req, graph) for sv, _ in passing_sites]) for c in sched.costs])
    order = sorted(range(len(passing_sites)), key=lambda i: (totals[i], passing_sites[i][0].name))
    chosen: CandidateView | None = None
    settled = False
    for i in order:
        sv, slots = passing_sites[i]
        if settled or (chosen is not None and wastes_gpus(sv, req)):
            continue
        ok = [v for v in slots if verdicts[v.name] is None]
        if not ok:
            continue
        costs = sched.costs
        if sv.site.has_hosts and len(sv.site.hypervisors) == 1:
            costs = [c for c in costs if not getattr(c, "host_invariant", False)]
        slot_totals = _totals([(c.weight, [c.cost(v, req, graph) for v in ok]) for c in costs])
        best = ok[min(range(len(ok)), key=lambda j: (slot_totals[j], ok[j].name))]
        if chosen is None or (wastes_gpus(chosen, req) and not wastes_gpus(best, req)):
            chosen = best
            settled = not wastes_gpus(best, req)
    return (chosen.name if chosen is not None else None), verdicts


def _placed_name(p: Any) -> str | None:
    if not p.placed:
        return None
    return p.host or f"{p.site}:{p.flavor}"


@pytest.mark.parametrize("seed", range(12))
def test_choices_and_verdicts_match_a_brute_force_calculation(seed: int) -> None:
    rng = random.Random(seed)
    snap = _catalog(rng)
    sched = Scheduler(snap)
    checked = Counter()
    for i in range(14):
        req = _request(rng, i)
        expected, verdicts = _reference(sched, sched.prefilter(req)[0])
        explained = sched.place(req, explain=True, every_host=True, reserve=False)
        grouped = sched.place(req, explain=True, reserve=False)
        placed = sched.place(req, key=req.name)
        assert _placed_name(placed) == expected, (seed, i, req)
        assert _placed_name(explained) == _placed_name(grouped) == expected, (seed, i, req)
        checked["placed" if expected else "unplaced"] += 1
        # every host's and flavor's verdict, one by one
        rejected = {r.candidate: (r.filter, r.code) for r in explained.rejections if r.kind in ("host", "flavor")}
        for name, verdict in verdicts.items():
            if verdict is None:
                assert name not in rejected, (seed, i, name)
            elif snap.host_named(name) is not None:
                assert rejected.get(name) == verdict, (seed, i, name, verdict)
        # the grouped explanation covers the same hosts with the same rules and codes
        host_verdicts = Counter((snap.site(snap.host_named(n).site_id).name, *v)  # type: ignore[union-attr]
                                for n, v in verdicts.items() if v is not None and snap.host_named(n) is not None)
        grouped_counts: Counter[tuple[str, str, str]] = Counter()
        for r in grouped.rejections:
            if r.kind in ("host", "hosts") or (r.kind == "site" and snap.site_named(r.site).has_hosts):  # type: ignore[union-attr]
                grouped_counts[(r.site, r.filter, r.code)] += r.covers
        assert grouped_counts == host_verdicts, (seed, i)
        assert grouped.summary == explained.summary
        passed_hosts = sum(a.covers for a in grouped.alternatives if a.kind == "host")
        assert passed_hosts == sum(a.kind == "host" for a in explained.alternatives)
        assert explained.price_per_hour == placed.price_per_hour and isinstance(placed.price_per_hour,
                                                                                  Decimal | type(None))
    assert checked["placed"] >= 3
