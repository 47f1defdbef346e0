"""Hybrid burst policies, and a replay of a policy over a recorded trace of requests.

A policy (``policies:`` in the federation file, :class:`~metavmm.foundation.config.BurstPolicy`) says when
on-prem work overflows to public providers:

- on-prem vCPU utilisation would pass ``when_utilisation_above`` with the request, or
- the request cannot start on-prem now and would wait longer than ``when_wait_longer_than_s``
  (estimated from when running work ends; unset: waiting alone never bursts);

then the request goes to the cheapest candidate of the ``allowed_providers`` that honours the
policy's ``residency`` (and the request's own), if its price over its duration still fits the
project's ``monthly_budget``; otherwise it waits on-prem. When on-prem utilisation falls below
``return_below`` and burst work has at least ``return_min_remaining_s`` left, it comes back
(most expensive first), and the budget gets the unused part back.

Trace format (JSON lines; ``#`` lines and blank lines are ignored), one request per line::

    {"at": 0, "name": "job-1", "project": "physics", "vcpus": 4, "ram_mib": 16384, "hours": 6}
    {"at": 120.5, "name": "job-2", "project": "bio", "vcpus": 8, "ram_mib": 32768, "hours": 2,
     "gpu_model": "A30", "gpu_count": 1, "residency": ["TW"]}

``at`` is seconds from the start of the trace, ``hours`` how long the work runs once started. The
replay is a discrete-event simulation over the snapshot: no driver is called, nothing is written.
"""

from __future__ import annotations

import heapq
import itertools
import json
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from dataclasses import replace as dataclass_replace
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from metavmm.foundation.config import BurstPolicy
from metavmm.foundation.errors import ValidationError
from metavmm.scheduler.costs import PriceCost
from metavmm.scheduler.graph import FederationGraph
from metavmm.scheduler.ledger import Ledger
from metavmm.scheduler.pipeline import Scheduler, ViewCache
from metavmm.scheduler.plan import Alternative, BurstVerdict, Placement
from metavmm.scheduler.request import PlacementRequest
from metavmm.scheduler.snapshot import Snapshot
from metavmm.scheduler.summary import money


class TraceRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    at: float = Field(ge=0, description="seconds from the start of the trace")
    name: str = Field(min_length=1, max_length=255)
    project: str = Field(default="default", max_length=128)
    vcpus: int = Field(ge=1, le=1024)
    ram_mib: int = Field(ge=1)
    hours: float = Field(gt=0, le=24 * 366)
    gpu_model: str | None = None
    gpu_count: int = Field(default=0, ge=0)
    cpu_arch: str | None = "x86_64"
    residency: list[str] = Field(default_factory=list)


def parse_trace(text: str, source: str = "<trace>") -> list[TraceRecord]:
    """Parse a JSON-lines trace; errors name the line and the field."""
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"{source}:{lineno}: not valid JSON: {exc.msg}") from None
        try:
            records.append(TraceRecord.model_validate(data))
        except pydantic.ValidationError as exc:
            errs = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in exc.errors())
            raise ValidationError(f"{source}:{lineno}: {errs}") from None
    if not records:
        raise ValidationError(f"{source}: the trace has no requests")
    return sorted(records, key=lambda r: r.at)


def load_trace(path: str | Path) -> list[TraceRecord]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ValidationError(f"{p}: cannot read the trace: {exc.strerror}") from None
    return parse_trace(text, str(p))


@dataclass(frozen=True)
class Decision:
    """One decision of the replay about one job: when, the rule that fired, and the numbers behind it.

    Rules (as :data:`metavmm.scheduler.plan.RULES`, plus the replay's own): ``under-threshold`` (ran
    on-prem), ``over-threshold`` or ``wait-too-long`` (burst), ``over-budget`` or ``no-public-candidate``
    (could not burst: ran on-prem over the threshold, or waited), ``queued`` (waits for on-prem),
    ``capacity-freed`` (a queued job started on-prem), ``returned`` (burst work brought home),
    ``unplaced`` (never ran).
    """

    at_s: float
    rule: str
    detail: str


@dataclass
class JobOutcome:
    name: str
    project: str
    arrived_s: float
    started_s: float | None = None
    where: str = "waiting"  # a site name, or "unplaced"
    provider: str | None = None
    burst: bool = False
    returned_s: float | None = None
    cost: Decimal = Decimal(0)  # public spend
    on_prem_cost: Decimal = Decimal(0)
    reason: str = ""
    decisions: list[Decision] = field(default_factory=list)  # every decision about the job, in time order

    @property
    def rule(self) -> str:
        """The rule behind the job's last decision."""
        return self.decisions[-1].rule if self.decisions else ""

    def decide(self, at: float, rule: str, detail: str) -> None:
        self.decisions.append(Decision(at, rule, detail))

    @property
    def wait_s(self) -> float:
        return (self.started_s - self.arrived_s) if self.started_s is not None else float("nan")


