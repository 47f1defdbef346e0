"""The rebalance policy's decision, over one catalog snapshot: which hosts run hot, which VMs leave them
(or a host in maintenance), and where they go. Pure: it reads the snapshot and the loads it is given and
returns moves with their reasons; :mod:`.rebalance_run` measures, persists and submits.

The rules (docs/rebalance.md):

- **Hysteresis.** A host turns *hot* when its CPU or memory reaches the policy's ``*_high_pct``; it stays
  hot until both are under their ``*_low_pct``. A move goes only to a host that is *cool*: under both
  low marks, up, not in maintenance. So a VM leaves a host at or above the high mark for one under the
  low mark, and going back would need the first host to fall under the low mark: a load that hovers at
  the high mark moves nothing back and forth.
- **Cooldown.** After an automatic move from or to a host, that host sheds nothing and takes nothing for
  ``cooldown_s`` (its new load is not measured yet), and the VM moved is not moved again for as long.
- **At most ``max_in_flight``** automatic moves of a policy run at once; a hot host sheds one VM per
  evaluation (the one using the most CPU, or memory when memory is the rule), a host in maintenance
  sheds all of them (cooldowns do not hold a drain back).
- **Live first.** The target is sought first among hosts a live migration reaches (same hypervisor
  family, a CPU that has every feature of the source's; :func:`live_check`); only a policy with
  ``allow_cold`` then looks further, and the move is cold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from metavmm.catalog.models import HostState
from metavmm.foundation.config import RebalancePolicy
from metavmm.foundation.errors import MetavmmError
from metavmm.scheduler.migration import MigrationPlanner, Move, live_check
from metavmm.scheduler.snapshot import HostView, Snapshot, WorkloadView


@dataclass(frozen=True, slots=True)
class Reading:
    """A host's load as the policy sees it, and what the policy remembers of the host."""

    cpu_pct: float
    mem_pct: float
    source: str  # measured, allocation, trace, override
    hot: bool = False  # hot at the last evaluation (the hysteresis state)
    maintenance: bool = False
    last_move_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Trigger:
    """The rule and the numbers that made a move: what its operation and event say."""

    policy: str
    rule: str  # cpu-high, mem-high, maintenance
    host: str
    cpu_pct: float
    mem_pct: float
    cpu_high_pct: float
    cpu_low_pct: float
    mem_high_pct: float
    mem_low_pct: float
    source: str

    @property
    def text(self) -> str:
        if self.rule == "maintenance":
            return f"policy {self.policy}: {self.host} is in maintenance (drain)"
        metric, value, high, low = (("CPU", self.cpu_pct, self.cpu_high_pct, self.cpu_low_pct)
                                    if self.rule == "cpu-high" else
                                    ("memory", self.mem_pct, self.mem_high_pct, self.mem_low_pct))
        if value >= high:
            return (f"policy {self.policy}: {self.host} {metric} {value:.1f}% ({self.source}) reached {high:g}%; "
                    f"hot until under {low:g}%")
        return (f"policy {self.policy}: {self.host} {metric} {value:.1f}% ({self.source}) is still not under "
                f"{low:g}% since it reached {high:g}% (hysteresis)")

    def as_dict(self) -> dict[str, object]:
        return {"policy": self.policy, "rule": self.rule, "host": self.host, "cpu_pct": self.cpu_pct,
                "mem_pct": self.mem_pct, "cpu_high_pct": self.cpu_high_pct, "cpu_low_pct": self.cpu_low_pct,
                "mem_high_pct": self.mem_high_pct, "mem_low_pct": self.mem_low_pct, "source": self.source,
                "why": self.text}


@dataclass(frozen=True, slots=True)
class PlannedMove:
    move: Move
    trigger: Trigger
    source_host_id: int
    target_host_id: int | None


@dataclass(frozen=True, slots=True)
class HostReport:
    host_id: int
    host: str  # site/host: unambiguous across providers
    cpu_pct: float
    mem_pct: float
    source: str
    state: str  # cool, warm (between the marks, not hot), hot, maintenance, down
    was_hot: bool
    cooldown_left_s: float


@dataclass
class Evaluation:
    policy: str
    hosts: list[HostReport] = field(default_factory=list)
    moves: list[PlannedMove] = field(default_factory=list)
    held: list[str] = field(default_factory=list)  # why something that wanted to move did not

    @property
    def hot(self) -> dict[int, bool]:
        """The hysteresis state to remember for the next evaluation."""
        return {h.host_id: h.state == "hot" for h in self.hosts}


