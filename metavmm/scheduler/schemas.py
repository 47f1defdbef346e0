"""The wire shapes of the scheduler's answers (REST bodies, ``--json`` output), and how to build them.

One set of pydantic models serves the REST API and the CLI, so both show the same fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from metavmm.scheduler.batch import BatchResult
from metavmm.scheduler.burst import ReplayReport, TraceRecord
from metavmm.scheduler.migration import MigrationPlan
from metavmm.scheduler.plan import Placement, PlanStep, Step
from metavmm.scheduler.request import ImageRef, PlacementRequest
from metavmm.scheduler.summary import explanation, placement_summary


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PlacementRequestIn(_In):
    name: str = Field(default="vm", min_length=1, max_length=255)
    vcpus: int = Field(ge=1, le=1024)
    ram_mib: int = Field(ge=1, le=64 * 1024 * 1024)
    disk_gib: int = Field(default=0, ge=0)
    project: str | None = None
    gpu_model: str | None = None
    gpu_count: int = Field(default=0, ge=0, le=64)
    cpu_arch: str | None = Field(default=None, max_length=32, description="the image's when omitted (x86_64 "
                                 "without an image); 'any': no constraint")
    cpu_vendor: str | None = None
    cpu_features: list[str] = Field(default_factory=list, max_length=256)
    nested_virt: bool = False
    image_id: str | None = None
    image_format: str = "qcow2"
    image_size_bytes: int = Field(default=0, ge=0)
    image_hypervisor: str | None = None
    residency: list[str] = Field(default_factory=list)
    sites: list[str] = Field(default_factory=list)
    providers: list[str] = Field(default_factory=list)
    on_prem_only: bool = False
    public_only: bool = False
    expected_hours: float | None = Field(default=None, gt=0)
    strategy: Literal["spread", "pack"] | None = None
    max_price_per_hour: float | None = Field(default=None, ge=0)
    boot_marker: str | None = Field(default=None, min_length=1, max_length=200,
                                    description="regex the serial console must show (the boot check)")

    def to_request(self) -> PlacementRequest:
        image = None
        if self.image_id or self.image_size_bytes or self.image_hypervisor:
            image = ImageRef(self.image_id, self.image_format, self.image_size_bytes, self.image_hypervisor)
        return PlacementRequest(
            self.name, self.vcpus, self.ram_mib, self.disk_gib, self.project, self.gpu_model, self.gpu_count,
            self.cpu_arch, self.cpu_vendor, frozenset(self.cpu_features), self.nested_virt, image,
            tuple(self.residency), tuple(self.sites), tuple(self.providers), on_prem_only=self.on_prem_only,
            public_only=self.public_only, expected_hours=self.expected_hours, strategy=self.strategy,
            max_price_per_hour=self.max_price_per_hour, boot_marker=self.boot_marker)


class PlaceIn(PlacementRequestIn):
    explain: bool = Field(default=False, description="open every site so every host gets a reason or a score")


class BatchIn(_In):
    requests: list[PlacementRequestIn] = Field(min_length=1, max_length=50_000)


class MigrationIn(_In):
    kind: Literal["evacuate-host", "evacuate-site", "rebalance"]
    host: str | None = None
    site: str | None = None
    tolerance: float = Field(default=0.15, gt=0, lt=1)
    max_moves: int = Field(default=20, ge=1, le=10_000)


class ReplayIn(_In):
    trace: list[TraceRecord] = Field(min_length=1, max_length=100_000)
    start: date | None = None


class StepOut(BaseModel):
    """A plan step: for a placement, the engine's step exactly as a create would run it (``name``,
    ``action``, ``args``, ``compensate``, ``commit``) with the scheduler's explanation; for a migration
    plan's move, a descriptive step (``params``)."""

    name: str | None = None
    action: str
    site: str
    detail: str
    seconds: float
    price: Decimal
    args: dict[str, object] = Field(default_factory=dict)
    compensate: str | None = None
    commit: bool = False
    params: dict[str, object] = Field(default_factory=dict)

    @classmethod
    def of(cls, s: Step | PlanStep) -> StepOut:
        if isinstance(s, Step):
            return cls(name=s.name, action=s.action, site=s.site, detail=s.detail, seconds=round(s.seconds, 3),
                       price=s.price, args=dict(s.args), compensate=s.compensate, commit=s.commit)
        return cls(action=s.action, site=s.site, detail=s.detail, seconds=round(s.seconds, 3), price=s.price,
                   params=dict(s.params))


