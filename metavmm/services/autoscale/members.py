"""A group's members: which workloads count, what each is (where, price, burst), which go first on a
scale-in, and the request that creates the next one through the one workload service."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from metavmm.catalog.models import AutoscaleGroup, Workload, WorkloadKind
from metavmm.services.workloads.requests import CreateRequest, LinkSpec


@dataclass(frozen=True)
class MemberView:
    serial: int
    workload: Workload
    site: str | None
    provider: str | None
    price_per_hour: str | None
    burst: bool


def member_request(group: AutoscaleGroup, serial: int) -> CreateRequest:
    tpl = group.template
    links = (LinkSpec(tpl["network_id"]),) if tpl.get("network_id") else ()
    return CreateRequest(kind=WorkloadKind.COMPUTE, name=f"{group.name}-{serial}", flavor=tpl.get("flavor"),
                         vcpus=tpl.get("vcpus"), ram_mib=tpl.get("ram_mib"), disk_gib=int(tpl.get("disk_gib") or 0),
                         image=tpl.get("image_id") or tpl.get("image"), ssh_key=tpl.get("ssh_key"),
                         user_data=tpl.get("user_data"), links=links,
                         attributes={"autoscale": {"group_id": group.id, "group": group.name, "serial": serial}})


def member_view(serial: int, w: Workload) -> MemberView:
    where = (w.spec or {}).get("placement") or {}
    burst = ((where.get("burst") or {}).get("outcome")) == "burst"
    return MemberView(serial, w, where.get("site"), where.get("provider"), where.get("price_per_hour"), burst)


def alive(w: Workload) -> bool:
    """Still a member: not deleted, not gone at its provider, not a create that rolled back (which marks
    the row deleted and not present). A member in error still counts (its VM exists): delete it and the
    group replaces it."""
    return w.present and w.desired_state != "deleted"


def scale_in_order(members: Sequence[MemberView], order: str) -> list[MemberView]:
    """Who goes first: burst members before on-prem ones, then by ``order``: ``cost`` (the most expensive
    per hour first, then the newest), ``newest`` or ``oldest``."""
    def price(m: MemberView) -> float:
        try:
            return float(m.price_per_hour) if m.price_per_hour is not None else 0.0
        except ValueError:
            return 0.0

    if order == "oldest":
        return sorted(members, key=lambda m: (not m.burst, m.serial))
    if order == "newest":
        return sorted(members, key=lambda m: (not m.burst, -m.serial))
    return sorted(members, key=lambda m: (not m.burst, -price(m), -m.serial))


def why_removed(m: MemberView, order: str) -> str:
    cost = f"{m.price_per_hour}/h" if m.price_per_hour is not None else "no price"
    first = "a burst member (burst members go first)" if m.burst else "on-prem"
    rank = {"cost": "the most expensive left", "newest": "the newest left", "oldest": "the oldest left"}[order]
    return f"{first}, {cost} at {m.site}; {rank}"


def placed(m: MemberView) -> dict[str, Any]:
    where = (m.workload.spec or {}).get("placement") or {}
    burst = where.get("burst") or {}
    return {"workload_id": m.workload.id, "name": m.workload.name, "serial": m.serial, "site": m.site,
            "provider": m.provider, "host": where.get("host"), "flavor": where.get("flavor"),
            "price_per_hour": m.price_per_hour, "burst": m.burst,
            "why": burst.get("reason") if m.burst else where.get("summary")}
