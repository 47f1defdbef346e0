"""REST API under /api/v1: every area's RestModule is listed in :func:`modules`."""

from __future__ import annotations

from aiohttp import web

from metavmm.api.rest.framework import RestModule, add_module


def modules() -> list[RestModule]:
    """Every REST module, in the order the OpenAPI document lists them. Add yours here."""
    from metavmm.api.rest import (
        autoscale,
        clusters,
        dr,
        events,
        ha,
        identity,
        inventory,
        marketplace,
        migrations,
        prices,
        rebalance,
        scheduling,
        schools,
        system,
        workloads,
    )

    return [system.api, identity.api, inventory.api, marketplace.api, schools.api, prices.api, scheduling.api,
            workloads.api, migrations.api, events.api, clusters.api, ha.api,
            autoscale.api, dr.api, rebalance.api]


def setup_rest(api: web.Application) -> None:
    for module in modules():
        add_module(api, module)
