"""Property test: the optimised pipeline gives the same decision and the same explanation as a
straightforward run of the same rules on random catalogs (hypothesis draws them).

The optimised Scheduler keeps one across a stream of requests, with every speed trick on: per-shape site
rankings and whole decisions kept until a site changes, filter classes, verdicts shared across sites
(``site_free``) or asked once per site (``host_free``), vectorised ``fails`` and ``column``, a grouped
explanation's sites opened in one stacked pass. The reference is the same rules without any of that:

- a fresh Scheduler (and fresh views) for every request, over the same ledger, so nothing is remembered;
- every slot rule asked host by host through its ``check`` (wrapped so that it has no ``fails`` and no
  class or site sharing: its ``fails`` calls ``check`` on each host's own view);
- every cost asked host by host through its ``cost`` (no ``column``);
- the stacked pass off (each site opened on its own).

The two Placements must be equal field for field: the choice, the summary, every rejection with its
message and numbers, every alternative with its score and cost breakdown, the steps. The choice and each
host's first failing rule are also checked against the brute-force calculation of test_reference.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metavmm.scheduler.columns import SiteColumns
from metavmm.scheduler.ledger import Reservation
from metavmm.scheduler.pipeline import EXPLAIN_GROUP_OVER, Scheduler
from metavmm.scheduler.plan import Placement
from metavmm.scheduler.request import PlacementRequest, Verdict
from metavmm.scheduler.snapshot import FlavorView, ProviderView, Snapshot, build_snapshot
from metavmm.scheduler.views import CandidateView, site_view
from tests.scheduler.conftest import KVM_CAPS, MILAN, SKYLAKE, host, parts, prices
from tests.scheduler.test_reference import _placed_name, _reference


class OneByOne:
    """A slot rule asked of each host on its own: ``fails`` runs ``check`` on every host's view (so no class,
    site or vectorised shortcut applies), numbering each rejection code."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.scope = inner, inner.name, inner.scope
        self.codes: dict[str, int] = {}

    def check(self, view: CandidateView, req: PlacementRequest) -> Verdict:
        return self.inner.check(view, req)

    def fails(self, cols: SiteColumns, req: PlacementRequest) -> np.ndarray:
        out = np.zeros(cols.static.n, np.int64)
        for i, view in enumerate(cols.views):
            v = self.inner.check(view, req)
            if not v.ok:
                out[i] = self.codes.setdefault(v.code, len(self.codes) + 1)
        return out


class CostByCost:
    """A cost asked of each candidate on its own (no ``column``)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.unit, self.weight = inner, inner.name, inner.unit, inner.weight
        self.host_invariant = getattr(inner, "host_invariant", False)

    def cost(self, view: CandidateView, req: PlacementRequest, graph: Any) -> float:
        return self.inner.cost(view, req, graph)


class Straightforward(Scheduler):
    """The pipeline with its stacked pass off (see the module docstring for the rest)."""

    def _open_grouped(self, *args: Any, **kwargs: Any) -> None:
        return None


def _straightforward(sched: Scheduler) -> Scheduler:
    """``sched``'s own rules and costs, asked one by one, on a fresh Scheduler over its ledger."""
    filters = [OneByOne(f) if f.scope == "slot" else f for f in sched.filters]
    return Straightforward(sched.snapshot, filters=filters, costs=[CostByCost(c) for c in sched.costs],
                           ledger=sched.ledger, graph=sched.graph)


HOSTS = st.fixed_dictionaries({
    "cores": st.sampled_from((8, 16, 32, 64)), "mem_gib": st.sampled_from((32, 64, 256)),
    "used": st.floats(0, 1), "used_gib": st.integers(0, 24),
    "gpus": st.sampled_from(({}, {}, {"H100": 2}, {"H100": 8}, {"A30": 2})),
    "kind": st.sampled_from(("intel", "amd", "amd", "arm")), "hv": st.sampled_from(("kvm", "kvm", "esxi")),
    "nested": st.booleans(), "state": st.sampled_from(("up", "up", "up", "down")),
})


