"""Automatic live migration (docs/rebalance.md): what the rebalance policies would move now and why (a
dry run), a run now, a host's maintenance set and cleared, and a load override for drills. Admins only:
these move every project's work. The policies also run by themselves after each inventory sync.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from metavmm.api import keys
from metavmm.api.rest.framework import RestModule
from metavmm.catalog.models import HostBalance
from metavmm.scheduler import service
from metavmm.services import rebalance_run
from metavmm.services.rebalance import Imbalance
from metavmm.services.rebalance_run import RunResult

api = RestModule("rebalance", "Automatic live migration on host load, and host maintenance")


class RebalanceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: str | None = Field(default=None, min_length=1, max_length=63, description="one policy; default: all")


class HostLoadOut(BaseModel):
    host: str = Field(description="site/host")
    cpu_pct: float
    mem_pct: float
    source: str = Field(description="measured, allocation, trace or override")
    state: str = Field(description="cool (a target), warm (between the marks), hot, maintenance or down")
    was_hot: bool
    cooldown_left_s: float
    predicted_cpu_pct: float | None = Field(default=None, description="once the plan's moves ran")
    predicted_mem_pct: float | None = Field(default=None, description="once the plan's moves ran")


class ImbalanceOut(BaseModel):
    cpu_spread_pct: float = Field(description="the busiest host's CPU % less the idlest's (0 is even)")
    mem_spread_pct: float = Field(description="the same for memory")
    hosts: int = Field(description="the hosts that take load (up, not in maintenance)")


class TriggerOut(BaseModel):
    rule: str = Field(description="cpu-high, mem-high or maintenance")
    host: str
    cpu_pct: float
    mem_pct: float
    why: str


class RebalanceMoveOut(BaseModel):
    workload: str
    workload_id: str
    source: str
    target: str
    mode: str = Field(description="live or cold")
    why_mode: str
    trigger: TriggerOut
    operation: str | None = Field(description="the operation that carries it out (absent in a dry run)")


class PolicyRunOut(BaseModel):
    policy: str
    dry_run: bool
    hosts: list[HostLoadOut]
    moves: list[RebalanceMoveOut]
    held: list[str] = Field(description="what wanted to move and did not, and why")
    refused: dict[str, str] = Field(description="workload -> why its move could not be submitted")
    imbalance: ImbalanceOut | None = Field(default=None, description="how uneven the pool is now")
    predicted_imbalance: ImbalanceOut | None = Field(default=None, description="how uneven it will be once the "
                                                     "moves ran (each VM's share moved from its host to its target)")

    @staticmethod
    def of(r: RunResult) -> PolicyRunOut:
        ev = r.evaluation

        def spread(i: Imbalance | None) -> ImbalanceOut | None:
            return ImbalanceOut(cpu_spread_pct=i.cpu_spread_pct, mem_spread_pct=i.mem_spread_pct,
                                hosts=i.hosts) if i is not None else None

        predicted = ev.predicted_loads
        return PolicyRunOut(
            policy=ev.policy, dry_run=r.dry_run, held=ev.held, refused=r.refused, imbalance=spread(ev.imbalance),
            predicted_imbalance=spread(ev.predicted),
            hosts=[HostLoadOut(host=h.host, cpu_pct=h.cpu_pct, mem_pct=h.mem_pct, source=h.source, state=h.state,
                               was_hot=h.was_hot, cooldown_left_s=h.cooldown_left_s,
                               predicted_cpu_pct=predicted[h.host_id][0] if h.host_id in predicted else None,
                               predicted_mem_pct=predicted[h.host_id][1] if h.host_id in predicted else None)
                   for h in ev.hosts],
            moves=[RebalanceMoveOut(
                workload=p.move.workload, workload_id=p.move.workload_id,
                source=f"{p.move.source_site}/{p.move.source_host or ''}".rstrip("/"),
                target=f"{p.move.target_site}/{p.move.target_host or ''}".rstrip("/"), mode=p.move.mode,
                why_mode=p.move.why_mode, operation=r.operations.get(p.move.workload_id),
                trigger=TriggerOut(rule=p.trigger.rule, host=p.trigger.host, cpu_pct=p.trigger.cpu_pct,
                                   mem_pct=p.trigger.mem_pct, why=p.trigger.text)) for p in ev.moves])


class RebalanceOut(BaseModel):
    policies: list[PolicyRunOut]


class MaintenanceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = Field(min_length=1, max_length=400, description="host, provider/host or site/host")
    maintenance: bool = Field(description="true: drain it and place nothing there; false: back in service")
    reason: str | None = Field(default=None, max_length=500)
    drain_now: bool = Field(default=True, description="run the policies now rather than after the next sync")


class HostBalanceOut(BaseModel):
    host: str
    maintenance: bool
    maintenance_reason: str | None
    override_cpu_pct: float | None
    override_mem_pct: float | None

    @staticmethod
    def of(name: str, row: HostBalance) -> HostBalanceOut:
        return HostBalanceOut(host=name, maintenance=row.maintenance, maintenance_reason=row.maintenance_reason,
                              override_cpu_pct=row.override_cpu_pct, override_mem_pct=row.override_mem_pct)


class MaintenanceOut(BaseModel):
    host: HostBalanceOut
    drain: list[PolicyRunOut] = Field(description="the policies' run that followed (empty without drain_now)")


class OverrideIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = Field(min_length=1, max_length=400)
    cpu_pct: float | None = Field(default=None, ge=0, le=100, description="null with mem_pct null: clear")
    mem_pct: float | None = Field(default=None, ge=0, le=100)


async def run_policies(request: web.Request, policy: str | None, *, dry_run: bool) -> list[PolicyRunOut]:
    results = await rebalance_run.run(request.config_dict[keys.SESSIONS], request.config_dict[keys.CONFIG],
                                      request.config_dict.get(keys.OPERATIONS), policy=policy, dry_run=dry_run)
    return [PolicyRunOut.of(r) for r in results]


@api.route("POST", "/rebalance/dry-run", summary="What the rebalance policies would move now, and why (nothing "
           "moves)", body=RebalanceIn, response=RebalanceOut, role="admin")
async def dry_run(request: web.Request, body: RebalanceIn) -> RebalanceOut:
    return RebalanceOut(policies=await run_policies(request, body.policy, dry_run=True))


@api.route("POST", "/rebalance/run", summary="Run the rebalance policies now: submit their moves as operations",
           body=RebalanceIn, response=RebalanceOut, status=202, role="admin")
async def run_now(request: web.Request, body: RebalanceIn) -> RebalanceOut:
    return RebalanceOut(policies=await run_policies(request, body.policy, dry_run=False))


@api.route("POST", "/rebalance/maintenance", summary="Put a host in maintenance (drain it, place nothing there) "
           "or back in service", body=MaintenanceIn, response=MaintenanceOut, role="admin")
async def maintenance(request: web.Request, body: MaintenanceIn) -> MaintenanceOut:
    sessions, config = request.config_dict[keys.SESSIONS], request.config_dict[keys.CONFIG]
    snap = await service.snapshot(sessions, config)
    name, row = await rebalance_run.set_maintenance(sessions, snap, body.host, body.maintenance, body.reason)
    drain = await run_policies(request, None, dry_run=False) if body.maintenance and body.drain_now else []
    return MaintenanceOut(host=HostBalanceOut.of(name, row), drain=drain)


@api.route("POST", "/rebalance/load-override", summary="Make the policies read this load for a host instead of "
           "its measure (drills and tests); nulls clear it", body=OverrideIn, response=HostBalanceOut, role="admin")
async def load_override(request: web.Request, body: OverrideIn) -> HostBalanceOut:
    sessions, config = request.config_dict[keys.SESSIONS], request.config_dict[keys.CONFIG]
    snap = await service.snapshot(sessions, config)
    name, row = await rebalance_run.set_override(sessions, snap, body.host, body.cpu_pct, body.mem_pct)
    return HostBalanceOut.of(name, row)