@dataclass
class ReplayReport:
    policy: str
    currency: str
    jobs: list[JobOutcome]
    budget_used: dict[tuple[str, str], Decimal] = field(default_factory=dict)  # (project, YYYY-MM) -> spent
    peak_utilisation: float = 0.0

    @property
    def public_cost(self) -> Decimal:
        return sum((j.cost for j in self.jobs), Decimal(0))

    @property
    def on_prem_cost(self) -> Decimal:
        return sum((j.on_prem_cost for j in self.jobs), Decimal(0))

    def waits(self) -> list[float]:
        return sorted(j.wait_s for j in self.jobs if j.started_s is not None)

    def by_destination(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for j in self.jobs:
            out[j.where] += 1
        return dict(sorted(out.items()))


@dataclass(order=True)
class _Event:
    at: float
    seq: int
    kind: Literal["arrive", "end"] = field(compare=False)
    job: int = field(compare=False)


class BurstReplay:
    """Runs one policy over one trace on one snapshot."""

    def __init__(self, snapshot: Snapshot, policy: BurstPolicy, *, start: date | None = None) -> None:
        if policy.currency != snapshot.currency and not snapshot.has_converter:
            raise ValidationError(f"policy {policy.name}: budget in {policy.currency} but prices in "
                                  f"{snapshot.currency}, and no currency converter is configured")
        self.snapshot = snapshot
        self.policy = policy
        self.start = start or date(2026, 1, 1)
        self.ledger = Ledger()
        self.on_prem = Scheduler(snapshot, ledger=self.ledger)
        # "cheapest first": public candidates are ranked by money alone (price over the duration + egress)
        self.public = Scheduler(snapshot, ledger=Ledger(), graph=self.on_prem.graph,
                                costs=[PriceCost(1.0, snapshot.settings.expected_hours)])
        hosts = [h for s in snapshot.sites if s.on_prem for h in s.hosts]
        self.capacity = sum(int(h.cores * snapshot.settings.cpu_allocation_ratio) for h in hosts)
        self._base_used = sum(h.vcpus_used for h in hosts)
        self._reserved = 0

    def utilisation(self, extra_vcpus: int = 0) -> float:
        if not self.capacity:
            return 1.0
        return (self._base_used + self._reserved + extra_vcpus) / self.capacity

    def _month(self, at_s: float) -> str:
        return (self.start + timedelta(seconds=at_s)).strftime("%Y-%m")

    def _request(self, rec: TraceRecord, *, public: bool) -> PlacementRequest:
        residency = tuple(rec.residency)
        if public and self.policy.residency:
            residency = tuple(c for c in (residency or self.policy.residency) if c in self.policy.residency)
            if not residency:
                residency = ("--",)  # the request's and the policy's countries do not overlap: nowhere
        return PlacementRequest(rec.name, rec.vcpus, rec.ram_mib, project=rec.project, gpu_model=rec.gpu_model,
                                gpu_count=rec.gpu_count, cpu_arch=rec.cpu_arch, residency=residency,
                                expected_hours=rec.hours, on_prem_only=not public, public_only=public,
                                providers=tuple(self.policy.allowed_providers) if public else ())

    def _estimated_wait(self, now: float, rec: TraceRecord, ends: Iterable[tuple[float, int]]) -> float:
        """When enough on-prem work has ended to free the request's vCPUs (ignores fragmentation)."""
        free = self.capacity - self._base_used - self._reserved
        if free >= rec.vcpus:
            return 0.0  # enough vCPUs in total; only fragmentation can make it wait
        for end_at, vcpus in sorted(ends):
            free += vcpus
            if free >= rec.vcpus:
                return end_at - now
        return float("inf")

    def run(self, trace: list[TraceRecord]) -> ReplayReport:
        pol = self.policy
        jobs = [JobOutcome(r.name, r.project, r.at) for r in trace]
        seq = itertools.count()
        events = [_Event(r.at, next(seq), "arrive", i) for i, r in enumerate(trace)]
        heapq.heapify(events)
        queue: deque[int] = deque()
        running_on_prem: dict[int, tuple[float, int]] = {}  # job -> (ends at, vcpus)
        running_public: dict[int, tuple[float, Decimal]] = {}  # job -> (ends at, price per hour)
        end_at: dict[int, float] = {}
        spent: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        burst_failure: dict[int, str] = {}  # job -> why its last burst attempt failed (a rule name)
        peak = self.utilisation()

        def start_on_prem(i: int, now: float, placement) -> None:  # type: ignore[no-untyped-def]
            nonlocal peak
            rec = trace[i]
            self._reserved += rec.vcpus
            peak = max(peak, self.utilisation())
            job = jobs[i]
            if job.started_s is None:
                job.started_s = now
            job.where, job.provider = placement.site, placement.provider
            remaining_h = (end_at[i] - now) / 3600 if i in end_at else rec.hours
            job.on_prem_cost += (placement.price_per_hour or Decimal(0)) * Decimal(str(round(remaining_h, 6)))
            if i not in end_at:
                end_at[i] = now + rec.hours * 3600
                heapq.heappush(events, _Event(end_at[i], next(seq), "end", i))
            running_on_prem[i] = (end_at[i], rec.vcpus)

        def try_on_prem(i: int, now: float, limit: float | None) -> bool:
            rec = trace[i]
            if limit is not None and self.utilisation(rec.vcpus) > limit:
                return False
            p = self.on_prem.place(self._request(rec, public=False), key=f"job:{i}")
            if not p.placed:
                return False
            start_on_prem(i, now, p)
            return True

        def try_burst(i: int, now: float) -> bool:
            rec = trace[i]
            p = self.public.place(self._request(rec, public=True), reserve=False)
            if not p.placed or p.price_per_hour is None:
                jobs[i].reason = p.summary
                burst_failure[i] = "no-public-candidate"
                return False
            cost = in_budget_currency(self.snapshot, p.price_per_hour * Decimal(str(rec.hours)), pol.currency)
            month = (rec.project, self._month(now))
            if pol.monthly_budget is not None and spent[month] + cost > pol.monthly_budget:
                jobs[i].reason = (f"budget: {cost:.2f} {pol.currency} would exceed {rec.project}'s "
                                  f"{pol.monthly_budget} for {month[1]} (spent {spent[month]:.2f})")
                burst_failure[i] = "over-budget"
                return False
            spent[month] += cost
            job = jobs[i]
            job.started_s, job.where, job.provider, job.burst = now, p.site or "?", p.provider, True
            job.cost = cost
            end_at[i] = now + rec.hours * 3600
            heapq.heappush(events, _Event(end_at[i], next(seq), "end", i))
            running_public[i] = (end_at[i], p.price_per_hour)
            return True

        def bring_back(now: float) -> None:
            for i, (ends, per_hour) in sorted(running_public.items(), key=lambda kv: -kv[1][1]):
                if self.utilisation() >= pol.return_below:
                    return
                if ends - now < pol.return_min_remaining_s:
                    continue
                if try_on_prem(i, now, pol.return_below):
                    refund = per_hour * Decimal(str(round((ends - now) / 3600, 6)))
                    jobs[i].cost -= refund
                    spent[(trace[i].project, self._month(now))] -= refund
                    jobs[i].returned_s = now
                    jobs[i].decide(now, "returned", f"on-prem fell below {pol.return_below:.0%} with "
                                   f"{(ends - now) / 3600:.1f} h left: brought home to {jobs[i].where}")
                    del running_public[i]

        while events:
            ev = heapq.heappop(events)
            now, i = ev.at, ev.job
            if ev.kind == "arrive":
                rec = trace[i]
                use = self.utilisation(rec.vcpus)
                over = use > pol.when_utilisation_above
                level = f"on-prem at {use:.0%} with it, threshold {pol.when_utilisation_above:.0%}"
                if not over and try_on_prem(i, now, None):
                    jobs[i].decide(now, "under-threshold", f"{level}: ran on-prem")
                    continue
                wait = self._estimated_wait(now, rec, running_on_prem.values())
                would_wait = pol.when_wait_longer_than_s is not None and wait > pol.when_wait_longer_than_s
                waiting = f"would wait ~{wait:.0f} s, policy bursts after {pol.when_wait_longer_than_s} s"
                if (over or would_wait) and try_burst(i, now):
                    jobs[i].decide(now, "over-threshold" if over else "wait-too-long",
                                   f"{level if over else waiting}: burst to {jobs[i].where}")
                    continue
                if over and try_on_prem(i, now, None):  # over the threshold, but bursting was not possible
                    jobs[i].decide(now, burst_failure.get(i, "no-public-candidate"),
                                   f"{level}; could not burst ({jobs[i].reason}): ran on-prem")
                    continue
                why = f"could not burst ({jobs[i].reason})" if (over or would_wait) else \
                    (waiting if pol.when_wait_longer_than_s is not None else "waiting alone never bursts")
                jobs[i].decide(now, burst_failure.get(i, "queued") if (over or would_wait) else "queued",
                               f"on-prem cannot take it now; {why}: queued")
                queue.append(i)
                continue
            # a job ended
            if i in running_on_prem:
                del running_on_prem[i]
                self.on_prem.unreserve(f"job:{i}")
                self._reserved -= trace[i].vcpus
            running_public.pop(i, None)
            for _ in range(len(queue)):
                j = queue.popleft()
                if try_on_prem(j, now, None):
                    jobs[j].decide(now, "capacity-freed", f"started on-prem after {now - trace[j].at:.0f} s")
                else:
                    queue.append(j)
            bring_back(now)
        for j in queue:
            jobs[j].where = "unplaced"
            jobs[j].reason = jobs[j].reason or "never fitted on-prem and could not burst"
            jobs[j].decide(jobs[j].arrived_s, "unplaced", jobs[j].reason)
        return ReplayReport(pol.name, self.snapshot.currency, jobs, dict(spent), peak)



def in_budget_currency(snapshot: Snapshot, amount: Decimal, currency: str) -> Decimal:
    """``amount`` (in the snapshot's currency) in a policy's budget ``currency``, through the snapshot's
    converter (a policy in another currency is refused without one, :class:`BurstReplay`)."""
    if currency == snapshot.currency or snapshot.to_currency is None:
        return amount
    return amount / snapshot.to_currency(Decimal(1), currency)


def on_prem_utilisation(snapshot: Snapshot, extra_vcpus: int = 0, ledger: Ledger | None = None) -> float:
    """vCPUs used (plus those ``ledger`` holds on on-prem hosts, plus ``extra_vcpus``) over the on-prem
    hosts' allocatable vCPUs; 1.0 without any."""
    hosts = [h for s in snapshot.sites if s.on_prem for h in s.hosts]
    capacity = sum(int(h.cores * snapshot.settings.cpu_allocation_ratio) for h in hosts)
    held = sum(ledger.vcpus.get(h.id, 0) for h in hosts) if ledger is not None else 0
    return (sum(h.vcpus_used for h in hosts) + held + extra_vcpus) / capacity if capacity else 1.0


def place_or_burst(snapshot: Snapshot, req: PlacementRequest, policies: Iterable[BurstPolicy], *,
                   ledger: Ledger | None = None, graph: FederationGraph | None = None,
                   explain: bool = False, views: ViewCache | None = None,
                   spent: Mapping[str, Decimal] | None = None,
                   schedulers: dict[object, Scheduler] | None = None) -> Placement:
    """A real request's placement under the federation's burst policies (what a create and its
    ``/placements`` dry run use), with the verdict on :attr:`Placement.burst`.

    Without policies (or when the request names its sites or providers) this is the plain placement.
    With them, on-prem comes first; a request that does not fit on-prem, or that would push on-prem
    vCPU utilisation (placements in transit included) past a policy's threshold, goes to the cheapest
    of that policy's allowed providers honouring its residency, if its price over the expected hours
    fits what is left of the policy's monthly budget (``spent``: policy name -> what the request's
    project has burst this month, as the broker recorded it; the replay models it itself). When no
    policy can take it, an over-threshold request still runs on-prem if it fits; otherwise the on-prem
    answer (with its reasons, and each policy's) is returned. The verdict names the rule that decided,
    whether the threshold was reached, the budget left, the residency and the allowed providers.
    ``ledger``, ``graph`` and ``views``: the create path's in-transit placements, its cached graph and
    its cached views (see :mod:`metavmm.services.placement`). ``schedulers``: the Schedulers of earlier
    calls over the same snapshot, ledger, graph and views, kept by the caller (a create batch decides
    each of its creates over one ledger): a Scheduler is made to be kept across a stream of requests
    while its ledger changes (tests/scheduler/test_equivalence.py), and one kept brings its views,
    rankings and verdicts up to date where the ledger changed instead of building them all again.
    """
    policies = list(policies)
    hours = req.expected_hours or snapshot.settings.expected_hours

    def scheduler(costs: str = "default") -> Scheduler:
        kept = schedulers.get(costs) if schedulers is not None else None
        if kept is None:
            kept = Scheduler(snapshot, ledger=ledger, graph=graph, views=views,
                             costs=[PriceCost(1.0, hours)] if costs != "default" else None)
            if schedulers is not None:
                schedulers[costs] = kept
        return kept

    spent = spent or {}
    pinned = bool(req.sites or req.providers or req.public_only)
    if not policies or pinned:
        plain = scheduler().place(req, reserve=False, explain=explain)
        why = "no burst policy is configured" if not policies else "the request names its sites or providers"
        rule = "pinned" if policies else "no-policy"
        return dataclass_replace(plain, burst=BurstVerdict(rule, why, rule=rule))
    home = scheduler().place(dataclass_replace(req, on_prem_only=True), reserve=False, explain=explain)
    over = on_prem_utilisation(snapshot, req.vcpus, ledger)
    why_not: list[str] = []
    failed: list[BurstVerdict] = []
    for pol in policies:
        limit = pol.when_utilisation_above
        residency = tuple(c for c in (req.residency or pol.residency) if not pol.residency or c in pol.residency)
        public_residency = residency or (("--",) if req.residency and pol.residency else ())
        used = spent.get(pol.name, Decimal(0))
        terms = {"policy": pol.name, "utilisation": over, "threshold": limit, "threshold_reached": over > limit,
                 "budget": pol.monthly_budget, "budget_currency": pol.currency,
                 "budget_spent": used if pol.monthly_budget is not None else None,
                 "budget_left": pol.monthly_budget - used if pol.monthly_budget is not None else None,
                 "residency": tuple(c for c in public_residency if c != "--"),
                 "allowed_providers": tuple(pol.allowed_providers)}
        if home.placed and over <= limit:
            return dataclass_replace(home, burst=BurstVerdict(
                "on-prem", f"stayed on-prem: utilisation would be {over:.0%}, policy {pol.name} bursts above "
                f"{limit:.0%}", rule="under-threshold", **terms))  # type: ignore[arg-type]
        public_req = dataclass_replace(req, public_only=True, on_prem_only=False, residency=public_residency,
                                       providers=tuple(pol.allowed_providers))
        cloud = scheduler(f"price over {hours!r} h").place(public_req, reserve=False, explain=explain)
        if not cloud.placed or cloud.price_per_hour is None:
            why_not.append(f"policy {pol.name}: {cloud.summary}")
            failed.append(BurstVerdict("", "", rule="no-public-candidate", **terms))  # type: ignore[arg-type]
            continue
        cost = in_budget_currency(snapshot, cloud.price_per_hour * Decimal(str(hours)), pol.currency)
        if pol.monthly_budget is not None and used + cost > pol.monthly_budget:
            left = pol.monthly_budget - used
            why_not.append(f"policy {pol.name}: {cost:.2f} {pol.currency} for {hours:g} h exceeds the monthly "
                           f"budget {pol.monthly_budget} ({left:.2f} left this month)")
            failed.append(BurstVerdict("", "", rule="over-budget", burst_cost=cost, **terms))  # type: ignore[arg-type]
            continue
        why = f"on-prem cannot take it ({home.summary})" if not home.placed else \
            f"on-prem utilisation would reach {over:.0%}, above the {limit:.0%} it allows"
        home_choice = None
        if home.placed and home.site is not None:
            home_choice = Alternative(home.host or home.flavor or home.site, home.site, 0.0, home.costs,
                                      "host" if home.host else "site", home.price_per_hour)
        if pol.monthly_budget is not None:
            terms["budget_left"] = pol.monthly_budget - used - cost
        verdict = BurstVerdict("burst", f"burst to {cloud.site} by policy {pol.name}: {why}; the cheapest allowed "
                               f"provider costs {money(cloud.price_per_hour)} {cloud.currency}/h", home=home_choice,
                               rule="on-prem-full" if not home.placed else "over-threshold", burst_cost=cost,
                               **terms)  # type: ignore[arg-type]
        return dataclass_replace(cloud, summary=f"burst by policy {pol.name} ({why}): {cloud.summary}",
                                 burst=verdict)
    first = failed[0] if failed else BurstVerdict("", "", policies[0].name)
    if home.placed:
        verdict = dataclass_replace(first, outcome="on-prem", reason=f"stayed on-prem although utilisation would "
                                    f"reach {over:.0%}: " + "; ".join(why_not))
        return dataclass_replace(home, summary=f"{home.summary} (no burst: {'; '.join(why_not)})", burst=verdict)
    verdict = dataclass_replace(first, outcome="unplaced", reason="fits nowhere on-prem and no policy could burst it"
                                + (": " + "; ".join(why_not) if why_not else ""))
    return dataclass_replace(home, summary=f"{home.summary}; " + "; ".join(why_not) if why_not else home.summary,
                             burst=verdict)
