"""The federation as a networkx graph, and the image routes the scheduler finds in it.

Shape (see docs/scheduler.md for a picture)::

    provider:<name> --offers--> site:<id> --has--> host:<id>
                                          --has--> flavor:<id>
    replica:<image>@<site>/<fmt> --stored_at--> site:<id>
    site:<a> --transfer (mib_per_s, latency_s, egress_per_gib)--> site:<b>      (every ordered pair)
    format:<a> --convert (qemu-img, ConversionEdge)--> format:<b>
    hv:<src> --convert (virt-v2v, ConversionEdge)--> hv:kvm
    format:<f> --boots--> hv:<h>                 (HYPERVISOR_FORMATS)

Provider nodes carry their capabilities, site nodes their country, host nodes their hypervisor and CPU.
Conversion costs are imported from :mod:`metavmm.translators.costs`, never copied. Transfer edges use
the scheduler settings (the catalog has no measured link data yet): one bandwidth inside a provider,
a slower WAN figure between providers, and an egress price when data leaves a public cloud.

An image route is a shortest path (by seconds) in a small per-request graph whose nodes are
``(site, format, guest family)``: start at every replica, unpack an OVA, convert with qemu-img, fix the
guest with virt-v2v, transfer between sites, and end at a format the target hypervisor boots. The
route's steps (``unpack``, ``convert``, ``fix-guest``, ``transfer``) are what
:mod:`metavmm.scheduler.provision` turns into the engine's steps.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from decimal import Decimal

import networkx as nx

from metavmm.foundation.config import SchedulerSettings
from metavmm.scheduler.request import ImageRef
from metavmm.scheduler.snapshot import SiteView, Snapshot, hypervisor_family
from metavmm.translators.costs import (
    HYPERVISOR_FORMATS,
    MIB,
    PACKAGE_FORMAT,
    ConversionEdge,
    DiskFormat,
    format_conversions,
    hypervisor_conversions,
    package_unpack,
)

GIB_BYTES = 1024 * MIB
Conversion = tuple[float, list[str]]  # seconds, tools


@functools.lru_cache(maxsize=1)
def conversion_graph() -> nx.DiGraph:
    """Formats and hypervisor families with the translators' conversion edges (site-independent)."""
    g = nx.DiGraph()
    for edge in format_conversions():
        g.add_edge(f"format:{edge.src}", f"format:{edge.dst}", tool=edge.tool, edge=edge)
    for edge in hypervisor_conversions():
        g.add_edge(edge.src, edge.dst, tool=edge.tool, edge=edge)
    for hv, formats in HYPERVISOR_FORMATS.items():
        for fmt in formats:
            g.add_edge(f"format:{fmt}", f"hv:{hv}", tool="boot")
    return g


@functools.lru_cache(maxsize=256)
def guest_reachable(src_family: str | None, dst_hypervisor: str) -> bool:
    """Can a guest built for ``src_family`` be made to boot on ``dst_hypervisor``?"""
    dst = hypervisor_family(dst_hypervisor)
    if dst_hypervisor not in HYPERVISOR_FORMATS and dst not in HYPERVISOR_FORMATS:
        return False
    if src_family is None or dst_hypervisor == "fake" or hypervisor_family(src_family) == dst:
        return True
    g = conversion_graph()
    src = f"hv:{hypervisor_family(src_family)}"
    return g.has_node(src) and g.has_node(f"hv:{dst}") and nx.has_path(g, src, f"hv:{dst}")


DISK_FORMATS = frozenset(f.value for f in DiskFormat)


def provider_native(fmt: str) -> bool:
    """An image only its own provider can boot (an AMI, a GCE image, a partner's os_tpl): no tool converts
    or copies it, so it boots where a replica of it already is, and nowhere else."""
    return fmt not in DISK_FORMATS and fmt != PACKAGE_FORMAT


def boot_formats(hypervisor: str) -> frozenset[str]:
    formats = HYPERVISOR_FORMATS.get(hypervisor) or HYPERVISOR_FORMATS.get(hypervisor_family(hypervisor))
    return frozenset(str(f) for f in formats or ())


@dataclass(frozen=True, slots=True)
class Link:
    mib_per_s: float
    latency_s: float
    egress_per_gib: Decimal

    def seconds(self, size_bytes: int) -> float:
        return self.latency_s + size_bytes / MIB / self.mib_per_s

    def price(self, size_bytes: int) -> Decimal:
        return self.egress_per_gib * Decimal(size_bytes) / GIB_BYTES


def link_rate(settings: SchedulerSettings, *, same_provider: bool) -> float:
    """MiB/s between two sites by the documented defaults: within one provider, or across two."""
    return settings.transfer_mib_per_s if same_provider else settings.wan_mib_per_s


def link_between(a: SiteView, b: SiteView, settings: SchedulerSettings) -> Link:
    """The documented default link between two sites (no measured data in the catalog yet). Data leaving
    ``a`` pays ``a``'s own egress price when the catalog has one (a gib-egress price of its provider and
    region), else the settings' default; within one on-prem provider it is free."""
    same_provider = a.provider.id == b.provider.id
    rate = link_rate(settings, same_provider=same_provider)
    egress = settings.on_prem_egress_price_per_gib if a.on_prem else settings.egress_price_per_gib
    priced = a.prices.egress
    if priced is not None and priced.amount is not None:
        egress = priced.amount
    return Link(rate, settings.transfer_latency_s, Decimal(0) if same_provider and a.on_prem else egress)


