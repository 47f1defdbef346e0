"""Migration plans executed: the scheduler's moves become engine operations.

The scheduler (:mod:`metavmm.scheduler.migration`) decides, over a fresh catalog snapshot, where each
workload goes and whether it can move live; this module turns each :class:`Move` into one operation:

- ``live``: :func:`flows.live_migrate` to the target host (the same provider);
- ``cold`` to another provider: :func:`flows.cold_migrate` (export, convert, import, boot, verify);
- ``cold`` inside one provider (hosts with different CPUs): :func:`relocate`, an offline move
  (stop, move to the target host, start, verify).

A whole plan (evacuate a host or a site, rebalance a site) runs as one child operation per move and a
parent ``migrate_batch`` operation that waits on them (see :mod:`.batch_actions`): the caller follows and
cancels the parent; each child keeps its own rollback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from dataclasses import replace as dataclass_replace

from sqlmodel import select

from metavmm.catalog.models import Operation, Provider, Site
from metavmm.foundation.errors import Conflict, IdempotencyKeyReused, MetavmmError, NotFound, ValidationError
from metavmm.scheduler.migration import MigrationPlan, MigrationPlanner, Move
from metavmm.scheduler.snapshot import Snapshot
from metavmm.services.operations import flows, store
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


async def relocate(engine: Engine, workload_id: str, *, target_host: str,
                   idempotency_key: str | None = None) -> Operation:
    """Move a VM to another host of its provider while it is stopped (hosts whose CPUs differ)."""
    workload, provider = await flows._workload_at(engine, workload_id)
    at = {"provider": provider, "workload_id": workload.id}
    was_running = workload.observed_state == "running"
    steps = [Step("note", "workload.note", {"workload_id": workload.id, "message": f"moving to {target_host}"}),
             Step("stop", "vm.power", {**at, "verb": "stop"}, compensate="vm.start"),
             Step("wait-stopped", "vm.wait", {**at, "state": "stopped", "timeout_s": 300}),
             Step("move", "vm.live_migrate", {**at, "target_provider": provider, "target_host": target_host},
                  weight=3, commit=True)]
    if was_running:
        steps += [Step("start", "vm.power", {**at, "verb": "start"}),
                  Step("verify-target", "vm.wait", {**at, "state": "running", "timeout_s": 300, "stable_s": 1.0})]
    steps.append(Step("record", "workload.record", at))
    return await engine.submit(kind="cold_migrate", steps=steps, target_id=workload.id,
                               project_id=workload.project_id, idempotency_key=idempotency_key,
                               params={"from": provider, "to": provider, "host": target_host, "offline": True})


async def submit_move(engine: Engine, move: Move, *, idempotency_key: str | None = None) -> Operation:
    """The one operation that carries out ``move``."""
    provider, region = await _target(engine, move.target_site)
    _, source = await flows._workload_at(engine, move.workload_id)
    if move.mode == "live":  # into another provider (a libvirt daemon) its endpoint is the target, not a host name
        return await flows.live_migrate(engine, move.workload_id, target_provider=provider,
                                        target_host=move.target_host if provider == source else None,
                                        idempotency_key=idempotency_key)
    if provider == source:
        if move.target_host is None:
            raise ValidationError(f"{move.workload}: a move inside {provider} needs a target host")
        return await relocate(engine, move.workload_id, target_host=move.target_host, idempotency_key=idempotency_key)
    return await flows.cold_migrate(engine, move.workload_id, target_provider=provider, target_region=region,
                                    idempotency_key=idempotency_key)


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


async def execute_plan(engine: Engine, plan: MigrationPlan, *, idempotency_key: str | None = None) -> BatchStarted:
    """Submit every move of ``plan`` (one operation each) and a parent that waits on them all."""
    if idempotency_key:
        earlier = await _by_key(engine, idempotency_key)
        if earlier is not None:
            if earlier.kind != "migrate_batch" or (earlier.params.get("plan"), earlier.params.get("scope")) != (
                    plan.kind, plan.scope):
                raise IdempotencyKeyReused(f"idempotency key already used by operation {earlier.id} ({earlier.kind} "
                               f"{earlier.params.get('plan')} of {earlier.params.get('scope')}) for a different "
                               "request; use a new key")
            children = [await store.get(engine.sessions, i) for i in earlier.params.get("children", [])]
            return BatchStarted(earlier, children, dict(earlier.params.get("refused", {})))
    if not plan.moves:
        raise Conflict(f"nothing to migrate: {plan.summary}")
    started = BatchStarted(parent=None)  # type: ignore[arg-type]
    waits: list[Step] = []
    for move in plan.moves:
        try:
            child = await submit_move(engine, move)
        except MetavmmError as exc:
            started.refused[move.workload] = str(exc)
            continue
        started.children.append(child)
        waits.append(Step(f"wait-{len(waits) + 1}-{move.workload}"[:120], "operation.wait",
                          {"operation_id": child.id, "label": f"{move.workload} ({move.mode}) -> "
                           f"{move.target_host or move.target_site}"}, weight=max(move.seconds, 1.0)))
    ids = [c.id for c in started.children]
    if not ids:
        raise Conflict("no move could be submitted: " + "; ".join(f"{k}: {v}" for k, v in started.refused.items()))
    steps = [Step(w.name, w.action, {**w.args, "operation_ids": ids}, compensate="batch.cancel", weight=w.weight)
             for w in waits]
    steps.append(Step("check", "batch.check", {"operation_ids": ids}))
    started.parent = await engine.submit(
        kind="migrate_batch", steps=steps, idempotency_key=idempotency_key,
        params={"plan": plan.kind, "scope": plan.scope, "summary": plan.summary, "children": ids,
                "refused": started.refused})
    return started
