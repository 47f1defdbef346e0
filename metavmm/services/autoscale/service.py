"""Auto-scaling groups over the one workload service: a group's members are ordinary computes that
:meth:`WorkloadService.create_in` creates (scope, quota, placement through the scheduler with the burst
policies, rows and operation in one transaction) and :meth:`WorkloadService.delete` deletes.

An evaluation (the broker's loop every :data:`EVALUATE_EVERY_S`, or ``POST .../evaluate``) reads the
group's live members and metrics, asks :func:`rules.decide` for the one decision, and carries it out:

- at most one scaling action per group is in flight: while an operation the last action started is
  still running, nothing else starts (an on-demand evaluation says so);
- a scale-out creates members one at a time, each placed by the scheduler, so a burst policy sends a
  member to a public cloud when on-prem is full, within its budget; a member the quota or the placement
  refuses stops the step, and the decision says which and why;
- a scale-in removes burst members first, then by the group's order: ``cost`` (the most expensive per
  hour first, then the newest), ``newest`` or ``oldest``;
- every decision that did something, or that a fired rule was held back from (cooldown, min/max, a
  schedule window, quota, placement), is written with its numbers (``autoscale_decision``), shown by
  the API and streamed as an ``autoscale`` event. A hold identical to the previous decision is not
  written again.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete as sa_delete
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import (
    AutoscaleDecision,
    AutoscaleGroup,
    AutoscaleMember,
    Operation,
    Project,
    Workload,
    WorkloadKind,
    aware,
    utcnow,
)
from metavmm.foundation.errors import (
    CatalogBusy,
    Conflict,
    MetavmmError,
    NoPlacement,
    NotFound,
    QuotaExceeded,
    ValidationError,
)
from metavmm.services import quotas
from metavmm.services.autoscale import rules as r
from metavmm.services.autoscale.members import (
    MemberView,
    alive,
    member_request,
    member_view,
    placed,
    scale_in_order,
    why_removed,
)
from metavmm.services.autoscale.metrics import CpuReader
from metavmm.services.identity import Identity, operator_identity
from metavmm.services.operations.store import ACTIVE
from metavmm.services.scope import can_see, visible
from metavmm.services.workloads.requests import CreateRequest, check_ssh_key, check_user_data
from metavmm.services.workloads.service import WorkloadService, is_uuid

log = logging.getLogger(__name__)

EVALUATE_EVERY_S = 30.0
MAX_MEMBERS = 200
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
ORDERS = ("cost", "newest", "oldest")


@dataclass(frozen=True)
class GroupRequest:
    """A group: its template (image, shape: a flavor or vcpus and ram_mib, network, user data), its
    bounds, its rules (see :mod:`metavmm.services.autoscale.rules`) and cooldowns."""

    name: str
    min_size: int = 1
    max_size: int = 1
    desired: int | None = None  # default: min_size
    image: str | None = None
    flavor: str | None = None
    vcpus: int | None = None
    ram_mib: int | None = None
    disk_gib: int = 0
    network_id: str | None = None
    ssh_key: str | None = field(default=None, repr=False)
    user_data: str | None = field(default=None, repr=False)
    rules: tuple[dict[str, Any], ...] = ()
    cooldown_out_s: int = 60
    cooldown_in_s: int = 300
    scale_in_order: str = "cost"
    project_id: int | None = None  # admins only: another project


@dataclass(frozen=True)
class GroupView:
    group: AutoscaleGroup
    members: tuple[MemberView, ...]
    last_decision: AutoscaleDecision | None = None

    @property
    def running(self) -> int:
        return sum(1 for m in self.members if m.workload.observed_state == "running")


def _check(req: GroupRequest) -> None:
    """What needs no catalog, before any transaction."""
    if not isinstance(req.name, str) or not _NAME.fullmatch(req.name):
        raise ValidationError(f"group name {req.name!r} must be 1 to 40 lower-case letters, digits or inner hyphens "
                              "(it starts the members' names)")
    _check_bounds(req.min_size, req.max_size, req.desired)
    r.parse_rules(list(req.rules), max_size=req.max_size)
    for what, value in (("cooldown_out_s", req.cooldown_out_s), ("cooldown_in_s", req.cooldown_in_s)):
        if not 0 <= value <= 86400:
            raise ValidationError(f"{what} must be 0 to 86400 seconds, not {value}")
    if req.scale_in_order not in ORDERS:
        raise ValidationError(f"scale_in_order must be one of {', '.join(ORDERS)}, not {req.scale_in_order!r}")
    check_ssh_key(req.ssh_key)
    check_user_data(req.user_data)


def _check_bounds(min_size: int, max_size: int, desired: int | None) -> None:
    if not 0 <= min_size <= max_size <= MAX_MEMBERS or max_size < 1:
        raise ValidationError(f"a group needs 0 <= min_size <= max_size <= {MAX_MEMBERS} and max_size >= 1, not "
                              f"min {min_size}, max {max_size}")
    if desired is not None and not min_size <= desired <= max_size:
        raise ValidationError(f"desired {desired} must be within min_size {min_size} and max_size {max_size}")


def _template(req: GroupRequest, image_id: str | None) -> dict[str, Any]:
    return {"image": req.image, "image_id": image_id, "flavor": req.flavor, "vcpus": req.vcpus,
            "ram_mib": req.ram_mib, "disk_gib": req.disk_gib, "network_id": req.network_id, "ssh_key": req.ssh_key,
            "user_data": req.user_data}


def public_template(tpl: dict[str, Any]) -> dict[str, Any]:
    """The template as front ends show it: without the user data (it may hold secrets)."""
    return {k: v for k, v in tpl.items() if k != "user_data"} | {"user_data": bool(tpl.get("user_data"))}


class AutoscaleService:
    """Groups, their evaluation and their decisions. One per broker (it keeps the CPU reader's samples and
    a lock per group, so the loop and an on-demand evaluation never act on one group at once)."""

    def __init__(self, workloads: WorkloadService, cpu: CpuReader | None = None) -> None:
        self.workloads = workloads
        self.sessions = workloads.sessions
        self.cpu = cpu or CpuReader(workloads.config)
        self._locks: dict[str, asyncio.Lock] = {}

    # --- groups ---------------------------------------------------------------------------------------

    async def create(self, caller: Identity, req: GroupRequest) -> GroupView:
        """Check the template (shape, image, network) and the quota for min_size members, write the group,
        then evaluate it once so it grows to its desired count."""
        _check(req)
        async with self.workloads.transaction(caller, req.project_id) as session:
            project_id = caller.project_id if req.project_id is None else req.project_id
            if (await session.exec(select(AutoscaleGroup.id).where(AutoscaleGroup.project_id == project_id,
                                                                    AutoscaleGroup.name == req.name))).first():
                raise Conflict(f"an auto-scaling group named {req.name} already exists in this project")
            probe = CreateRequest(kind=WorkloadKind.COMPUTE, name=req.name, flavor=req.flavor, vcpus=req.vcpus,
                                  ram_mib=req.ram_mib, disk_gib=req.disk_gib)
            shape = await self.workloads._shape(session, probe)
            image = (await self.workloads._image(session, req.image, project_id, shape)) if req.image else None
            if req.network_id is not None:
                await self._network(session, project_id, req.network_id)
            if req.min_size:
                need = quotas.demand_of(WorkloadKind.COMPUTE, shape.vcpus, shape.ram_mib, shape.disk_gib,
                                        shape.gpu_model, shape.gpu_count)
                await quotas.check(session, project_id, need, flavor=shape.flavor, count=req.min_size,
                                   what=f"the {req.min_size} members of group {req.name}'s min_size")
            desired = req.min_size if req.desired is None else req.desired
            group = AutoscaleGroup(project_id=project_id, name=req.name, template=_template(req, image.id if image
                                                                                            else None),
                                   min_size=req.min_size, max_size=req.max_size, base_desired=desired,
                                   desired=desired, rules=list(req.rules), cooldown_out_s=req.cooldown_out_s,
                                   cooldown_in_s=req.cooldown_in_s, scale_in_order=req.scale_in_order)
            session.add(group)
            await session.flush()
            group_id = group.id
        await self.evaluate(caller, group_id, trigger="create")
        return await self.get(caller, group_id)

    async def _network(self, session: AsyncSession, project_id: int, network_id: str) -> Workload:
        row = await session.get(Workload, network_id.lower()) if is_uuid(network_id) else None
        if row is None or row.project_id != project_id or row.kind != WorkloadKind.NETWORK:
            raise NotFound(f"no network {network_id} in this project")
        if not row.present or row.desired_state == "deleted":
            raise Conflict(f"network {row.name} is deleted or being deleted")
        return row

    async def update(self, caller: Identity, group_id: str, *, min_size: int | None = None,
                     max_size: int | None = None, desired: int | None = None,
                     rules: Sequence[dict[str, Any]] | None = None, cooldown_out_s: int | None = None,
                     cooldown_in_s: int | None = None, scale_in_order: str | None = None,
                     enabled: bool | None = None) -> GroupView:
        """Change the bounds, the desired count (a user's, like a metric rule's), rules, cooldowns, order or
        whether the loop evaluates the group; then evaluate it."""
        async with self.sessions() as session:
            group = await self._visible(session, caller, group_id)
        self.workloads._may_write(caller, group)
        lo = group.min_size if min_size is None else min_size
        hi = group.max_size if max_size is None else max_size
        _check_bounds(lo, hi, desired)
        new_rules = list(group.rules if rules is None else rules)
        r.parse_rules(new_rules, max_size=hi)
        for what, value in (("cooldown_out_s", cooldown_out_s), ("cooldown_in_s", cooldown_in_s)):
            if value is not None and not 0 <= value <= 86400:
                raise ValidationError(f"{what} must be 0 to 86400 seconds, not {value}")
        if scale_in_order is not None and scale_in_order not in ORDERS:
            raise ValidationError(f"scale_in_order must be one of {', '.join(ORDERS)}, not {scale_in_order!r}")
        async with self.workloads.transaction(caller, group.project_id) as session:
            row = await session.get(AutoscaleGroup, group.id)
            if row is None:
                raise NotFound(f"no auto-scaling group {group_id}")
            row.min_size, row.max_size, row.rules = lo, hi, new_rules
            base = desired if desired is not None else row.base_desired
            row.base_desired = max(lo, min(hi, base))
            if cooldown_out_s is not None:
                row.cooldown_out_s = cooldown_out_s
            if cooldown_in_s is not None:
                row.cooldown_in_s = cooldown_in_s
            if scale_in_order is not None:
                row.scale_in_order = scale_in_order
            if enabled is not None:
                row.enabled = enabled
            row.version += 1
            row.updated_at = utcnow()
            session.add(row)
        await self.evaluate(caller, group.id, trigger="manual" if desired is not None else None)
        return await self.get(caller, group.id)

    async def delete(self, caller: Identity, group_id: str) -> list[Operation]:
        """Delete every member through the workload service, the group and its decisions, in one
        transaction (a crash between them would leave a group whose loop creates the members again)."""
        async with self.sessions() as session:
            group = await self._visible(session, caller, group_id)
            self.workloads._may_write(caller, group)
        async with self._lock(group.id):
            async with self.workloads.transaction(caller, group.project_id) as session:
                members = (await session.exec(select(AutoscaleMember.workload_id).where(
                    AutoscaleMember.group_id == group.id))).all()
                ops = [op for _, op in await self._delete_in(session, caller, group, list(members))]
                for model in (AutoscaleMember, AutoscaleDecision):
                    await session.exec(sa_delete(model).where(col(model.group_id) == group.id))  # type: ignore[call-overload]
                await session.exec(sa_delete(AutoscaleGroup).where(col(AutoscaleGroup.id) == group.id))  # type: ignore[call-overload]
            await self.workloads.wake(*ops)
        return ops

    async def _delete_in(self, session: AsyncSession, caller: Identity, group: AutoscaleGroup,
                         ids: Sequence[str]) -> list[tuple[str, Operation]]:
        """The members' deletes in the caller's transaction, with their member rows: (workload id, its
        delete) of each one deleted; one already being deleted or refused is logged and skipped."""
        done = []
        for wid in ids:
            try:
                op = await self.workloads.delete_in(session, caller, wid)
            except MetavmmError as exc:  # refused before it wrote anything
                log.info("autoscale: member %s of %s not removed: %s", wid, group.name, exc)
                continue
            if op is None:
                log.info("autoscale: member %s of %s is already being deleted", wid, group.name)
                continue
            await session.exec(sa_delete(AutoscaleMember).where(  # type: ignore[call-overload]
                col(AutoscaleMember.workload_id) == wid))
            done.append((wid, op))
        return done

    async def push_metric(self, caller: Identity, group_id: str, name: str, value: float) -> AutoscaleGroup:
        """Record a metric a user measures (queue length, requests per second) for the group's rules."""
        if not isinstance(name, str) or not r.METRIC_NAME.fullmatch(name) or name == "cpu":
            raise ValidationError(f"metric name {name!r} must be a lower-case name (not 'cpu': the broker measures it)")
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value or abs(value) > 1e12:
            raise ValidationError(f"metric value must be a finite number, not {value!r}")
        async with self.sessions() as session:
            group = await self._visible(session, caller, group_id)
        self.workloads._may_write(caller, group)
        async with self.workloads.transaction(caller, group.project_id) as session:
            row = await session.get(AutoscaleGroup, group.id)
            if row is None:
                raise NotFound(f"no auto-scaling group {group_id}")
            metrics = dict(row.metrics)
            if name not in metrics and len(metrics) >= 32:
                raise ValidationError("a group keeps at most 32 pushed metrics")
            metrics[name] = {"value": float(value), "at": utcnow().isoformat()}
            row.metrics = metrics
            session.add(row)
        return row

    # --- reading --------------------------------------------------------------------------------------

    async def list_groups(self, caller: Identity) -> list[GroupView]:
        async with self.sessions() as session:
            ids = (await session.exec(select(AutoscaleGroup.id).where(visible(caller, AutoscaleGroup))
                                      .order_by(col(AutoscaleGroup.name)))).all()
        return [await self.get(caller, gid) for gid in ids]

    async def get(self, caller: Identity, group_id: str) -> GroupView:
        async with self.sessions() as session:
            group = await self._visible(session, caller, group_id)
            members = await self._members(session, group.id)
            last = (await session.exec(select(AutoscaleDecision).where(AutoscaleDecision.group_id == group.id)
                                       .order_by(col(AutoscaleDecision.id).desc()).limit(1))).first()
        return GroupView(group, tuple(members), last)

    async def decisions(self, caller: Identity, group_id: str, *, limit: int = 100,
                        before: int | None = None) -> list[AutoscaleDecision]:
        """The group's decisions, newest first (``before``: an id, for the next page)."""
        async with self.sessions() as session:
            group = await self._visible(session, caller, group_id)
            query = select(AutoscaleDecision).where(AutoscaleDecision.group_id == group.id)
            if before is not None:
                query = query.where(col(AutoscaleDecision.id) < before)
            return list((await session.exec(query.order_by(col(AutoscaleDecision.id).desc()).limit(limit))).all())

    async def _visible(self, session: AsyncSession, caller: Identity, group_id: str) -> AutoscaleGroup:
        row = await session.get(AutoscaleGroup, group_id.lower()) if is_uuid(group_id) else None
        if row is None and isinstance(group_id, str) and _NAME.fullmatch(group_id):  # a name, in the caller's project
            row = (await session.exec(select(AutoscaleGroup).where(AutoscaleGroup.project_id == caller.project_id,
                                                                   AutoscaleGroup.name == group_id))).first()
        if row is None or not can_see(caller, row):
            raise NotFound(f"no auto-scaling group {group_id}")
        return row

    @staticmethod
    async def _members(session: AsyncSession, group_id: str) -> list[MemberView]:
        rows = (await session.exec(select(AutoscaleMember.serial, Workload).join(
            Workload, col(Workload.id) == AutoscaleMember.workload_id).where(AutoscaleMember.group_id == group_id)
            .order_by(col(AutoscaleMember.serial)))).all()
        return [member_view(serial, w) for serial, w in rows]

    def _lock(self, group_id: str) -> asyncio.Lock:
        return self._locks.setdefault(group_id, asyncio.Lock())

    # --- evaluation -----------------------------------------------------------------------------------

    async def evaluate_all(self, now: datetime | None = None) -> list[AutoscaleDecision]:
        """Every enabled group once (the broker's loop); a group that fails is logged, the others go on."""
        async with self.sessions() as session:
            rows = (await session.exec(select(AutoscaleGroup.id, Project.name).join(
                Project, col(Project.id) == AutoscaleGroup.project_id).where(col(AutoscaleGroup.enabled)))).all()
        out = []
        operators: dict[str, Identity] = {}
        for gid, project in rows:
            try:
                if project not in operators:
                    async with session_scope(self.sessions) as session:
                        operators[project] = await operator_identity(session, project)
                operator = operators[project]
                decision = await self.evaluate(operator, gid, now=now, quiet=True)
                if decision is not None:
                    out.append(decision)
            except Exception:  # the next round tries again
                log.exception("autoscale: evaluating group %s failed", gid)
        return out

    async def evaluate(self, caller: Identity, group_id: str, *, now: datetime | None = None,
                       trigger: str | None = None, quiet: bool = False) -> AutoscaleDecision | None:
        """Decide and act once (see the module docstring); the decision written, or None when there was
        nothing to decide. ``quiet`` (the loop): an action in flight is not written as a hold."""
        async with self.sessions() as session:
            group = await self._visible(session, caller, group_id)
        self.workloads._may_write(caller, group)
        async with self._lock(group.id):
            return await self._evaluate(caller, group.id, now or utcnow(), trigger, quiet)

    async def _evaluate(self, caller: Identity, group_id: str, now: datetime, trigger: str | None,
                        quiet: bool) -> AutoscaleDecision | None:
        async with self.sessions() as session:  # a read: most rounds of the loop change nothing
            group = await session.get(AutoscaleGroup, group_id)
            if group is None:
                raise NotFound(f"no auto-scaling group {group_id}")
            members = await self._members(session, group.id)
            busy = await self._in_flight(session, group.id)
        gone = [m.workload.id for m in members if not alive(m.workload)]
        if gone:  # a failed create, a VM lost or deleted by hand: no longer a member
            async with session_scope(self.sessions) as session:
                await session.exec(sa_delete(AutoscaleMember).where(  # type: ignore[call-overload]
                    col(AutoscaleMember.workload_id).in_(gone)))
        live = [m for m in members if alive(m.workload)]
        if busy:
            if quiet:
                return None
            return await self._record(group, now, r.Verdict("hold", trigger or "manual", group.base_desired,
                                                           group.desired, reason=f"a scaling action is in flight "
                                                           f"(operation {busy}); one at a time per group"), [], [])
        metric_rules, schedule_rules = r.parse_rules(group.rules, max_size=group.max_size)
        values = await self._values(group, live, metric_rules, now)
        numbers = r.GroupNumbers(
            group.min_size, group.max_size, group.base_desired, group.desired, len(live), group.cooldown_out_s,
            group.cooldown_in_s, _since(group.last_scale_out_at, now), _since(group.last_scale_in_at, now))
        verdict = r.decide(numbers, metric_rules, schedule_rules, values, now)
        if trigger is not None and verdict.trigger in ("bounds", "repair"):
            verdict = _retrigger(verdict, trigger, f"a new group: {verdict.count} members for desired "
                                 f"{verdict.desired_after}" if trigger == "create" else verdict.reason)
        if verdict.action == "none":
            if (verdict.base_after, verdict.desired_after) != (group.base_desired, group.desired):
                await self._record(group, now, verdict, [], [], write=False)
            return None
        if verdict.action == "hold":
            return await self._record(group, now, verdict, [], [])
        if verdict.action == "scale-out":
            return await self._scale_out(caller, group, now, verdict)
        return await self._scale_in(caller, group, now, verdict, live)

    async def _in_flight(self, session: AsyncSession, group_id: str) -> str | None:
        last = (await session.exec(select(AutoscaleDecision.operations).where(
            AutoscaleDecision.group_id == group_id, AutoscaleDecision.action != "hold")
            .order_by(col(AutoscaleDecision.id).desc()).limit(1))).first()
        if not last:
            return None
        return (await session.exec(select(Operation.id).where(col(Operation.id).in_(last),
                                                              col(Operation.state).in_(ACTIVE)))).first()

    async def _values(self, group: AutoscaleGroup, live: list[MemberView], rules: list[r.MetricRule],
                      now: datetime) -> dict[str, float | None]:
        values: dict[str, float | None] = {}
        for name in {rule.metric for rule in rules}:
            if name == "cpu":
                running = [(m.provider, m.workload.provider_resource_id) for m in live
                           if m.workload.observed_state == "running" and m.provider
                           and m.workload.provider_resource_id]
                values["cpu"], _ = await self.cpu.average(running)  # type: ignore[arg-type]
                continue
            pushed = group.metrics.get(name) or {}
            try:
                at = datetime.fromisoformat(pushed["at"])
            except (KeyError, TypeError, ValueError):
                values[name] = None
                continue
            fresh = (now - aware(at)).total_seconds() <= r.STALE_S
            values[name] = float(pushed["value"]) if fresh else None
        return values

    async def _scale_out(self, caller: Identity, group: AutoscaleGroup, now: datetime,
                         verdict: r.Verdict) -> AutoscaleDecision:
        """Create ``verdict.count`` members (each placed by the scheduler, which sees the ones before it in
        transit), stopping at the first the quota or the placement refuses, and write them, their member
        rows and the decision (with the cooldown's start) in one transaction: a crash leaves no member
        that the one-action-at-a-time check and the cooldown do not see."""
        made: list[MemberView] = []
        ops: list[Operation] = []
        refused = None
        try:
            async with self.workloads.transaction(caller, group.project_id) as session:
                row = await session.get(AutoscaleGroup, group.id)
                if row is None:
                    raise NotFound(f"no auto-scaling group {group.id}")
                for _ in range(verdict.count):
                    serial = row.next_serial
                    try:  # each refusal comes before its create writes anything
                        done = await self.workloads.create_in(session, group.project_id, member_request(row, serial))
                    except (QuotaExceeded, NoPlacement, ValidationError, Conflict, NotFound) as exc:
                        refused = f"{type(exc).__name__}: {exc}"
                        break
                    session.add(AutoscaleMember(group_id=group.id, workload_id=done.workload.id, serial=serial))
                    row.next_serial = serial + 1
                    session.add(row)
                    made.append(member_view(serial, done.workload))
                    ops.append(done.operation)
                outcome = _outcome(verdict, len(made), refused)
                decision = await self._record_in(session, group, now, outcome, [placed(m) for m in made],
                                                 [op.id for op in ops])
        except CatalogBusy as exc:  # nothing was written
            return await self._record(group, now, _outcome(verdict, 0, f"CatalogBusy: {exc}"), [], [])
        await self.workloads.wake(*ops)
        self._log(group, outcome)
        assert decision is not None
        return decision

    async def _scale_in(self, caller: Identity, group: AutoscaleGroup, now: datetime, verdict: r.Verdict,
                        live: list[MemberView]) -> AutoscaleDecision:
        """Delete the chosen members, remove their member rows and record the decision in one transaction."""
        chosen = {m.workload.id: m for m in scale_in_order(live, group.scale_in_order)[:verdict.count]}
        async with self.workloads.transaction(caller, group.project_id) as session:
            done = await self._delete_in(session, caller, group, list(chosen))
            removed = [{**placed(chosen[wid]), "why": why_removed(chosen[wid], group.scale_in_order)}
                       for wid, _ in done]
            decision = await self._record_in(session, group, now, verdict, removed, [op.id for _, op in done])
        await self.workloads.wake(*(op for _, op in done))
        self._log(group, verdict)
        assert decision is not None
        return decision

    async def _record(self, group: AutoscaleGroup, now: datetime, verdict: r.Verdict, members: list[dict[str, Any]],
                      ops: list[str], *, write: bool = True) -> AutoscaleDecision | None:
        """Write the decision and the group's new numbers in one transaction (see :meth:`_record_in`)."""
        async with session_scope(self.sessions) as session:
            decision = await self._record_in(session, group, now, verdict, members, ops, write=write)
        if decision is not None:
            self._log(group, verdict)
        return decision

    async def _record_in(self, session: AsyncSession, group: AutoscaleGroup, now: datetime, verdict: r.Verdict,
                         members: list[dict[str, Any]], ops: list[str], *,
                         write: bool = True) -> AutoscaleDecision | None:
        """Add the decision and the group's new numbers to ``session``; a hold equal to the last decision
        is not written again (the loop would repeat it every round)."""
        row = await session.get(AutoscaleGroup, group.id)
        if row is None:
            raise NotFound(f"no auto-scaling group {group.id}")
        before = row.desired
        row.base_desired, row.desired = verdict.base_after, verdict.desired_after
        if verdict.action == "scale-out":
            row.last_scale_out_at = now
        elif verdict.action == "scale-in":
            row.last_scale_in_at = now
        row.updated_at = utcnow()
        session.add(row)
        if not write:
            return None
        if verdict.action == "hold":
            last = (await session.exec(select(AutoscaleDecision).where(AutoscaleDecision.group_id == group.id)
                                       .order_by(col(AutoscaleDecision.id).desc()).limit(1))).first()
            if last is not None and last.action == "hold" and _same_hold(last, verdict):
                return last
        await session.flush()  # the transaction's other rows first: the decision's INSERT takes the event lock,
        # the last lock it may take (metavmm.catalog.eventlog); _record_in is the last write of its callers
        decision = AutoscaleDecision(
            group_id=group.id, project_id=group.project_id, at=now, action=verdict.action,
            trigger=verdict.trigger, rule=verdict.rule, metric=verdict.metric, value=verdict.value,
            threshold=verdict.threshold, desired_before=before, desired_after=verdict.desired_after,
            members=members, operations=ops, reason=verdict.reason[:4000])
        session.add(decision)
        await session.flush()
        return decision

    @staticmethod
    def _log(group: AutoscaleGroup, verdict: r.Verdict) -> None:
        log.info("autoscale %s: %s (%s) %s", group.name, verdict.action, verdict.trigger, verdict.reason)