@dataclass(frozen=True, slots=True)
class RouteStep:
    action: str  # "unpack", "convert", "fix-guest", "transfer"
    site: str
    detail: str
    seconds: float
    price: Decimal = Decimal(0)
    tool: str = ""
    format: str = ""  # the disk's format after this step
    family: str = ""  # the guest's hypervisor family after this step
    source: tuple[str, str] | None = None  # a transfer's (provider, site) the data leaves: who bills its egress


@dataclass(frozen=True, slots=True)
class Route:
    steps: tuple[RouteStep, ...]
    seconds: float
    price: Decimal
    boot_format: str


class FederationGraph:
    """The networkx graph of one snapshot, and route finding over it."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.settings = snapshot.settings
        self._graph: nx.MultiDiGraph | None = None
        self._conv_cache: dict[tuple[str, str | None, str, int], Conversion | None] = {}
        self._routes: dict[tuple[ImageRef, int, str], Route | None] = {}

    @property
    def graph(self) -> nx.MultiDiGraph:
        """The full graph, built on first use (10,000 hosts take ~0.1 s)."""
        if self._graph is None:
            self._graph = self._build()
        return self._graph

    def _build(self) -> nx.MultiDiGraph:
        g = nx.MultiDiGraph()
        snap = self.snapshot
        for site in snap.sites:
            p = site.provider
            g.add_node(f"provider:{p.name}", kind="provider", provider_kind=p.kind, on_prem=p.on_prem,
                       capabilities=sorted(p.capabilities))
            sid = f"site:{site.id}"
            g.add_node(sid, kind="site", name=site.name, country=site.country, hypervisors=sorted(site.hypervisors))
            g.add_edge(f"provider:{p.name}", sid, kind="offers")
            for h in site.hosts:
                g.add_node(f"host:{h.id}", kind="host", name=h.name, hypervisor=h.hypervisor, arch=h.arch,
                           cpu_model=h.model, gpus=dict(h.gpus))
                g.add_edge(sid, f"host:{h.id}", kind="has")
            for f in site.flavors:
                g.add_node(f"flavor:{f.id}", kind="flavor", name=f.name, vcpus=f.vcpus, ram_mib=f.ram_mib)
                g.add_edge(sid, f"flavor:{f.id}", kind="has")
        for a in snap.sites:
            for b in snap.sites:
                if a.id != b.id:
                    link = link_between(a, b, self.settings)
                    g.add_edge(f"site:{a.id}", f"site:{b.id}", kind="transfer", mib_per_s=link.mib_per_s,
                               latency_s=link.latency_s, egress_per_gib=float(link.egress_per_gib))
        for image_id, replicas in snap.replicas.items():
            for r in replicas:
                node = f"replica:{image_id}@{r.site_id}/{r.format}"
                g.add_node(node, kind="replica", image=image_id, format=r.format, size_bytes=r.size_bytes)
                g.add_edge(node, f"site:{r.site_id}", kind="stored_at")
        g.add_edges_from((u, v, {"kind": "convert", **d}) for u, v, d in conversion_graph().edges(data=True))
        return g

    # --- fast estimates (used by filters and costs for every site) ----------------------------------

    def conversion(self, fmt: str, src_family: str | None, hypervisor: str, size: int) -> Conversion | None:
        """Seconds and tools to turn a ``fmt`` disk of a ``src_family`` guest into one ``hypervisor`` boots."""
        key = (fmt, src_family, hypervisor, size)
        if key not in self._conv_cache:
            self._conv_cache[key] = self._conversion(fmt, src_family, hypervisor, size)
        return self._conv_cache[key]

    def _conversion(self, fmt: str, src_family: str | None, hypervisor: str, size: int) -> Conversion | None:
        if provider_native(fmt) or not guest_reachable(src_family, hypervisor):
            return None
        targets = boot_formats(hypervisor)
        dst = hypervisor_family(hypervisor)
        seconds, tools = 0.0, []
        if fmt == PACKAGE_FORMAT:  # an OVA: its disk comes out by unpacking first
            unpack = package_unpack()
            seconds += unpack.seconds(size)
            tools.append(unpack.tool)
            fmt = unpack.dst
        if src_family is not None and hypervisor != "fake" and hypervisor_family(src_family) != dst:
            v2v = next(e for e in hypervisor_conversions() if e.src == f"hv:{hypervisor_family(src_family)}")
            seconds += v2v.seconds(size)
            tools.append(v2v.tool)
            fmt = DiskFormat.QCOW2.value  # virt-v2v writes qcow2
        if fmt not in targets:
            best = min((_format_edge(fmt, t) for t in targets), key=lambda e: e.seconds(size))
            seconds += best.seconds(size)
            tools.append(best.tool)
        return seconds, tools

    def movement(self, image: ImageRef, site: SiteView, hypervisor: str) -> tuple[float, Decimal] | None:
        """(seconds, egress price) of the best way to get ``image`` booting at ``site``; None: impossible."""
        if provider_native(image.format):
            return (0.0, Decimal(0)) if site.id in image.replica_sites else None
        conv = self.conversion(image.format, image.hypervisor, hypervisor, image.size_bytes)
        if conv is None:
            return None
        if not image.replica_sites or site.id in image.replica_sites:
            return conv[0], Decimal(0)
        best: tuple[float, Decimal] | None = None
        for src_id in image.replica_sites:
            link = link_between(self.snapshot.site(src_id), site, self.settings)
            cand = (conv[0] + link.seconds(image.size_bytes), link.price(image.size_bytes))
            if best is None or cand[0] < best[0]:
                best = cand
        return best

    # --- explicit routes (bind) ----------------------------------------------------------------------

    def route(self, image: ImageRef, site: SiteView, hypervisor: str) -> Route | None:
        """The step-by-step shortest route (networkx Dijkstra by seconds) of ``image`` to ``site``.

        Routes depend only on the image, the site and the hypervisor, all fixed in a snapshot: memoised.
        """
        key = (image, site.id, hypervisor)
        if key not in self._routes:
            if len(self._routes) > 100_000:
                self._routes.clear()
            self._routes[key] = self._route(image, site, hypervisor)
        return self._routes[key]

    def _route(self, image: ImageRef, site: SiteView, hypervisor: str) -> Route | None:
        if provider_native(image.format):
            return Route((), 0.0, Decimal(0), image.format) if site.id in image.replica_sites else None
        if not guest_reachable(image.hypervisor, hypervisor):
            return None
        size = image.size_bytes
        target_family = hypervisor_family(hypervisor)
        start_family = image.hypervisor if image.hypervisor is not None and hypervisor != "fake" else target_family
        start_family = hypervisor_family(start_family)
        sources = image.replica_sites or (site.id,)
        site_ids = set(sources) | {site.id}
        g = nx.DiGraph()
        families = {start_family, target_family}
        formats = [f.value for f in DiskFormat]
        if image.format == PACKAGE_FORMAT:
            formats.append(PACKAGE_FORMAT)  # a package travels as it is; it is unpacked where it is used
            unpack = package_unpack()
            for sid in site_ids:
                for fam in families:
                    g.add_edge((sid, PACKAGE_FORMAT, fam), (sid, unpack.dst, fam), weight=unpack.seconds(size),
                               step=("unpack", f"{PACKAGE_FORMAT} -> {unpack.dst}", unpack.tool, Decimal(0)))
        for sid in site_ids:
            for fam in families:
                for a in DiskFormat:
                    for b in DiskFormat:
                        if a is not b:
                            e = _format_edge(a.value, b.value)
                            g.add_edge((sid, a.value, fam), (sid, b.value, fam), weight=e.seconds(size), step=(
                                "convert", f"{a.value} -> {b.value}", e.tool, Decimal(0)))
                if fam != target_family and fam in {"xen", "esxi", "hyperv"}:
                    v2v = next(e for e in hypervisor_conversions() if e.src == f"hv:{fam}")
                    for a in DiskFormat:
                        g.add_edge((sid, a.value, fam), (sid, DiskFormat.QCOW2.value, "kvm"), weight=v2v.seconds(size),
                                   step=("fix-guest", f"{fam} guest -> kvm ({a.value} -> qcow2)", v2v.tool,
                                         Decimal(0)))
        for src in sources:
            if src == site.id:
                continue
            link = link_between(self.snapshot.site(src), site, self.settings)
            for fam in families:
                for a in formats:
                    g.add_edge((src, a, fam), (site.id, a, fam), weight=link.seconds(size), step=(
                        "transfer", f"{self.snapshot.site(src).name} -> {site.name} ({a})", "",
                        link.price(size)))
        for fmt in boot_formats(hypervisor):
            g.add_edge((site.id, fmt, target_family), "boot", weight=0.0, step=None)
        for src in sources:
            g.add_edge("start", (src, image.format, start_family), weight=0.0, step=None)
        try:
            path = nx.shortest_path(g, "start", "boot", weight="weight")
        except nx.NetworkXNoPath:
            return None
        steps = []
        for u, v in itertools.pairwise(path):
            data = g.edges[u, v]
            if data["step"] is None:
                continue
            action, detail, tool, price = data["step"]
            where = self.snapshot.site(v[0]).name if isinstance(v, tuple) else site.name
            left = self.snapshot.site(u[0]) if action == "transfer" and isinstance(u, tuple) else None
            steps.append(RouteStep(action, where, detail, data["weight"], price, tool, v[1], v[2],
                                   (left.provider.name, left.name) if left is not None else None))
        return Route(tuple(steps), sum(s.seconds for s in steps), sum((s.price for s in steps), Decimal(0)),
                     path[-2][1])


@functools.lru_cache(maxsize=64)
def _format_edge(src: str, dst: str) -> ConversionEdge:
    return next(e for e in format_conversions() if e.src == src and e.dst == dst)