class RejectionOut(BaseModel):
    candidate: str
    kind: str
    site: str
    filter: str
    code: str
    message: str
    covers: int
    numbers: dict[str, object] = Field(default_factory=dict, description="what was needed and what was free")


class AlternativeOut(BaseModel):
    candidate: str
    site: str
    score: float
    costs: dict[str, float]


class BurstOut(BaseModel):
    outcome: Literal["on-prem", "burst", "unplaced", "no-policy", "pinned"]
    policy: str | None
    reason: str
    rule: str = Field(default="", description="the rule that decided: no-policy, pinned, under-threshold, "
                      "over-threshold, on-prem-full, over-budget, no-public-candidate")
    utilisation: float | None
    threshold: float | None
    threshold_reached: bool | None = Field(default=None, description="whether on-prem utilisation with the "
                                           "request passes the policy's threshold")
    budget: Decimal | None = Field(default=None, description="the policy's monthly budget per project")
    budget_currency: str | None = None
    budget_spent: Decimal | None = Field(default=None, description="the project's burst spend this month before "
                                         "this request")
    burst_cost: Decimal | None = Field(default=None, description="the public choice's price over the expected "
                                       "hours")
    budget_left: Decimal | None = Field(default=None, description="what the budget keeps after this request")
    residency: list[str] = Field(default_factory=list, description="countries a burst had to stay in (empty: "
                                 "any)")
    allowed_providers: list[str] = Field(default_factory=list)


class PlacementOut(BaseModel):
    name: str
    placed: bool
    summary: str
    currency: str
    site: str | None
    provider: str | None
    region: str | None
    host: str | None
    flavor: str | None
    hypervisor: str | None
    price_per_hour: Decimal | None
    expected_hours: float
    total_price: Decimal | None
    seconds_to_ready: float
    steps: list[StepOut]
    rejections: list[RejectionOut]
    alternatives: list[AlternativeOut]
    burst: BurstOut | None = Field(description="the burst policies' verdict (null: none was consulted)")
    placement: dict[str, object] = Field(description="the placement summary a create of this request would "
                                         "store as the workload's spec.placement (docs/scheduler.md)")
    explanation: list[dict[str, object]] | None = Field(
        default=None, description="with explain: every candidate, chosen, passed (and how much costlier) or "
        "rejected (the first rule that failed, needed vs free)")

    @classmethod
    def of(cls, p: Placement, summary: dict[str, object] | None = None, *, explain: bool = False) -> PlacementOut:
        return cls(
            name=p.request.name, placed=p.placed, summary=p.summary, currency=p.currency, site=p.site,
            provider=p.provider, region=p.region, host=p.host, flavor=p.flavor, hypervisor=p.hypervisor,
            price_per_hour=p.price_per_hour, expected_hours=p.expected_hours, total_price=p.total_price,
            seconds_to_ready=round(p.seconds_to_ready, 3), steps=[StepOut.of(s) for s in p.steps],
            rejections=[RejectionOut(candidate=r.candidate, kind=r.kind, site=r.site, filter=r.filter, code=r.code,
                                     message=r.message, covers=r.covers, numbers=_plain(r.numbers))
                        for r in p.rejections],
            alternatives=[AlternativeOut(candidate=a.candidate, site=a.site, score=round(a.score, 4),
                                         costs=dict(a.breakdown)) for a in p.alternatives],
            burst=BurstOut(**p.burst.as_dict()) if p.burst is not None else None,
            placement=summary if summary is not None else placement_summary(p),
            explanation=explanation(p) if explain else None)


def _plain(numbers: Mapping[str, object]) -> dict[str, object]:
    return {k: (list(v) if isinstance(v, tuple | list | frozenset | set) else v) for k, v in numbers.items()}


class AssignmentOut(BaseModel):
    name: str
    site: str
    host: str | None
    flavor: str | None
    cost: float


