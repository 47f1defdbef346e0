"""Auto-scaling groups: thin handlers over the autoscale service, whose members are ordinary computes of
the one workload service (see metavmm/services/autoscale/)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from metavmm.api import keys
from metavmm.api.keys import identity_of
from metavmm.api.rest.common import UUID_PATTERN, OutModel, Timestamp, id_model
from metavmm.api.rest.framework import RestModule
from metavmm.api.rest.workloads import OperationOut
from metavmm.services.autoscale.rules import DAYS, MAX_RULES
from metavmm.services.autoscale.service import (
    MAX_MEMBERS,
    ORDERS,
    AutoscaleService,
    GroupRequest,
    GroupView,
    public_template,
)
from metavmm.services.workloads.requests import SSH_KEY_MAX, USER_DATA_MAX

api = RestModule("autoscaling", "Auto-scaling groups: members added and removed by metric and schedule rules")

RULE_NAME = r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$"
METRIC = r"^[a-z][a-z0-9_.-]{0,62}$"
HHMM = r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$"


class MetricRuleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=RULE_NAME)
    type: Literal["metric"]
    metric: str = Field(default="cpu", pattern=METRIC,
                        description="cpu (the members' average utilisation, 0-100) or a metric you push")
    above: float | None = Field(default=None, ge=-1e12, le=1e12, description="scale out when the metric is above")
    below: float | None = Field(default=None, ge=-1e12, le=1e12, description="scale in when the metric is below")
    adjust: int = Field(default=1, ge=1, le=MAX_MEMBERS, description="members added or removed")


class ScheduleRuleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=RULE_NAME)
    type: Literal["schedule"]
    days: list[Literal[DAYS]] = Field(default=list(DAYS[:5]), min_length=1, max_length=7)  # type: ignore[valid-type]
    start: str = Field(pattern=HHMM, description="HH:MM, local to timezone")
    end: str = Field(pattern=HHMM, description="HH:MM, exclusive; after start")
    desired: int = Field(ge=0, le=MAX_MEMBERS, description="at least this many members during the window")
    timezone: str = Field(default="UTC", min_length=1, max_length=64, description="an IANA zone: Asia/Taipei")


Rule = Annotated[MetricRuleIn | ScheduleRuleIn, Field(discriminator="type")]


class GroupCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=40, description="lower-case letters, digits, inner hyphens")
    min_size: int = Field(default=1, ge=0, le=MAX_MEMBERS)
    max_size: int = Field(default=1, ge=1, le=MAX_MEMBERS)
    desired: int | None = Field(default=None, ge=0, le=MAX_MEMBERS, description="default: min_size")
    image_id: str | None = Field(default=None, min_length=1, max_length=300,
                                 description="a marketplace image: its id, name or publisher/name")
    flavor: str | None = Field(default=None, min_length=1, max_length=128)
    vcpus: int | None = Field(default=None, ge=1, le=4096)
    ram_mib: int | None = Field(default=None, ge=1, le=64 * 1024 * 1024)
    disk_gib: int = Field(default=0, ge=0, le=1_000_000)
    network_id: str | None = Field(default=None, pattern=UUID_PATTERN, description="a network workload to join")
    ssh_key: str | None = Field(default=None, min_length=1, max_length=SSH_KEY_MAX)
    user_data: str | None = Field(default=None, min_length=1, max_length=USER_DATA_MAX)
    rules: list[Rule] = Field(default_factory=list, max_length=MAX_RULES)
    cooldown_out_s: int = Field(default=60, ge=0, le=86400)
    cooldown_in_s: int = Field(default=300, ge=0, le=86400)
    scale_in_order: Literal[ORDERS] = "cost"  # type: ignore[valid-type]
    project_id: int | None = Field(default=None, ge=1, le=2**31 - 1, description="admins only: another project")


class GroupUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_size: int | None = Field(default=None, ge=0, le=MAX_MEMBERS)
    max_size: int | None = Field(default=None, ge=1, le=MAX_MEMBERS)
    desired: int | None = Field(default=None, ge=0, le=MAX_MEMBERS, description="set the count now (a manual scale)")
    rules: list[Rule] | None = Field(default=None, max_length=MAX_RULES)
    cooldown_out_s: int | None = Field(default=None, ge=0, le=86400)
    cooldown_in_s: int | None = Field(default=None, ge=0, le=86400)
    scale_in_order: Literal[ORDERS] | None = None  # type: ignore[valid-type]
    enabled: bool | None = Field(default=None, description="false: the broker's loop leaves the group alone")


class MetricIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=METRIC, description="the metric a rule names (not cpu: the broker measures it)")
    value: float = Field(ge=-1e12, le=1e12)


class DecisionOut(OutModel):
    id: int
    group_id: str
    at: Timestamp
    action: str = Field(description="scale-out, scale-in or hold (a rule fired but was held back)")
    trigger: str = Field(description="metric, schedule, bounds, repair, manual or create")
    rule: str | None
    metric: str | None
    value: float | None
    threshold: float | None
    desired_before: int
    desired_after: int
    members: list[dict[str, Any]] = Field(description="the members added (where, price, burst and why) or "
                                                      "removed (and why they went first)")
    operations: list[str]
    reason: str


class MemberOut(BaseModel):
    serial: int
    workload_id: str
    name: str
    state: str
    site: str | None
    provider: str | None
    price_per_hour: str | None
    burst: bool


class GroupOut(BaseModel):
    id: str
    project_id: int
    name: str
    template: dict[str, Any]
    min_size: int
    max_size: int
    desired: int
    base_desired: int = Field(description="what the metric rules or a user last set (desired without schedules)")
    rules: list[dict[str, Any]]
    cooldown_out_s: int
    cooldown_in_s: int
    scale_in_order: str
    enabled: bool
    metrics: dict[str, Any] = Field(description="the metrics pushed: {name: {value, at}}")
    members: list[MemberOut]
    running: int
    last_decision: DecisionOut | None
    created_at: Timestamp


class EvaluateOut(BaseModel):
    decision: DecisionOut | None = Field(description="null: nothing to decide (the group is where it should be)")
    group: GroupOut


class DecisionsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit: int = Field(default=100, ge=1, le=1000)
    before: int | None = Field(default=None, ge=1, le=2**62, description="older than this decision id (paging)")


GroupId = id_model("GroupId", "group_id", uuid=True)


def service(request: web.Request) -> AutoscaleService:
    return request.config_dict[keys.AUTOSCALE]


def render(view: GroupView) -> GroupOut:
    g = view.group
    members = [MemberOut(serial=m.serial, workload_id=m.workload.id, name=m.workload.name,
                         state=m.workload.observed_state, site=m.site, provider=m.provider,
                         price_per_hour=m.price_per_hour, burst=m.burst) for m in view.members]
    last = DecisionOut.model_validate(view.last_decision) if view.last_decision is not None else None
    return GroupOut(id=g.id, project_id=g.project_id, name=g.name, template=public_template(g.template),
                    min_size=g.min_size, max_size=g.max_size, desired=g.desired, base_desired=g.base_desired,
                    rules=g.rules, cooldown_out_s=g.cooldown_out_s, cooldown_in_s=g.cooldown_in_s,
                    scale_in_order=g.scale_in_order, enabled=g.enabled, metrics=g.metrics, members=members,
                    running=view.running, last_decision=last, created_at=g.created_at)


def _rules(rules: list[Any]) -> tuple[dict[str, Any], ...]:
    return tuple(r.model_dump(exclude_none=True) for r in rules)


@api.route("GET", "/autoscaling-groups", summary="List your project's auto-scaling groups", response=list[GroupOut])
async def list_groups(request: web.Request) -> list[GroupOut]:
    return [render(v) for v in await service(request).list_groups(identity_of(request))]


@api.route("POST", "/autoscaling-groups", summary="Create an auto-scaling group (the quota must hold min_size "
           "members); it is evaluated at once and grows to its desired count", body=GroupCreate, response=GroupOut,
           status=202)
async def create_group(request: web.Request, body: GroupCreate) -> GroupOut:
    req = GroupRequest(name=body.name, min_size=body.min_size, max_size=body.max_size, desired=body.desired,
                       image=body.image_id, flavor=body.flavor, vcpus=body.vcpus, ram_mib=body.ram_mib,
                       disk_gib=body.disk_gib, network_id=body.network_id, ssh_key=body.ssh_key,
                       user_data=body.user_data, rules=_rules(body.rules), cooldown_out_s=body.cooldown_out_s,
                       cooldown_in_s=body.cooldown_in_s, scale_in_order=body.scale_in_order,
                       project_id=body.project_id)
    return render(await service(request).create(identity_of(request), req))


@api.route("GET", "/autoscaling-groups/{group_id}", summary="Show a group: its members, numbers and last decision",
           params=GroupId, response=GroupOut)
async def get_group(request: web.Request, params: Any) -> GroupOut:
    return render(await service(request).get(identity_of(request), params.group_id))


@api.route("PATCH", "/autoscaling-groups/{group_id}", summary="Change bounds, desired count, rules, cooldowns or "
           "order; the group is evaluated at once", params=GroupId, body=GroupUpdate, response=GroupOut, status=202)
async def update_group(request: web.Request, params: Any, body: GroupUpdate) -> GroupOut:
    view = await service(request).update(
        identity_of(request), params.group_id, min_size=body.min_size, max_size=body.max_size, desired=body.desired,
        rules=_rules(body.rules) if body.rules is not None else None, cooldown_out_s=body.cooldown_out_s,
        cooldown_in_s=body.cooldown_in_s, scale_in_order=body.scale_in_order, enabled=body.enabled)
    return render(view)


@api.route("DELETE", "/autoscaling-groups/{group_id}", summary="Delete every member, then the group",
           params=GroupId, response=list[OperationOut], status=202)
async def delete_group(request: web.Request, params: Any) -> list[OperationOut]:
    ops = await service(request).delete(identity_of(request), params.group_id)
    return [OperationOut.model_validate(op) for op in ops]


@api.route("POST", "/autoscaling-groups/{group_id}/evaluate", summary="Evaluate the group's rules now and act "
           "(at most one scaling action in flight per group)", params=GroupId, response=EvaluateOut)
async def evaluate_group(request: web.Request, params: Any) -> EvaluateOut:
    svc, caller = service(request), identity_of(request)
    decision = await svc.evaluate(caller, params.group_id)
    return EvaluateOut(decision=DecisionOut.model_validate(decision) if decision is not None else None,
                       group=render(await svc.get(caller, params.group_id)))


@api.route("GET", "/autoscaling-groups/{group_id}/decisions", summary="The group's scaling decisions, newest "
           "first, with their rule and numbers", params=GroupId, query=DecisionsQuery, response=list[DecisionOut])
async def list_decisions(request: web.Request, params: Any, query: DecisionsQuery) -> list[DecisionOut]:
    rows = await service(request).decisions(identity_of(request), params.group_id, limit=query.limit,
                                            before=query.before)
    return [DecisionOut.model_validate(d) for d in rows]


@api.route("POST", "/autoscaling-groups/{group_id}/metrics", summary="Push a metric value the group's rules "
           "read (kept 10 minutes)", params=GroupId, body=MetricIn, response=GroupOut)
async def push_metric(request: web.Request, params: Any, body: MetricIn) -> GroupOut:
    svc, caller = service(request), identity_of(request)
    await svc.push_metric(caller, params.group_id, body.name, body.value)
    return render(await svc.get(caller, params.group_id))