@st.composite
def catalogs(draw: st.DrawFn, max_sites: int = 4) -> Snapshot:
    """2-``max_sites`` on-prem sites (some above the explanation's grouping size, some with one hypervisor)
    and a cloud region with x86, arm64 and GPU flavors."""
    providers = [ProviderView(1, "dc", "openstack", True, KVM_CAPS),
                 ProviderView(2, "aws", "aws", False, frozenset({"gpu"}))]
    n_sites = draw(st.integers(2, max_sites))
    sites = [(i, 1, f"dc/s{i}", f"s{i}", draw(st.sampled_from(("TW", "DE")))) for i in range(1, n_sites + 1)]
    sites.append((99, 2, "aws/r1", "r1", "US"))
    hosts, rows, hid = [], [], 0
    for site_id, *_ in sites[:-1]:
        size = draw(st.sampled_from((1, 3, EXPLAIN_GROUP_OVER + 1, EXPLAIN_GROUP_OVER + 9)))
        one_hv = draw(st.booleans())
        for h in draw(st.lists(HOSTS, min_size=size, max_size=size)):
            hid += 1
            arm = h["kind"] == "arm"
            hosts.append(host(hid, site_id, cores=h["cores"], mem_gib=h["mem_gib"],
                              used_vcpus=int(h["used"] * h["cores"]), used_gib=h["used_gib"], gpus=h["gpus"],
                              arch="aarch64" if arm else "x86_64",
                              vendor={"intel": "Intel", "amd": "AMD", "arm": "ARM"}[h["kind"]],
                              features=frozenset() if arm else (SKYLAKE if h["kind"] == "intel" else MILAN),
                              hv="kvm" if one_hv else h["hv"], nested=h["nested"], state=h["state"]))
        vcpu = draw(st.sampled_from(("0.01", "0.02", "0.025", "0.03", "0.015")))
        rows += parts(1, f"s{site_id}", vcpu, draw(st.sampled_from(("0.002", "0.004"))),
                      H100=draw(st.sampled_from(("2.5", "4"))), A30="0.9")
    flavors = [FlavorView(101, "m5.xlarge", 2, None, 4, 16384, arch="x86_64"),
               FlavorView(102, "m7g.xlarge", 2, None, 4, 16384, arch="aarch64"),
               FlavorView(103, "p5.48xlarge", 2, None, 192, 2048 * 1024, gpu_model="H100", gpu_count=8)]
    rows += prices(2, "r1", **{"m5.xlarge": "0.192", "m7g.xlarge": "0.163", "p5.48xlarge": "98.32"})
    return build_snapshot(currency="USD", providers=providers, sites=sites, hosts=hosts, flavors=flavors, prices=rows)


REQUESTS = st.builds(
    dict,
    vcpus=st.sampled_from((1, 2, 4, 8, 16)), ram_gib=st.sampled_from((1, 2, 8, 16, 64)),
    extra=st.sampled_from(({}, {}, {}, {"gpu_model": "H100", "gpu_count": 1}, {"gpu_model": "a30", "gpu_count": 2},
                           {"cpu_arch": "aarch64"}, {"nested_virt": True, "strategy": "spread"},
                           {"residency": ("DE",)}, {"cpu_features": frozenset({"avx512f"})})),
    mode=st.sampled_from(("place", "explain", "every", "dry")),
)


def _same(fast: Placement, slow: Placement, what: str) -> None:
    for name in Placement.__dataclass_fields__:
        assert getattr(fast, name) == getattr(slow, name), (what, name)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(snap=catalogs(), stream=st.lists(REQUESTS, min_size=1, max_size=12))
def test_optimised_pipeline_matches_a_straightforward_run(snap: Snapshot, stream: list[dict[str, Any]]) -> None:
    sched = Scheduler(snap)
    for i, r in enumerate(stream):
        req = PlacementRequest(f"r{i}", r["vcpus"], r["ram_gib"] * 1024, **r["extra"])
        explain, every, reserve = r["mode"] in ("explain", "every"), r["mode"] == "every", r["mode"] == "place"
        expected, verdicts = _reference(sched, sched.prefilter(req)[0])  # before this request reserves
        slow = _straightforward(sched).place(req, explain=explain, every_host=every, reserve=False)
        fast = sched.place(req, explain=explain, every_host=every, reserve=reserve)
        _same(fast, slow, (i, r))
        assert _placed_name(fast) == expected, (i, r)
        if every:
            rejected = {x.candidate: (x.filter, x.code) for x in fast.rejections if x.kind == "host"}
            for name, verdict in verdicts.items():
                if snap.host_named(name) is not None:
                    assert rejected.get(name) == verdict, (i, name)


class SiteReading:
    """A slot rule whose ``fails`` reads its site (which stacked columns do not have): no host of "dc/s2"."""

    name, scope = "no-s2", "slot"

    def check(self, view: CandidateView, req: PlacementRequest) -> Verdict:
        if view.kind == "host" and view.site.name == "dc/s2":
            return Verdict.reject("site s2", "no-s2: not on dc/s2")
        return Verdict(True)

    def fails(self, cols: SiteColumns, req: PlacementRequest) -> np.ndarray:
        return np.full(cols.static.n, cols.site.name == "dc/s2", bool)