def _outcome(verdict: r.Verdict, added: int, refused: str | None) -> r.Verdict:
    """What a scale-out did: ``added`` of ``verdict.count`` members, then ``refused`` (a hold when none)."""
    if not added:
        return r.Verdict("hold", verdict.trigger, verdict.base_after, verdict.desired_after, 0, verdict.rule,
                         verdict.metric, verdict.value, verdict.threshold,
                         f"{verdict.reason}; no member could be added: {refused}")
    reason = verdict.reason + (f"; {added} of {verdict.count} added, then {refused}" if refused else "")
    return r.Verdict(verdict.action, verdict.trigger, verdict.base_after, verdict.desired_after, added, verdict.rule,
                     verdict.metric, verdict.value, verdict.threshold, reason)


def _since(at: datetime | None, now: datetime) -> float | None:
    return None if at is None else (now - aware(at)).total_seconds()


def _retrigger(v: r.Verdict, trigger: str, reason: str) -> r.Verdict:
    return r.Verdict(v.action, trigger, v.base_after, v.desired_after, v.count, v.rule, v.metric, v.value,
                     v.threshold, reason)


def _same_hold(last: AutoscaleDecision, v: r.Verdict) -> bool:
    """The same hold again: same rule and the same cause (the seconds left of a cooldown may differ)."""
    def cause(text: str) -> str:
        return re.sub(r"[\d.]+", "#", text)

    return (last.trigger, last.rule, last.desired_after, cause(last.reason)) == (
        v.trigger, v.rule, v.desired_after, cause(v.reason))
