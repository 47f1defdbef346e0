"""Scheduling: placement dry runs with explanations, batch placement, migration plans, burst replays.

Every route changes nothing. ``POST /placements`` asks the Placer a create uses (the same cached
snapshot, the placements still in transit, the burst policies, the same checks) and answers what a
create would do now: where, the engine's steps, what price, why not elsewhere, and the placement
summary the workload would keep. The other routes answer from a fresh catalog snapshot.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from metavmm.api import keys
from metavmm.api.rest.framework import RestModule
from metavmm.scheduler import service
from metavmm.scheduler.schemas import (
    BatchIn,
    BatchOut,
    MigrationIn,
    MigrationOut,
    PlaceIn,
    PlacementOut,
    PolicyOut,
    ReplayIn,
    ReplayOut,
)
from metavmm.scheduler.snapshot import Snapshot

api = RestModule("scheduling", "Placement, batch placement, migration plans and burst policies (dry runs)")


async def _snapshot(request: web.Request) -> Snapshot:
    return await service.snapshot(request.config_dict[keys.SESSIONS], request.config_dict[keys.CONFIG])


@api.route("POST", "/placements", summary="Where would this VM go, at what price, and why not elsewhere (dry run "
           "of a create)", body=PlaceIn, response=PlacementOut, role="member")
async def place(request: web.Request, body: PlaceIn) -> PlacementOut:
    config = request.config_dict[keys.CONFIG]
    async with request.config_dict[keys.SESSIONS]() as session:
        planned = await request.config_dict[keys.PLACER].dry_run(
            session, body.to_request(), providers=frozenset(p.name for p in config.providers),
            explain=body.explain, project_id=keys.identity_of(request).project_id)
    return PlacementOut.of(planned.placement, planned.where, explain=body.explain)


@api.route("POST", "/placements/batch", summary="Place many workloads at once (min-cost flow, dry run)",
           body=BatchIn, response=BatchOut, role="member")
async def place_batch(request: web.Request, body: BatchIn) -> BatchOut:
    snap = await _snapshot(request)
    requests = [r.to_request() for r in body.requests]
    return BatchOut.of(await asyncio.to_thread(service.place_batch, snap, requests))  # CPU-bound: off the loop


@api.route("POST", "/migrations/plan", summary="Plan evacuating a host or site, or rebalancing a site (dry run)",
           body=MigrationIn, response=MigrationOut, role="admin")
async def plan_migration(request: web.Request, body: MigrationIn) -> MigrationOut:
    snap = await _snapshot(request)
    plan = await asyncio.to_thread(service.plan_migration, snap, body.kind, host=body.host, site=body.site,
                                   tolerance=body.tolerance, max_moves=body.max_moves)
    return MigrationOut.of(plan)


@api.route("GET", "/policies", summary="The configured burst policies", response=list[PolicyOut], role="reader")
async def list_policies(request: web.Request) -> list[PolicyOut]:
    return [PolicyOut(name=p.name, when_utilisation_above=p.when_utilisation_above,
                      when_wait_longer_than_s=p.when_wait_longer_than_s, allowed_providers=p.allowed_providers,
                      monthly_budget=p.monthly_budget, currency=p.currency, residency=p.residency,
                      return_below=p.return_below) for p in request.config_dict[keys.CONFIG].policies]


@api.route("POST", "/policies/{name}/replay", summary="Replay a burst policy over a trace of requests",
           body=ReplayIn, response=ReplayOut, role="member")
async def replay(request: web.Request, body: ReplayIn) -> ReplayOut:
    return await run_replay(request, request.match_info["name"], body)


async def run_replay(request: web.Request, name: str, body: ReplayIn) -> ReplayOut:
    """Replay policy ``name`` over ``body``'s trace on a fresh snapshot (REST's route and the dashboard's form)."""
    pol = service.policy(request.config_dict[keys.CONFIG], name)
    snap = await _snapshot(request)
    return ReplayOut.of(await asyncio.to_thread(service.replay, snap, pol, list(body.trace), body.start))