def test_a_rule_that_reads_its_site_is_asked_site_by_site() -> None:
    """A grouped explanation falls back to opening sites one by one when a rule's fails needs more than
    the arrays: same answer as the straightforward run."""
    sites = [(i, 1, f"dc/s{i}", f"s{i}", "TW") for i in (1, 2, 3)]
    hosts = [host(i, 1 + i % 3, cores=16, mem_gib=64, used_vcpus=i % 16) for i in range(1, 3 * EXPLAIN_GROUP_OVER + 7)]
    snap = build_snapshot(currency="USD", providers=[ProviderView(1, "dc", "openstack", True, KVM_CAPS)],
                          sites=sites, hosts=hosts, flavors=[],
                          prices=[row for i in (1, 2, 3) for row in parts(1, f"s{i}", f"0.0{i}", "0.004")])
    base = Scheduler(snap)
    sched = Scheduler(snap, filters=[*base.filters, SiteReading()])
    req = PlacementRequest("r", 4, 8192)
    fast = sched.place(req, explain=True, reserve=False)
    slow = _straightforward(sched).place(req, explain=True, reserve=False)
    _same(fast, slow, "site-reading rule")
    assert any(r.filter == "no-s2" and r.covers > 1 for r in fast.rejections)


SHAPES = st.sampled_from(((1, 1), (2, 2), (4, 8), (8, 16), (2, 64)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(snap=catalogs(max_sites=10), stream=st.lists(st.tuples(SHAPES, st.sampled_from(("place", "place", "explain"))),
                                                     min_size=5, max_size=40))
def test_a_stream_of_placements_matches_a_straightforward_run(snap: Snapshot,
                                                               stream: list[tuple[tuple[int, int], str]]) -> None:
    """Many sites and long streams of a few shapes, most of them reserving: each placement changes one
    site and one host, so the kept site order is patched in place (the changed site re-scored when every
    cost's bounds hold) and only the changed hosts are judged again. Every decision must still be the one
    a fresh, straightforward Scheduler makes over the same ledger."""
    sched = Scheduler(snap)
    for i, ((vcpus, ram_gib), mode) in enumerate(stream):
        req = PlacementRequest(f"r{i}", vcpus, ram_gib * 1024)
        explain = mode == "explain"
        slow = _straightforward(sched).place(req, explain=explain, reserve=False)
        fast = sched.place(req, explain=explain, reserve=not explain)
        _same(fast, slow, (i, vcpus, ram_gib, mode))


CHANGES = st.tuples(st.sampled_from(("reserve", "reserve", "release")), st.integers(0, 10_000),
                    st.sampled_from((0, 0, 1, 4, 16)), st.sampled_from((0, 0, 1, 64)),  # GPU-only changes too
                    st.sampled_from((None, "H100", "H100", "A30", "L4")), st.integers(1, 4))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(snap=catalogs(), changes=st.lists(CHANGES, min_size=1, max_size=30))
def test_site_views_patched_from_changed_hosts_match_a_fresh_aggregate(
        snap: Snapshot, changes: list[tuple[str, int, int, int, str | None, int]]) -> None:
    """A site view is patched from its columns' kept sums and the hosts a reservation or release changed
    (SiteColumns._moved_sums); it must equal the one aggregate_hosts makes from fresh host views over the same
    ledger, GPU models in the same order, whatever the changes: a host's maximum taken away, capacity given back
    beyond the snapshot's, a GPU model reserved on a host that has none of it. GPU models come in the order
    the columns give when built afresh (aggregate_hosts orders two models that first appear on one host by
    that host's map instead; equal views either way, and no rule or message reads the order)."""
    sched = Scheduler(snap)
    on_prem = [s for s in snap.sites if s.has_hosts]
    for n, (what, at, vcpus, ram_gib, model, count) in enumerate(changes):
        site = on_prem[at % len(on_prem)]
        h = site.hosts[(at // len(on_prem)) % len(site.hosts)]
        if what == "reserve":
            sched.ledger.reserve(Reservation(f"k{n}", site.id, h.id, vcpus, ram_gib * 1024, model,
                                             count if model else 0))
        else:
            sched.ledger.release_host(h.id, site.id, vcpus, ram_gib * 1024, model, count if model else 0)
        for s in on_prem:  # every site, as ranking reads them after each change
            fast = sched.site_view(s)
            slow = site_view(s, sched.ledger, sched.settings)
            assert fast == slow, (n, s.name)
            cols = sched.columns(s)
            fresh = SiteColumns(s, cols.static, cols.views, cols.versions).site_view()  # no kept sums
            assert fast == fresh and list(fast.gpus.items()) == list(fresh.gpus.items()), (n, s.name)
