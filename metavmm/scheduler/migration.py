"""Migration plans: evacuate a host or a site, rebalance a pool. Always a dry run: steps, times, prices.

Each workload to move gets a target from the single-placement pipeline (the evacuated hosts or site
excluded, capacity reserved in the ledger so two workloads do not count on the same free cores), then
a mode:

- **live** when source and target are hosts of the same provider, the same hypervisor family, the
  provider can live-migrate, and the target CPU offers every feature of the source CPU (same vendor
  and architecture: the guest's CPU baseline keeps working). One step: copy memory (and the disk when
  storage is not shared) while the guest runs.
- **cold** otherwise: export, convert (the image route: qemu-img, virt-v2v), transfer, import, boot,
  verify, clean up the source.

Times are estimates from documented rates (below and in the scheduler settings); prices are one-off
(egress) plus the new hourly price. Nothing runs: the plan is what the operations engine would do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from metavmm.foundation.errors import NoPlacement, NotFound, ValidationError
from metavmm.foundation.kinds import kind_info
from metavmm.foundation.records import Capability
from metavmm.scheduler.graph import link_between
from metavmm.scheduler.ledger import Reservation
from metavmm.scheduler.pipeline import Scheduler
from metavmm.scheduler.plan import Placement, PlanStep
from metavmm.scheduler.quotes import storage_per_hour
from metavmm.scheduler.request import ImageRef, PlacementRequest
from metavmm.scheduler.snapshot import HostView, SiteView, Snapshot, WorkloadView, hypervisor_family
from metavmm.scheduler.summary import offer
from metavmm.scheduler.views import host_free, host_view

EXPORT_MIB_PER_S = 200.0  # reading a stopped guest's disk out of the source VMM
IMPORT_MIB_PER_S = 200.0  # writing it into the target VMM's image store
DIRTY_FACTOR = 1.3  # live migration copies some memory pages more than once
BOOT_S = 30.0
VERIFY_S = 10.0
CLEANUP_S = 5.0
GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True, slots=True)
class Move:
    workload: str
    workload_id: str
    source_site: str
    source_host: str | None
    target_site: str
    target_host: str | None
    target_flavor: str | None
    mode: str  # live, cold
    why_mode: str
    steps: tuple[PlanStep, ...]
    seconds: float
    price: Decimal
    price_per_hour: Decimal | None  # at the target, its disk included (what the plan compares)
    offer: dict[str, Any] = field(default_factory=dict)  # its flavor and compute price there (summary.offer),
    # and under "egress" what its transfer costs, the GiB and the site the data leaves (a one-off ledger charge)


@dataclass(frozen=True)
class MigrationPlan:
    kind: str  # evacuate-host, evacuate-site, rebalance
    scope: str
    moves: tuple[Move, ...]
    unplaced: dict[str, str]
    currency: str
    dry_run: bool = True

    @property
    def seconds(self) -> float:
        return sum(m.seconds for m in self.moves)

    @property
    def price(self) -> Decimal:
        return sum((m.price for m in self.moves), Decimal(0))

    @property
    def summary(self) -> str:
        live = sum(1 for m in self.moves if m.mode == "live")
        text = (f"{self.kind} {self.scope}: {len(self.moves)} moves ({live} live, {len(self.moves) - live} cold), "
                f"~{self.seconds:.0f} s in sequence, {self.price:.2f} {self.currency} one-off")
        if self.unplaced:
            text += f"; {len(self.unplaced)} workloads have no target"
        return text


def _disk_bytes(w: WorkloadView) -> int:
    return w.disk_bytes or w.disk_gib * GIB


def live_check(snapshot: Snapshot, source: HostView | None, target: HostView | None) -> str | None:
    """None when a live migration works, else why not."""
    if source is None or target is None:
        return "the target is a public cloud flavor (no host to migrate into)" if source else "source host unknown"
    s_site, t_site = snapshot.site(source.site_id), snapshot.site(target.site_id)
    if s_site.provider.id != t_site.provider.id:
        kind = kind_info(s_site.provider.kind)
        if s_site.provider.kind != t_site.provider.kind or kind is None or not kind.live_between_providers:
            return f"different providers ({s_site.provider.name} -> {t_site.provider.name})"
        if Capability.LIVE_MIGRATION not in t_site.provider.capabilities:
            return f"{t_site.provider.name} cannot live-migrate"
    if Capability.LIVE_MIGRATION not in s_site.provider.capabilities:
        return f"{s_site.provider.name} cannot live-migrate"
    if hypervisor_family(source.hypervisor) != hypervisor_family(target.hypervisor):
        return f"hypervisor {source.hypervisor} -> {target.hypervisor}"
    if source.arch != target.arch or source.vendor != target.vendor:
        return f"CPU {source.vendor} {source.arch} -> {target.vendor} {target.arch}"
    missing = sorted(source.features - target.features)
    if missing:
        return f"target CPU lacks {', '.join(missing[:4])}{'...' if len(missing) > 4 else ''}"
    return None


def egress_charge(snap: Snapshot, w: WorkloadView, target: SiteView,
                  price: Decimal | None = None) -> dict[str, Any] | None:
    """The one-off charge of ``w``'s disk leaving its site for ``target`` (a move's ``offer["egress"]``, which
    the record step writes in the spend ledger), billed by the site it leaves; None when nothing is paid.

    ``price``: what the move's own transfer steps pay; None (a move that names its target provider and
    region but was not planned here) prices the link between the two sites as the image route does.
    """
    s_site = snap.site(w.site_id) if w.site_id is not None else None
    size = _disk_bytes(w)
    if price is None:
        moves = s_site is not None and s_site.id != target.id
        price = link_between(s_site, target, snap.settings).price(size) if moves else Decimal(0)  # type: ignore[arg-type]
    if price <= 0:
        return None
    return {"amount": str(price), "currency": snap.currency, "source": "egress", "gib": str(Decimal(size) / GIB),
            "provider": s_site.provider.name if s_site else None, "site": s_site.name if s_site else None}


class MigrationPlanner:
    def __init__(self, snapshot: Snapshot, scheduler: Scheduler | None = None) -> None:
        self.snapshot = snapshot
        self.scheduler = scheduler or Scheduler(snapshot)
        self.settings = snapshot.settings

    def _request(self, w: WorkloadView, source: HostView | None, **kw: object) -> PlacementRequest:
        hv = source.hypervisor if source else None
        image = ImageRef(None, w.disk_format, _disk_bytes(w), hypervisor_family(hv) if hv else None,
                         (w.site_id,) if w.site_id is not None else ())
        site = self.snapshot.site(w.site_id) if w.site_id is not None else None
        return PlacementRequest(f"{w.name}", max(w.vcpus, 1), max(w.ram_mib, 1), w.disk_gib, gpu_model=w.gpu_model,
                                gpu_count=w.gpu_count, cpu_arch=source.arch if source else "x86_64", image=image,
                                move_from=site.provider if site is not None else None, residency=w.residency,
                                **kw)  # type: ignore[arg-type]

    def _move(self, w: WorkloadView, source: HostView | None, placement_site_id: int, target: HostView | None,
              flavor: str | None, price_per_hour: Decimal | None, route_steps: Sequence[PlanStep]) -> Move:
        snap = self.snapshot
        s_site = snap.site(w.site_id) if w.site_id is not None else None
        t_site = snap.site(placement_site_id)
        why = live_check(snap, source, target)
        size = _disk_bytes(w)
        if why is None:
            seconds = self.settings.transfer_latency_s + w.ram_mib * DIRTY_FACTOR / self.settings.transfer_mib_per_s
            seconds += size / MIB / self.settings.transfer_mib_per_s
            steps: tuple[PlanStep, ...] = (
                PlanStep("live-migrate", t_site.name, f"{w.name}: {source.name} -> {target.name} "  # type: ignore[union-attr]
                         f"(memory and disk copied while running)", seconds,
                         params={"workload_id": w.id, "target_host": target.name}),  # type: ignore[union-attr]
                PlanStep("verify", t_site.name, f"{w.name} running on {target.name}", VERIFY_S),  # type: ignore[union-attr]
            )
            mode, why_mode = "live", "same provider, hypervisor family and CPU baseline"
        else:
            src_name = s_site.name if s_site else "?"
            steps = (
                PlanStep("export", src_name, f"stop {w.name} and export its {w.disk_format} disk",
                         size / MIB / EXPORT_MIB_PER_S, params={"workload_id": w.id}),
                *[s for s in route_steps if s.action in ("convert", "fix-guest", "transfer")],
                PlanStep("import", t_site.name, f"import the disk into {t_site.provider.name}",
                         size / MIB / IMPORT_MIB_PER_S),
                PlanStep("boot", t_site.name, f"create and boot {w.name} on "
                         f"{target.name if target else flavor or t_site.name}", BOOT_S,
                         params={"host": target.name if target else None, "flavor": flavor}),
                PlanStep("verify", t_site.name, f"{w.name} answers on its new address", VERIFY_S),
                PlanStep("cleanup", src_name, f"delete {w.name} and its disk at the source", CLEANUP_S),
            )
            mode, why_mode = "cold", f"live impossible: {why}"
        disk_per_hour = storage_per_hour(t_site, w.disk_gib)
        priced = offer(flavor, price_per_hour, snap.currency, hypervisor=target.hypervisor if target else None,
                       storage_per_hour=disk_per_hour)
        if price_per_hour is not None:  # the disk keeps costing at the target where storage is priced
            price_per_hour += disk_per_hour
        price = sum((s.price for s in steps), Decimal(0))
        charge = egress_charge(snap, w, t_site, price)
        if charge is not None:  # the egress the transfer pays, charged on the workload's project when the move lands
            priced["egress"] = charge
        return Move(w.name, w.id, s_site.name if s_site else "?", source.name if source else None, t_site.name,
                    target.name if target else None, flavor, mode, why_mode, steps, sum(s.seconds for s in steps),
                    price, price_per_hour, priced)

    def evacuate(self, *, host: str | None = None, site: str | None = None) -> MigrationPlan:
        """Move every workload off a host (or every host of a site) to the best other place."""
        snap = self.snapshot
        if (host is None) == (site is None):
            raise ValidationError("evacuate exactly one of: a host or a site")
        if host is not None:
            h = snap.resolve_host(host)
            hosts, sites = frozenset({h.id}), frozenset()
            workloads = [w for w in snap.workloads if w.host_id == h.id]
            kind, scope = "evacuate-host", host
        else:
            s = snap.site_named(site)  # type: ignore[arg-type]
            if s is None:
                raise NotFound(f"no site named {site} in the catalog")
            hosts, sites = frozenset(x.id for x in s.hosts), frozenset({s.id})
            workloads = [w for w in snap.workloads if w.site_id == s.id]
            kind, scope = "evacuate-site", s.name
        moves, unplaced = [], {}
        for w in sorted(workloads, key=lambda w: (-w.vcpus, -w.ram_mib, w.name)):
            source = snap.find_host(w.host_id)
            req = self._request(w, source, exclude_hosts=hosts, exclude_sites=sites)
            p = self.scheduler.place(req, key=f"migrate:{w.id}")
            if not p.placed:
                unplaced[w.name] = p.summary
                continue
            target = snap.host(p.host_id) if p.host_id is not None else None
            moves.append(self._move(w, source, p.site_id, target, p.flavor, p.price_per_hour,  # type: ignore[arg-type]
                                    self._route_steps(p)))
        return MigrationPlan(kind, scope, tuple(moves), unplaced, snap.currency)

    def move_one(self, workload_id: str, *, site: str | None = None, host: str | None = None,
                 within: Sequence[str] = (), avoid_hosts: frozenset[int] = frozenset()) -> Move:
        """Where one workload should go (another host or site; ``site``/``host`` pin the target), and how.

        ``host`` is resolved near the workload (see :meth:`Snapshot.resolve_host`): a bare name means the
        host of that name in the workload's own site or provider before any other provider's. ``within``
        keeps the target inside those sites (a rebalance pool); ``avoid_hosts`` are not targets (hosts
        that run hot, or where the move could not be live). NoPlacement carries the pipeline's reasons
        when nothing else can take it.
        """
        snap = self.snapshot
        w = next((x for x in snap.workloads if x.id == workload_id), None)
        if w is None:
            raise NotFound(f"workload {workload_id} is not running at any site the catalog knows")
        source = snap.find_host(w.host_id)
        sites: tuple[str, ...] = tuple(within)
        exclude_hosts = (frozenset({source.id}) if source else frozenset()) | avoid_hosts
        exclude_sites = frozenset() if source or site or within else frozenset({w.site_id} - {None})
        if host is not None:
            target = snap.resolve_host(host, near_site_id=w.site_id)
            if source is not None and target.id == source.id:
                raise ValidationError(f"{w.name} already runs on {host}")
            t_site = snap.site(target.site_id)
            sites = (t_site.name,)
            exclude_hosts = frozenset(h.id for h in t_site.hosts if h.id != target.id)
        elif site is not None:
            t = snap.site_named(site)
            if t is None:
                raise NotFound(f"no site named {site} in the catalog")
            sites = (t.name,)
        req = self._request(w, source, sites=sites, exclude_hosts=exclude_hosts,  # type: ignore[arg-type]
                            exclude_sites=exclude_sites)
        p = self.scheduler.place(req, key=f"migrate:{w.id}")
        if not p.placed or p.site_id is None:
            raise NoPlacement(f"no target for {w.name}: {p.summary}", reasons=p.reasons())
        target_view = snap.host(p.host_id) if p.host_id is not None else None
        return self._move(w, source, p.site_id, target_view, p.flavor, p.price_per_hour, self._route_steps(p))

    def _route_steps(self, p: Placement) -> tuple[PlanStep, ...]:
        """The disk's route to the placement's site (convert, fix-guest, transfer), as the move's steps."""
        image = p.request.image
        if image is None or p.site_id is None or p.hypervisor is None:
            return ()
        route = self.scheduler.graph.route(image, self.snapshot.site(p.site_id), p.hypervisor)
        return tuple(PlanStep(s.action, s.site, s.detail, s.seconds, s.price, {"tool": s.tool})
                     for s in route.steps) if route is not None else ()

    def rebalance(self, *, site: str, tolerance: float = 0.15, max_moves: int = 20) -> MigrationPlan:
        """Even out vCPU utilisation inside one site: move small workloads from the busiest host to the
        idlest one that passes every filter, while the spread between them exceeds ``tolerance``."""
        snap = self.snapshot
        s = snap.site_named(site)
        if s is None:
            raise NotFound(f"no site named {site} in the catalog")
        if not s.hosts:
            raise ValidationError(f"{s.name} has no hosts to rebalance (a public cloud site)")
        ledger = self.scheduler.ledger
        on_host: dict[int, list[WorkloadView]] = {h.id: [] for h in s.hosts}
        for w in snap.workloads:
            if w.host_id in on_host:
                on_host[w.host_id].append(w)
        slot_filters = self.scheduler.slot_filters
        moves: list[Move] = []

        def util(h: HostView) -> float:
            v, _, _ = host_free(h, ledger, self.settings)
            total = max(int(h.cores * self.settings.cpu_allocation_ratio), 1)
            return (total - v) / total

        for _ in range(max_moves):
            ranked = sorted(s.hosts, key=util)
            idle, busy = ranked[0], ranked[-1]
            gap = util(busy) - util(idle)
            if gap <= tolerance or not on_host[busy.id]:
                break
            moved = False
            for w in sorted(on_host[busy.id], key=lambda w: (w.vcpus, w.name)):
                req = self._request(w, busy)
                for target in ranked[:-1]:
                    total_t = max(int(target.cores * self.settings.cpu_allocation_ratio), 1)
                    if util(target) + w.vcpus / total_t > util(busy) - w.vcpus / max(busy.cores, 1):
                        continue  # the move would not narrow the gap
                    view = host_view(s, target, ledger, self.settings)
                    if self.scheduler.run_filters(view, req, slot_filters, Counter()):
                        continue
                    ledger.release_host(busy.id, s.id, w.vcpus, w.ram_mib, w.gpu_model, w.gpu_count)
                    ledger.reserve(Reservation(f"rebalance:{w.id}", s.id, target.id, w.vcpus, w.ram_mib, w.gpu_model,
                                               w.gpu_count))
                    moves.append(self._move(w, busy, s.id, target, None, None, ()))
                    on_host[busy.id].remove(w)
                    on_host[target.id].append(w)
                    moved = True
                    break
                if moved:
                    break
            if not moved:
                break
        return MigrationPlan("rebalance", s.name, tuple(moves), {}, snap.currency)