class BatchOut(BaseModel):
    placed: int
    unplaced: dict[str, str]
    cost: float
    seconds: float
    task_classes: int
    machine_classes: int
    rounds: int
    assignments: list[AssignmentOut]

    @classmethod
    def of(cls, r: BatchResult) -> BatchOut:
        return cls(placed=len(r.assignments), unplaced=r.unplaced, cost=round(r.cost, 6), seconds=round(r.seconds, 4),
                   task_classes=r.task_classes, machine_classes=r.machine_classes, rounds=r.rounds,
                   assignments=[AssignmentOut(name=a.name, site=a.site, host=a.host, flavor=a.flavor,
                                              cost=round(a.unit_cost, 6)) for a in r.assignments])


class MoveOut(BaseModel):
    workload: str
    workload_id: str
    source_site: str
    source_host: str | None
    target_site: str
    target_host: str | None
    target_flavor: str | None
    mode: str
    why_mode: str
    seconds: float
    price: Decimal
    price_per_hour: Decimal | None
    steps: list[StepOut]


class MigrationOut(BaseModel):
    kind: str
    scope: str
    dry_run: bool
    summary: str
    seconds: float
    price: Decimal
    currency: str
    moves: list[MoveOut]
    unplaced: dict[str, str]

    @classmethod
    def of(cls, plan: MigrationPlan) -> MigrationOut:
        return cls(kind=plan.kind, scope=plan.scope, dry_run=plan.dry_run, summary=plan.summary,
                   seconds=round(plan.seconds, 3), price=plan.price, currency=plan.currency, unplaced=plan.unplaced,
                   moves=[MoveOut(workload=m.workload, workload_id=m.workload_id, source_site=m.source_site,
                                  source_host=m.source_host, target_site=m.target_site, target_host=m.target_host,
                                  target_flavor=m.target_flavor, mode=m.mode, why_mode=m.why_mode,
                                  seconds=round(m.seconds, 3), price=m.price, price_per_hour=m.price_per_hour,
                                  steps=[StepOut.of(s) for s in m.steps]) for m in plan.moves])


class DecisionOut(BaseModel):
    at_s: float
    rule: str
    detail: str


class JobOut(BaseModel):
    name: str
    project: str
    where: str
    provider: str | None
    burst: bool
    wait_s: float | None
    returned_s: float | None
    cost: Decimal
    on_prem_cost: Decimal
    reason: str
    rule: str = Field(description="the rule behind the last decision about the request")
    decisions: list[DecisionOut] = Field(description="every decision about the request: when, which rule "
                                         "fired, the numbers behind it")


class ReplayOut(BaseModel):
    policy: str
    currency: str
    requests: int
    public_cost: Decimal
    on_prem_cost: Decimal
    burst: int
    returned: int
    unplaced: int
    mean_wait_s: float
    max_wait_s: float
    peak_utilisation: float
    destinations: dict[str, int]
    budget_used: dict[str, Decimal]
    jobs: list[JobOut]

    @classmethod
    def of(cls, r: ReplayReport) -> ReplayOut:
        waits = r.waits()
        return cls(
            policy=r.policy, currency=r.currency, requests=len(r.jobs), public_cost=r.public_cost.quantize(
                Decimal("0.0001")), on_prem_cost=r.on_prem_cost.quantize(Decimal("0.0001")),
            burst=sum(j.burst for j in r.jobs), returned=sum(j.returned_s is not None for j in r.jobs),
            unplaced=sum(j.where == "unplaced" for j in r.jobs),
            mean_wait_s=round(sum(waits) / len(waits), 3) if waits else 0.0, max_wait_s=max(waits, default=0.0),
            peak_utilisation=round(r.peak_utilisation, 4), destinations=r.by_destination(),
            budget_used={f"{p}/{m}": v.quantize(Decimal("0.0001")) for (p, m), v in sorted(r.budget_used.items())},
            jobs=[JobOut(name=j.name, project=j.project, where=j.where, provider=j.provider, burst=j.burst,
                         wait_s=None if j.started_s is None else round(j.wait_s, 3), returned_s=j.returned_s,
                         cost=j.cost.quantize(Decimal("0.0001")), on_prem_cost=j.on_prem_cost.quantize(
                             Decimal("0.0001")), reason=j.reason, rule=j.rule,
                         decisions=[DecisionOut(at_s=d.at_s, rule=d.rule, detail=d.detail) for d in j.decisions])
                  for j in r.jobs])


class PolicyOut(BaseModel):
    name: str
    when_utilisation_above: float
    when_wait_longer_than_s: int | None
    allowed_providers: list[str]
    monthly_budget: Decimal | None
    currency: str
    residency: list[str]
    return_below: float