def qualified(snap: Snapshot, host: HostView) -> str:
    return f"{snap.site(host.site_id).name}/{host.name}"


def allocation(host: HostView) -> Reading:
    """What a host without a measure reports: vCPUs and memory given to guests, over what it has."""
    return Reading(100.0 * host.vcpus_used / max(host.cores, 1), 100.0 * host.memory_mib_used / max(host.memory_mib, 1),
                   "allocation")


def is_hot(policy: RebalancePolicy, r: Reading) -> bool:
    if r.hot:
        return r.cpu_pct >= policy.cpu_low_pct or r.mem_pct >= policy.mem_low_pct
    return r.cpu_pct >= policy.cpu_high_pct or r.mem_pct >= policy.mem_high_pct


def _cool(policy: RebalancePolicy, r: Reading) -> bool:
    return r.cpu_pct < policy.cpu_low_pct and r.mem_pct < policy.mem_low_pct


def _trigger(policy: RebalancePolicy, snap: Snapshot, host: HostView, r: Reading) -> Trigger:
    if r.maintenance:
        rule = "maintenance"
    elif max(r.cpu_pct - policy.cpu_high_pct, r.mem_pct - policy.mem_high_pct) >= 0:  # furthest over its high mark
        rule = "cpu-high" if r.cpu_pct - policy.cpu_high_pct >= r.mem_pct - policy.mem_high_pct else "mem-high"
    else:  # hot by hysteresis: the metric furthest over its low mark keeps it hot
        rule = "cpu-high" if r.cpu_pct - policy.cpu_low_pct >= r.mem_pct - policy.mem_low_pct else "mem-high"
    return Trigger(policy.name, rule, qualified(snap, host), round(r.cpu_pct, 2), round(r.mem_pct, 2),
                   policy.cpu_high_pct, policy.cpu_low_pct, policy.mem_high_pct, policy.mem_low_pct, r.source)


def _host_states(snap: Snapshot, policy: RebalancePolicy, hosts: list[HostView], readings: Mapping[int, Reading],
                 now: datetime, drain_only: bool, out: Evaluation) -> dict[int, tuple[Reading, str, float]]:
    """Each host's reading, state (cool, warm, hot, maintenance, down) and cooldown left, reported in ``out``."""
    cooldown = timedelta(seconds=policy.cooldown_s)
    states: dict[int, tuple[Reading, str, float]] = {}
    for h in hosts:
        r = readings.get(h.id) or allocation(h)
        left = max(((r.last_move_at + cooldown) - now).total_seconds(), 0.0) if r.last_move_at else 0.0
        if r.maintenance or h.state == HostState.MAINTENANCE:
            r = Reading(r.cpu_pct, r.mem_pct, r.source, r.hot, True, r.last_move_at)
            state = "maintenance"
        elif h.state != HostState.UP:
            state = "down"
        elif not drain_only and is_hot(policy, r):
            state = "hot"
        else:
            state = "cool" if _cool(policy, r) else "warm"
        states[h.id] = (r, state, left)
        out.hosts.append(HostReport(h.id, qualified(snap, h), round(r.cpu_pct, 2), round(r.mem_pct, 2), r.source,
                                    state, r.hot, round(left, 1)))
    return states


