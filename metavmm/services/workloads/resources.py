"""Where a new network or storage goes: the site the request names, else the first whose provider can make one.

Networks and volumes have no shape the scheduler prices; what matters is that the provider can create
them and that the computes linking to them sit at the same site (a VM attaches only what its own site
holds: the attach step checks it and rolls back with the reason otherwise).
"""

from __future__ import annotations

from typing import Any

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.models import Provider, Site, WorkloadKind
from metavmm.foundation.errors import NoPlacement

CAPABILITY = {WorkloadKind.STORAGE: "volumes", WorkloadKind.NETWORK: "networks"}


async def place_resource(session: AsyncSession, providers: frozenset[str], kind: str,
                         site: str | None) -> dict[str, Any]:
    """Where a volume or network goes: the site named (by name or region), else the first site (by name)
    whose provider can create one; NoPlacement (409) with each site's reason otherwise."""
    need = CAPABILITY[WorkloadKind(kind)]
    rows = (await session.exec(select(Site, Provider).join(Provider, Site.provider_id == Provider.id)
                               .where(Site.present == True, Provider.enabled == True)  # noqa: E712
                               .order_by(Site.name))).all()
    reasons: dict[str, list[str]] = {}
    for site_row, provider in rows:
        if site and site not in (site_row.name, site_row.region):
            continue
        if provider.name not in providers:
            reasons[site_row.name] = ["provider not in the federation file"]
        elif need not in provider.capabilities:
            reasons[site_row.name] = [f"{provider.name} ({provider.kind}) cannot create {need}"]
        else:
            return {"provider": provider.name, "region": site_row.region, "site": site_row.name}
    if not reasons:
        reasons = {site or "*": ["no such site" if site else "no site in the catalog"]}
    summary = "; ".join(f"{k}: {', '.join(v)}" for k, v in reasons.items())
    raise NoPlacement(f"no site can take this {kind}: {summary}", reasons=reasons)
