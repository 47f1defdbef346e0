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
- **A drain takes stopped VMs too.** A VM observed stopped on a host in maintenance moves offline to
  another host of its own provider (it has no downtime to lose, so ``allow_cold`` does not hold it
  back) and stays stopped; one that is neither running nor stopped (suspended, in error) stays, with
  the reason in the plan's ``held``. A hot host sheds only running VMs (a stopped one uses no CPU).
- **A prediction.** The evaluation says how uneven the pool is now (:class:`Imbalance`: the spread
  of CPU and of memory over the hosts that take load) and how uneven it will be once its moves ran
  (each VM's share taken off its host and added to its target, scaled by their sizes).
- **Placement groups hold.** A VM never moves to a host that runs another member of its anti-affinity
  group (moves planned in the same evaluation count), and the members of an affinity group on the
  source host move together, to one host that takes them all, or not at all (the reason in ``held``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from metavmm.catalog.models import HostState
from metavmm.foundation.config import RebalancePolicy
from metavmm.foundation.errors import MetavmmError
from metavmm.scheduler.migration import MigrationPlanner, Move, live_check
from metavmm.scheduler.plan import PlanStep
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


@dataclass(frozen=True, slots=True)
class Imbalance:
    """How uneven a pool's load is: the highest host's percentage less the lowest's, for CPU and for
    memory, over the hosts that take load (up; not in maintenance, not down). 0 is even."""

    cpu_spread_pct: float
    mem_spread_pct: float
    hosts: int

    @staticmethod
    def of(loads: Mapping[int, tuple[float, float]]) -> Imbalance | None:
        """From (cpu %, mem %) by host; None for an empty pool."""
        if not loads:
            return None
        cpu, mem = [v[0] for v in loads.values()], [v[1] for v in loads.values()]
        return Imbalance(round(max(cpu) - min(cpu), 2), round(max(mem) - min(mem), 2), len(loads))


@dataclass
class Evaluation:
    policy: str
    hosts: list[HostReport] = field(default_factory=list)
    moves: list[PlannedMove] = field(default_factory=list)
    held: list[str] = field(default_factory=list)  # why something that wanted to move did not
    imbalance: Imbalance | None = None  # now
    predicted: Imbalance | None = None  # once the moves ran
    predicted_loads: dict[int, tuple[float, float]] = field(default_factory=dict)  # host id -> (cpu %, mem %)

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
             stopped: frozenset[str] = frozenset(), failed: Mapping[str, str] | None = None,
             drain_only: bool = False) -> Evaluation:
    """What ``policy`` would move now. ``readings``: by host id (hosts without one count their allocation);
    ``in_flight``: the policy's automatic moves still running; ``busy``: workloads another operation is
    changing; ``recently_moved``: workloads an automatic move touched within the cooldown; ``vm_cpu``:
    each workload's CPU share of its host, where measured; ``running``: the workloads whose VM runs (None:
    all); ``stopped``: those observed stopped (a drain moves them offline; a VM in neither set stays);
    ``failed``: workloads whose automatic move failed within the cooldown, and how (they wait it out, a
    drain too, rather than fail again at every sync);
    ``drain_only``: no host turns hot, only maintenance moves anything (a host in maintenance that no
    configured policy covers)."""
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
        _predict(snap, out, states, vm_cpu, frozenset())
        return out
    budget = policy.max_in_flight - in_flight
    pool = tuple(s.name for s in sites)
    targets = _Targets(snap, policy, MigrationPlanner(snap), pool, hosts,
                       {w.id: w.host_id for w in snap.workloads if w.host_id is not None})
    draining = [h for h in hosts if states[h.id][1] == "maintenance"]
    hot = sorted((h for h in hosts if states[h.id][1] == "hot"),
                 key=lambda h: -max(states[h.id][0].cpu_pct - policy.cpu_high_pct,
                                    states[h.id][0].mem_pct - policy.mem_high_pct))
    on_host: dict[int, list[WorkloadView]] = {h.id: [] for h in hosts}
    for w in snap.workloads:
        if w.host_id not in on_host or w.id in busy:
            continue
        if failed and w.id in failed:
            out.held.append(f"{w.name} on {qualified(snap, snap.host(w.host_id))}: its last automatic move "
                            f"failed ({failed[w.id]}); tried again after the cooldown")
            continue
        if running is not None and w.id not in running and w.id not in stopped:
            if states[w.host_id][1] == "maintenance":
                out.held.append(f"{w.name} on {qualified(snap, snap.host(w.host_id))} is neither running nor "
                                "stopped: it stays (stop or start it and let the drain take it)")
            continue
        on_host[w.host_id].append(w)
    is_stopped = frozenset(stopped if running is None else stopped - running)
    received: set[int] = set()
    planned_ids: set[str] = set()
    for source in [*draining, *hot]:
        r, state, left = states[source.id]
        drain = state == "maintenance"
        name = qualified(snap, source)
        if not drain and left > 0:
            out.held.append(f"{name} is hot but cooling down after a move ({left:.0f} s left)")
            continue
        candidates = [w for w in on_host[source.id] if drain or (w.id not in recently_moved
                                                                   and w.id not in is_stopped)]
        if not candidates:
            if not drain and on_host[source.id]:
                out.held.append(f"{name} is hot but every VM on it moved within the cooldown")
            continue
        trig = _trigger(policy, snap, source, r)
        if trig.rule == "mem-high":  # the VM that frees the most memory
            candidates.sort(key=lambda w: (w.id in is_stopped, -w.ram_mib, w.name))
        else:  # the busiest VM where measured, else the one with the most vCPUs (stopped ones last)
            candidates.sort(key=lambda w: (w.id in is_stopped, -vm_cpu.get(w.id, 0.0), -w.vcpus, w.name))
        # targets: cool hosts of the pool, not cooling down (a drain may pile onto one that just took a VM)
        avoid = frozenset(h.id for h in hosts if h.id != source.id and (
            states[h.id][1] != "cool" or (not drain and (states[h.id][2] > 0 or h.id in received))))
        for w in candidates if drain else candidates[:1]:
            if w.id in planned_ids:
                continue  # it goes with its affinity group
            unit = targets.unit(w, on_host[source.id], busy)
            if isinstance(unit, str):
                out.held.append(f"{w.name} on {name}: {unit}")
                continue
            if budget < len(unit):
                out.held.append(f"{policy.max_in_flight} automatic moves in flight: {w.name} on {name} waits"
                                + (f" (its affinity group moves {len(unit)} VMs together)" if len(unit) > 1 else ""))
                break
            planned = targets.plan(unit, source, avoid, is_stopped)
            if isinstance(planned, str):
                out.held.append(f"{w.name} on {name}{' (stopped)' if w.id in is_stopped else ''}: {planned}")
                continue
            for move, target_id in planned:
                out.moves.append(PlannedMove(move, trig, source.id, target_id))
                planned_ids.add(move.workload_id)
                if target_id is not None:
                    received.add(target_id)  # its cooldown starts now: the next hot host sends elsewhere
            budget -= len(planned)
    _predict(snap, out, states, vm_cpu, is_stopped)
    return out


def _predict(snap: Snapshot, out: Evaluation, states: Mapping[int, tuple[Reading, str, float]],
             vm_cpu: Mapping[str, float], stopped: frozenset[str]) -> None:
    """The pool's load once ``out.moves`` ran: each VM's CPU share (measured, else its vCPUs over the
    host's cores) and memory share taken off its source and added to its target, rescaled to the
    target's cores and memory; a stopped VM's move changes nothing (it uses neither)."""
    loads = {hid: [r.cpu_pct, r.mem_pct] for hid, (r, _, _) in states.items()}
    vms = {w.id: w for w in snap.workloads}
    for planned in out.moves:
        w = vms.get(planned.move.workload_id)
        if w is None or w.id in stopped or planned.target_host_id not in loads:
            continue
        src, dst = snap.host(planned.source_host_id), snap.host(planned.target_host_id)
        cpu = vm_cpu.get(w.id, 100.0 * w.vcpus / max(src.cores, 1))
        mem = 100.0 * w.ram_mib / max(src.memory_mib, 1)
        loads[src.id][0] -= cpu
        loads[src.id][1] -= mem
        loads[dst.id][0] += cpu * max(src.cores, 1) / max(dst.cores, 1)
        loads[dst.id][1] += mem * max(src.memory_mib, 1) / max(dst.memory_mib, 1)
    taking = [hid for hid, (_, state, _) in states.items() if state not in ("maintenance", "down")]
    after = {hid: (max(c, 0.0), max(m, 0.0)) for hid, (c, m) in loads.items()}
    out.predicted_loads = {hid: (round(c, 2), round(m, 2)) for hid, (c, m) in after.items()}
    out.imbalance = Imbalance.of({hid: (states[hid][0].cpu_pct, states[hid][0].mem_pct) for hid in taking})
    out.predicted = Imbalance.of({hid: after[hid] for hid in taking})


@dataclass
class _Targets:
    """Targets for the VMs one evaluation moves: live first (:func:`_target`), stopped VMs offline within
    their provider, affinity groups kept together and anti-affinity groups apart. ``where``: each
    workload's host as the moves planned so far leave it."""

    snap: Snapshot
    policy: RebalancePolicy
    planner: MigrationPlanner
    pool: tuple[str, ...]
    hosts: list[HostView]
    where: dict[str, int]

    def unit(self, w: WorkloadView, on_source: Sequence[WorkloadView],
             busy: frozenset[str]) -> list[WorkloadView] | str:
        """``w`` and the members of its affinity group on its host: what moves together (or why it cannot)."""
        if not w.affinity_group:
            return [w]
        mates = [m for m in self.snap.workloads if m.id != w.id and m.host_id == w.host_id
                 and m.project_id == w.project_id and m.affinity_group == w.affinity_group]
        held = [m.name for m in mates if m.id in busy or m not in on_source]
        if held:
            return (f"affinity group {w.affinity_group}: {', '.join(sorted(held))} cannot move now (busy, or "
                    "neither running nor stopped), and the group moves together")
        return [w, *mates]

    def anti(self, w: WorkloadView) -> frozenset[int]:
        """The hosts that run (or will, after the moves planned) another member of ``w``'s anti-affinity group."""
        if not w.anti_affinity_group:
            return frozenset()
        return frozenset(self.where[m.id] for m in self.snap.workloads if m.id != w.id and m.id in self.where
                         and m.project_id == w.project_id and m.anti_affinity_group == w.anti_affinity_group)

    def plan(self, unit: Sequence[WorkloadView], source: HostView, avoid: frozenset[int],
             stopped: frozenset[str]) -> list[tuple[Move, int | None]] | str:
        """One move per VM of ``unit``, all to one host (the first VM's target; another host when a mate
        does not fit there), or why none."""
        tried: set[int] = set()
        reason = ""
        for _ in range(max(len(self.hosts), 1)):
            first = self.one(unit[0], source, avoid | tried, unit[0].id in stopped, None)
            if isinstance(first, str):
                return first if not tried else f"{reason}; no other host takes the whole affinity group"
            target = self._host(first)
            moves = [(first, target.id if target is not None else None)]
            for m in unit[1:]:
                mv = (self.one(m, source, avoid, m.id in stopped, target) if target is not None
                      else "the affinity group needs a host to share")
                if isinstance(mv, str):
                    reason = f"affinity group {unit[0].affinity_group}: {m.name} does not go along ({mv})"
                    break
                moves.append((mv, target.id if target is not None else None))
            else:
                for mv, host_id in moves:
                    if host_id is not None:
                        self.where[mv.workload_id] = host_id
                return moves
            for mv, _ in moves:  # give the partial group's reservations back
                self.planner.scheduler.ledger.unreserve(f"migrate:{mv.workload_id}")
            if target is None:
                return reason
            tried.add(target.id)
        return reason

    def one(self, w: WorkloadView, source: HostView, avoid: frozenset[int], stopped: bool,
            host: HostView | None) -> Move | str:
        """A move for ``w`` (to ``host`` when given), or why not."""
        snap = self.snap
        anti = self.anti(w)
        if host is not None and host.id in anti:
            return f"anti-affinity group {w.anti_affinity_group}: {qualified(snap, host)} runs a member"
        avoid = avoid | anti
        if stopped:  # offline, within its provider (the move that keeps it stopped)
            provider = snap.site(source.site_id).provider.id
            elsewhere = frozenset(h.id for h in self.hosts if snap.site(h.site_id).provider.id != provider)
            if host is not None and host.id in elsewhere:
                return f"{qualified(snap, host)} is another provider's (a stopped VM moves within its own)"
            try:
                move = self.planner.move_one(w.id, host=qualified(snap, host) if host else None, within=self.pool,
                                             avoid_hosts=avoid | elsewhere)
            except MetavmmError as exc:
                return f"no host of its provider takes it ({exc})"
            where = move.target_host or move.target_site
            return replace(move, mode="cold", why_mode="stopped: moved offline within its provider, left stopped",
                           steps=(PlanStep("move-offline", move.target_site,
                                           f"{w.name} (stopped): {source.name} -> {where}, left stopped",
                                           move.seconds),))
        if host is None:
            found = _target(self.planner, snap, self.policy, w, source, self.pool, avoid)
            if isinstance(found, str) and anti:
                members = ", ".join(sorted(qualified(snap, snap.host(h)) for h in anti))
                found += f"; anti-affinity group {w.anti_affinity_group} keeps it off {members}"
            return found
        try:
            move = self.planner.move_one(w.id, host=qualified(snap, host))
        except MetavmmError as exc:
            return str(exc)
        if move.mode != "live" and not self.policy.allow_cold:
            self.planner.scheduler.ledger.unreserve(f"migrate:{w.id}")
            return f"{qualified(snap, host)} does not take it live ({move.why_mode}); the policy allows no cold move"
        return move

    def _host(self, move: Move) -> HostView | None:
        return next((h for h in self.hosts if move.target_host == h.name
                     and self.snap.site(h.site_id).name == move.target_site), None)


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
