"""Migration plans executed: the scheduler's moves become engine operations.

The scheduler (:mod:`metavmm.scheduler.migration`) decides, over a fresh catalog snapshot, where each
workload goes and whether it can move live; this module turns each :class:`Move` into one operation:

- ``live``: :func:`flows.live_migrate` to the target host (the same provider);
- ``cold`` to another provider: :func:`flows.cold_migrate` (export, convert, import, boot, verify);
- ``cold`` inside one provider (hosts with different CPUs, a stopped VM a drain takes): :func:`relocate`,
  an offline move (stop, move to the target host with the driver's ``migrate_offline``, start, verify).

A whole plan (evacuate a host or a site, rebalance a site) runs as one child operation per move and a
parent ``migrate_batch`` operation that waits on them (see :mod:`.batch_actions`): the caller follows and
cancels the parent; each child keeps its own rollback. Every child, its address lease (a cold move into
a site with a clone network) and the parent, which carries the request's idempotency key, are written
in one transaction: a broker killed while it writes them leaves all of the batch or none of it, never a
child nobody follows or a lease without its operation (see docs/operations.md, "What one transaction
holds").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from dataclasses import replace as dataclass_replace
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import AddressLease, Operation, Provider, Site
from metavmm.foundation.errors import Conflict, IdempotencyKeyReused, MetavmmError, NotFound, ValidationError
from metavmm.scheduler.migration import MigrationPlan, MigrationPlanner, Move
from metavmm.scheduler.snapshot import Snapshot
from metavmm.services.operations import addresses, flows, store
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.plan import Step
from metavmm.services.vocabulary import MIGRATION_MODES as MODES


@dataclass
class BatchStarted:
    parent: Operation
    children: list[Operation] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # workload name -> why its move was not submitted


async def _target(engine: Engine, site_name: str) -> tuple[str, str]:
    """(provider name, region) of a catalog site."""
    async with engine.sessions() as session:
        row = (await session.exec(select(Site, Provider).join(Provider, Site.provider_id == Provider.id)
                                  .where(Site.name == site_name))).first()
    if row is None:
        raise NotFound(f"no site {site_name} in the catalog")
    return row[1].name, row[0].region


async def relocate_plan(engine: Engine, workload_id: str, *, target_host: str,
                        offer: dict[str, Any] | None = None) -> flows.PlanSpec:
    """Move a VM to another host of its provider while it is stopped (hosts whose CPUs differ; a stopped VM
    a drain takes). A VM already stopped is not stopped again (whose compensation would start it) and
    stays stopped at the target."""
    workload, provider = await flows._workload_at(engine, workload_id)
    at = {"provider": provider, "workload_id": workload.id}
    was_running = workload.observed_state == "running"
    steps = [Step("note", "workload.note", {"workload_id": workload.id, "message": f"moving to {target_host}"})]
    if workload.observed_state != "stopped":
        steps += [Step("stop", "vm.power", {**at, "verb": "stop"}, compensate="vm.start"),
                  Step("wait-stopped", "vm.wait", {**at, "state": "stopped", "timeout_s": 300})]
    steps += [Step("move", "vm.migrate_offline", {**at, "target_host": target_host}, weight=3, commit=True)]
    if was_running:
        steps += [Step("start", "vm.power", {**at, "verb": "start"}),
                  Step("verify-target", "vm.wait", {**at, "state": "running", "timeout_s": 300, "stable_s": 1.0})]
    steps.append(Step("record", "workload.record", {**at, **flows.priced(offer)}))
    return flows.PlanSpec("cold_migrate", steps, workload.id, workload.project_id,
                          {"from": provider, "to": provider, "host": target_host, "offline": True})


async def relocate(engine: Engine, workload_id: str, *, target_host: str,
                   idempotency_key: str | None = None) -> Operation:
    """:func:`relocate_plan` submitted on its own."""
    plan = await relocate_plan(engine, workload_id, target_host=target_host)
    return await plan.submit(engine, idempotency_key=idempotency_key)


async def move_plan(engine: Engine, move: Move, *, drawn: list[AddressLease]) -> flows.PlanSpec:
    """The plan of the one operation that carries out ``move``, not written yet (a cold move into a site
    with a clone network draws its address lease into ``drawn``, see :func:`addresses.draw_lease`)."""
    provider, region = await _target(engine, move.target_site)
    _, source = await flows._workload_at(engine, move.workload_id)
    if move.mode == "live":  # into another provider (a libvirt daemon) its endpoint is the target, not a host name
        return await flows.live_migrate_plan(engine, move.workload_id, target_provider=provider,
                                             target_host=move.target_host if provider == source else None,
                                             offer=move.offer)
    if provider == source:
        if move.target_host is None:
            raise ValidationError(f"{move.workload}: a move inside {provider} needs a target host")
        return await relocate_plan(engine, move.workload_id, target_host=move.target_host, offer=move.offer)
    return await flows.cold_migrate_plan(engine, move.workload_id, target_provider=provider, target_region=region,
                                         drawn=drawn, offer=move.offer)


async def submit_move(engine: Engine, move: Move, *, idempotency_key: str | None = None) -> Operation:
    """The one operation that carries out ``move``, written on its own (with its lease, if any)."""
    async def attempt(drawn: list[AddressLease]) -> Operation:
        plan = await move_plan(engine, move, drawn=drawn)
        return await plan.submit(engine, idempotency_key=idempotency_key)

    return await addresses.with_leases(engine.sessions, attempt, where=move.target_site)


async def migrate_workload(engine: Engine, snap: Snapshot, workload_id: str, *, site: str | None = None,
                           host: str | None = None, mode: str = "auto",
                           idempotency_key: str | None = None) -> tuple[Move | None, Operation]:
    """Migrate one workload where the scheduler says (or to ``site``/``host``): live when possible.

    A repeated request under the same idempotency key answers with the first operation (and no move).
    """
    if mode not in MODES:
        raise ValidationError(f"mode must be one of {', '.join(MODES)}")
    if idempotency_key:
        earlier = await _by_key(engine, idempotency_key)
        if earlier is not None:
            if earlier.target_id != workload_id or earlier.kind not in ("live_migrate", "cold_migrate"):
                raise IdempotencyKeyReused(f"idempotency key already used by operation {earlier.id} ({earlier.kind})")
            return None, earlier
    move = MigrationPlanner(snap).move_one(workload_id, site=site, host=host)
    if mode == "live" and move.mode != "live":
        raise Conflict(f"{move.workload} cannot move live to {move.target_host or move.target_site}: {move.why_mode}")
    if mode == "cold" and move.mode == "live":
        move = dataclass_replace(move, mode="cold", why_mode="cold requested")
    return move, await submit_move(engine, move, idempotency_key=idempotency_key)


async def _by_key(engine: Engine, key: str) -> Operation | None:
    async with engine.sessions() as session:
        return (await session.exec(select(Operation).where(Operation.idempotency_key == key))).first()


def _replay(earlier: Operation, plan: MigrationPlan, children: list[Operation]) -> BatchStarted:
    """The first answer to a request repeated under its idempotency key; IdempotencyKeyReused (422) when
    the key was used for something else."""
    if earlier.kind != "migrate_batch" or (earlier.params.get("plan"), earlier.params.get("scope")) != (
            plan.kind, plan.scope):
        raise IdempotencyKeyReused(f"idempotency key already used by operation {earlier.id} ({earlier.kind} "
                                   f"{earlier.params.get('plan')} of {earlier.params.get('scope')}) for a "
                                   "different request; use a new key")
    return BatchStarted(earlier, children, dict(earlier.params.get("refused", {})))


async def _earlier(engine: Engine, plan: MigrationPlan, key: str | None) -> BatchStarted | None:
    earlier = await _by_key(engine, key) if key else None
    if earlier is None:
        return None
    return _replay(earlier, plan, [await store.get(engine.sessions, i) for i in earlier.params.get("children", [])])


async def execute_plan(engine: Engine, plan: MigrationPlan, *, idempotency_key: str | None = None) -> BatchStarted:
    """Submit every move of ``plan`` (one operation each) and a parent that waits on them all, in one
    transaction with the children's address leases and the idempotency key (on the parent)."""
    earlier = await _earlier(engine, plan, idempotency_key)
    if earlier is not None:
        return earlier
    if not plan.moves:
        raise Conflict(f"nothing to migrate: {plan.summary}")

    async def attempt(drawn: list[AddressLease]) -> BatchStarted:
        moves: list[tuple[Move, flows.PlanSpec]] = []
        refused: dict[str, str] = {}
        for move in plan.moves:
            try:
                moves.append((move, await move_plan(engine, move, drawn=drawn)))
            except MetavmmError as exc:
                refused[move.workload] = str(exc)
        if not moves:
            raise Conflict("no move could be submitted: " + "; ".join(f"{k}: {v}" for k, v in refused.items()))
        try:
            async with session_scope(engine.sessions) as session:
                session.add_all([row for _, spec in moves for row in spec.rows])
                children = [await store.write_plan(session, **spec.write_args()) for _, spec in moves]
                parent = await store.write_plan(session, **_parent_args(plan, moves, children, refused),
                                                idempotency_key=idempotency_key)
        except IntegrityError:
            twin = await _earlier(engine, plan, idempotency_key)  # a concurrent request with the key won
            if twin is None:
                raise
            return twin
        return BatchStarted(parent, children, refused)

    started = await addresses.with_leases(engine.sessions, attempt, where=plan.scope)
    for op in (*started.children, started.parent):
        await engine.wake(op.id)
    return started


def _parent_args(plan: MigrationPlan, moves: list[tuple[Move, flows.PlanSpec]], children: list[Operation],
                 refused: dict[str, str]) -> dict[str, object]:
    """The ``migrate_batch`` operation: one waiting step per child, then the check of them all."""
    ids = [c.id for c in children]
    steps = [Step(f"wait-{i}-{move.workload}"[:120], "operation.wait",
                  {"operation_id": child.id, "operation_ids": ids,
                   "label": f"{move.workload} ({move.mode}) -> {move.target_host or move.target_site}"},
                  compensate="batch.cancel", weight=max(move.seconds, 1.0))
             for i, ((move, _), child) in enumerate(zip(moves, children, strict=True), start=1)]
    steps.append(Step("check", "batch.check", {"operation_ids": ids}))
    return {"kind": "migrate_batch", "steps": steps,
            "params": {"plan": plan.kind, "scope": plan.scope, "summary": plan.summary, "children": ids,
                       "refused": refused}}