def evaluate(snap: Snapshot, policy: RebalancePolicy, readings: Mapping[int, Reading], *, now: datetime,
             in_flight: int = 0, busy: frozenset[str] = frozenset(), recently_moved: frozenset[str] = frozenset(),
             vm_cpu: Mapping[str, float] | None = None, running: frozenset[str] | None = None,
             drain_only: bool = False) -> Evaluation:
    """What ``policy`` would move now. ``readings``: by host id (hosts without one count their allocation);
    ``in_flight``: the policy's automatic moves still running; ``busy``: workloads another operation is
    changing; ``recently_moved``: workloads an automatic move touched within the cooldown; ``vm_cpu``:
    each workload's CPU share of its host, where measured; ``running``: the workloads whose VM runs (None:
    all; a stopped VM uses no CPU and cannot move live, so it stays); ``drain_only``: no host turns hot,
    only maintenance moves anything (a host in maintenance that no configured policy covers)."""
    out = Evaluation(policy.name)
    vm_cpu = vm_cpu or {}
    sites = [s for ref in policy.sites if (s := snap.site_named(ref)) is not None]
    missing = [ref for ref in policy.sites if snap.site_named(ref) is None]
    if missing:
        out.held.append(f"sites not in the catalog: {', '.join(missing)}")
    hosts = [h for s in sites for h in s.hosts]
    states = _host_states(snap, policy, hosts, readings, now, drain_only, out)
    if not policy.enabled:
        out.held.append("the policy is disabled: nothing moves")
        return out
    budget = policy.max_in_flight - in_flight
    planner = MigrationPlanner(snap)
    pool = tuple(s.name for s in sites)
    draining = [h for h in hosts if states[h.id][1] == "maintenance"]
    hot = sorted((h for h in hosts if states[h.id][1] == "hot"),
                 key=lambda h: -max(states[h.id][0].cpu_pct - policy.cpu_high_pct,
                                    states[h.id][0].mem_pct - policy.mem_high_pct))
    on_host: dict[int, list[WorkloadView]] = {h.id: [] for h in hosts}
    for w in snap.workloads:
        if w.host_id not in on_host or w.id in busy:
            continue
        if running is not None and w.id not in running:
            if states[w.host_id][1] == "maintenance":
                out.held.append(f"{w.name} on {qualified(snap, snap.host(w.host_id))} is not running: it stays "
                                "(move it with a cold migration, or start it and let the drain take it)")
            continue
        on_host[w.host_id].append(w)
    received: set[int] = set()
    for source in [*draining, *hot]:
        r, state, left = states[source.id]
        drain = state == "maintenance"
        name = qualified(snap, source)
        if not drain and left > 0:
            out.held.append(f"{name} is hot but cooling down after a move ({left:.0f} s left)")
            continue
        candidates = [w for w in on_host[source.id] if drain or w.id not in recently_moved]
        if not candidates:
            if not drain and on_host[source.id]:
                out.held.append(f"{name} is hot but every VM on it moved within the cooldown")
            continue
        trig = _trigger(policy, snap, source, r)
        if trig.rule == "mem-high":  # the VM that frees the most memory
            candidates.sort(key=lambda w: (-w.ram_mib, w.name))
        else:  # the busiest VM where measured, else the one with the most vCPUs
            candidates.sort(key=lambda w: (-vm_cpu.get(w.id, 0.0), -w.vcpus, w.name))
        # targets: cool hosts of the pool, not cooling down (a drain may pile onto one that just took a VM)
        avoid = frozenset(h.id for h in hosts if h.id != source.id and (
            states[h.id][1] != "cool" or (not drain and (states[h.id][2] > 0 or h.id in received))))
        for w in candidates if drain else candidates[:1]:
            if budget <= 0:
                out.held.append(f"{policy.max_in_flight} automatic moves in flight: {w.name} on {name} waits")
                break
            planned = _target(planner, snap, policy, w, source, pool, avoid)
            if isinstance(planned, str):
                out.held.append(f"{w.name} on {name}: {planned}")
                continue
            target_id = next((h.id for h in hosts if planned.target_host == h.name
                              and snap.site(h.site_id).name == planned.target_site), None)
            out.moves.append(PlannedMove(planned, trig, source.id, target_id))
            if target_id is not None:
                received.add(target_id)  # its cooldown starts now: the next hot host sends elsewhere
            budget -= 1
    return out


def _target(planner: MigrationPlanner, snap: Snapshot, policy: RebalancePolicy, w: WorkloadView, source: HostView,
            pool: tuple[str, ...], avoid: frozenset[int]) -> Move | str:
    """A move for ``w`` inside the pool: live if any cool host takes it live, else cold where allowed; or why not."""
    not_live = frozenset(h.id for s in pool if (site := snap.site_named(s)) is not None for h in site.hosts
                         if h.id != source.id and live_check(snap, source, h) is not None)
    try:
        return planner.move_one(w.id, within=pool, avoid_hosts=avoid | not_live)
    except MetavmmError as exc:
        live_reason = str(exc)
    if not policy.allow_cold:
        return f"no cool host takes it live ({live_reason}); the policy allows no cold move"
    try:
        return planner.move_one(w.id, within=pool, avoid_hosts=avoid)
    except MetavmmError as exc:
        return str(exc)
