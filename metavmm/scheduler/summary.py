"""The placement summary: why a workload went where it went, as the JSON it keeps.

A create writes :func:`placement_summary` on the workload (``spec["placement"]``), ``POST /placements``
and ``metavmm schedule place`` show the same document for a dry run, so "why is my VM there?" has the
same answer before and after. The shape is stable (``version``; every key present, ``null`` when it
does not apply) and documented in docs/scheduler.md:

- where: ``provider``, ``region``, ``site``, ``site_id``, ``host``, ``host_id``, ``flavor``, ``hypervisor``;
- ``cost_per_hour`` (``{"amount", "currency"}``, amounts as decimal strings) and ``price_per_hour``;
- ``alternatives``: up to :data:`MAX_ALTERNATIVES` next-best candidates and why each lost: ``lost``
  ``cost`` (it passed every rule but scored worse: ``cost_difference_per_hour`` and the costs it lost
  on), ``filter`` (the first rule that rejected it, its code, message and numbers) or ``burst`` (the
  on-prem choice a burst policy sent the work away from);
- ``burst``: the burst verdict (:class:`~metavmm.scheduler.plan.BurstVerdict`), ``null`` when no
  policy was consulted.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from metavmm.scheduler.plan import Alternative, Placement, Rejection
from metavmm.scheduler.quotes import requote, storage_per_hour, storage_quote
from metavmm.scheduler.request import PlacementRequest
from metavmm.scheduler.snapshot import SiteView

SUMMARY_VERSION = 1
MAX_ALTERNATIVES = 3


def money(amount: Decimal | None) -> str | None:
    """A decimal amount as plain digits (``0.112``, ``100``), never ``1E+2`` or ``0E-10``."""
    return None if amount is None else format(amount.normalize(), "f")


def _worse_costs(chosen: Mapping[str, float], alt: Mapping[str, float]) -> dict[str, list[float]]:
    """Each cost the alternative does worse on: ``{name: [chosen, alternative]}`` (raw values)."""
    out = {}
    for name, value in alt.items():
        mine = chosen.get(name)
        if mine is not None and value > mine + 1e-9:
            out[name] = [round(mine, 6), round(value, 6)]
    return out


def _phrase(name: str, mine: float, theirs: float, p: Placement) -> str:
    if name == "price":
        return f"price over {p.expected_hours:g} h with egress {theirs:.4g} vs {mine:.4g} {p.currency}"
    if name == "movement":
        return f"image ready in {theirs:.0f} s vs {mine:.0f} s (conversions and transfers)"
    if name == "gpu":
        return "a GPU candidate, kept for GPU work while one without GPUs fits"
    if name == "balance":
        return f"placement strategy (pack or spread) ranks it {theirs:.2f} vs {mine:.2f}"
    return f"{name} {theirs:.4g} vs {mine:.4g}"


def _cost_entry(p: Placement, a: Alternative) -> dict[str, Any]:
    diff = (a.price_per_hour - p.price_per_hour) if a.price_per_hour is not None and p.price_per_hour is not None \
        else None
    worse = _worse_costs(p.costs, a.breakdown)
    parts = []
    if diff is not None and diff > 0:
        parts.append(f"{money(diff)} {p.currency}/h more ({money(a.price_per_hour)} vs {money(p.price_per_hour)})")
    elif diff == 0:
        parts.append("same price per hour")
    parts += [_phrase(name, mine, theirs, p) for name, (mine, theirs) in worse.items()
              if not (name == "price" and diff is not None and diff > 0)]
    if not worse:
        parts.append("equal costs; the tie goes by name")
    return {"candidate": a.candidate, "site": a.site, "kind": a.kind, "lost": "cost", "reason": "; ".join(parts),
            "price_per_hour": money(a.price_per_hour), "cost_difference_per_hour": money(diff),
            "costs": worse, "filter": None, "code": None, "numbers": {}}


def _burst_entry(p: Placement, home: Alternative, reason: str) -> dict[str, Any]:
    diff = (home.price_per_hour - p.price_per_hour) if home.price_per_hour is not None \
        and p.price_per_hour is not None else None
    return {"candidate": home.candidate, "site": home.site, "kind": home.kind, "lost": "burst", "reason": reason,
            "price_per_hour": money(home.price_per_hour), "cost_difference_per_hour": money(diff), "costs": {},
            "filter": None, "code": None, "numbers": {}}


def _filter_entry(r: Rejection) -> dict[str, Any]:
    return {"candidate": r.candidate, "site": r.site, "kind": r.kind, "lost": "filter", "reason": r.message,
            "price_per_hour": None, "cost_difference_per_hour": None, "costs": {}, "filter": r.filter,
            "code": r.code, "numbers": {k: v for k, v in r.numbers.items() if isinstance(v, int | float | str)}}


def alternatives(p: Placement, limit: int = MAX_ALTERNATIVES) -> list[dict[str, Any]]:
    """The next best: the on-prem choice a burst policy overrode, candidates that passed but scored worse
    (best first), then rejected ones, one per candidate: those a wait could change (capacity) before
    those it cannot (architecture, residency), and a policy's scope (on-prem only, allowed providers)
    last, since it says more about the request than about the candidate."""
    out = []
    seen = {p.host, p.site}
    if p.placed and p.burst is not None and p.burst.home is not None:
        out.append(_burst_entry(p, p.burst.home, p.burst.reason))
        seen.add(p.burst.home.site)  # the policy's own "provider not allowed" for that site says less
    if p.placed:
        out += [_cost_entry(p, a) for a in p.alternatives[:limit - len(out)]]
    seen |= {e["candidate"] for e in out}
    rejected = sorted((r for r in p.rejections if r.covers or r.kind == "site"),
                      key=lambda r: (r.unresolvable, r.kind == "request", r.filter == "policy", r.site, r.candidate))
    for r in rejected:
        if len(out) >= limit:
            break
        if r.candidate not in seen:
            seen.add(r.candidate)
            out.append(_filter_entry(r))
    return out


def explanation(p: Placement) -> list[dict[str, Any]]:
    """Every candidate of an ``explain`` placement, one entry each (``outcome``): the ``chosen`` one,
    those that ``passed`` every rule but cost more (cheapest first, with the cost difference per hour and
    the costs they lost on) and those ``rejected`` (the first rule that failed, its code, message and
    numbers: needed vs free, a GPU model with 0 free included). Without ``explain`` the scheduler stops at
    the first site that works, so the list holds what it looked at."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    if p.placed:
        chosen = p.host or (f"{p.site}:{p.flavor}" if p.flavor else p.site or "")
        out.append({"candidate": chosen, "site": p.site, "kind": "host" if p.host else "flavor",
                    "outcome": "chosen", "reason": p.summary, "price_per_hour": money(p.price_per_hour),
                    "cost_difference_per_hour": "0", "costs": dict(p.costs), "filter": None, "code": None,
                    "numbers": {}})
        seen.add(chosen)
        passed = [_cost_entry(p, a) for a in p.alternatives if a.candidate not in seen]
        passed.sort(key=lambda e: (e["cost_difference_per_hour"] is None,
                                   Decimal(e["cost_difference_per_hour"] or 0), e["candidate"]))
        for e in passed:
            if e["candidate"] not in seen:
                seen.add(e["candidate"])
                out.append({**e, "outcome": "passed"})
    for r in sorted(p.rejections, key=lambda r: (r.site, r.kind != "site", r.candidate)):
        if r.candidate not in seen:
            seen.add(r.candidate)
            out.append({**_filter_entry(r), "outcome": "rejected"})
    for e in out:
        e.pop("lost", None)
    return out


def placement_summary(p: Placement) -> dict[str, Any]:
    """The stable JSON a created workload keeps as ``spec["placement"]`` (see the module docstring)."""
    return {
        "version": SUMMARY_VERSION, "placed": p.placed, "summary": p.summary,
        "provider": p.provider, "region": p.region, "site": p.site, "site_id": p.site_id, "host": p.host,
        "host_id": p.host_id, **offer(p.flavor, p.price_per_hour, p.currency, hypervisor=p.hypervisor,
                                      storage_per_hour=p.storage_per_hour),
        "alternatives": alternatives(p),
        "burst": p.burst.as_dict() if p.burst is not None else None,
    }


def offer(flavor: str | None, price_per_hour: Decimal | None, currency: str | None, *,
          hypervisor: str | None = None, storage_per_hour: Decimal | None = None) -> dict[str, Any]:
    """The summary's flavor and price keys (one spelling for a create's placement and a move's).
    ``storage_per_hour``: the disk at the site, in the same currency: what the spend ledger charges while
    the compute is stopped, and adds to its price while it runs."""
    per_hour = money(price_per_hour)
    return {"flavor": flavor, "hypervisor": hypervisor, "price_per_hour": per_hour,
            "cost_per_hour": {"amount": per_hour, "currency": currency} if per_hour is not None else None,
            "storage_per_hour": money(storage_per_hour)}


def volume_offer(storage_per_hour: Decimal | None, currency: str | None) -> dict[str, Any]:
    """A volume's price keys in its placement summary: ``storage_per_hour`` (its size at the site's storage
    price: what the spend ledger charges while it exists) and ``cost_per_hour`` (the same, with its currency,
    as a compute's: what the project's run rate sums); None for both where the site prices no storage."""
    per_hour = money(storage_per_hour)
    return {"storage_per_hour": per_hour,
            "cost_per_hour": {"amount": per_hour, "currency": currency} if per_hour is not None else None}


def current_offer(site: SiteView, kind: str, spec: Mapping[str, Any], currency: str) -> dict[str, Any]:
    """The price keys of a workload's placement summary by ``site``'s current prices: a compute's flavor at
    its price there (:func:`~metavmm.scheduler.quotes.requote`) and its disk's storage; a volume's size at
    the storage price (:func:`volume_offer`). What a price import re-prices running work by."""
    placement = spec.get("placement") or {}
    disk = int(spec.get("disk_gib") or 0)
    if kind == "storage":
        return volume_offer(storage_quote(site, disk), currency)
    req = PlacementRequest(str(spec.get("name") or "priced"), int(spec.get("vcpus") or 0),
                           int(spec.get("ram_mib") or 0), disk, gpu_model=spec.get("gpu_model"),
                           gpu_count=int(spec.get("gpu_count") or 0))
    return offer(placement.get("flavor"), requote(site, placement.get("flavor"), req).per_hour, currency,
                 hypervisor=placement.get("hypervisor"), storage_per_hour=storage_per_hour(site, disk))


MOVED_CLEARS = ("flavor", "hypervisor", "price_per_hour", "cost_per_hour", "storage_per_hour")
"""What a placement summary says about its old site that is false at another: a move to another site clears
them unless the move knows the new values (a planned move's flavor and price)."""


def relocated(placement: Mapping[str, Any], *, provider: str, region: str | None, site: str | None,
              site_id: int | None, host: str | None, host_id: int | None,
              update: Mapping[str, Any] | None = None, home: bool = False) -> dict[str, Any]:
    """The placement summary of a workload that now runs elsewhere (a migration, an HA restart, a failover).

    Why: the summary is where the spend ledger reads the rate a compute accrues at
    (:func:`metavmm.catalog.spend.rate_of`) and where links read the site a compute is bound to; left at the
    old site, a migrated VM went on being charged the old provider's price and its volumes were bound to a
    site it had left. The location becomes where the VM now is. Within its site only the host changes (the
    price holds); at another site the old flavor and price are dropped (``moved_from`` says from where)
    unless ``update`` brings the new ones, so an unknown price reads as unknown, never as the old one.

    ``home``: the new site is on-prem. A burst workload that moves home is burst work no more: its
    verdict's outcome becomes ``returned`` (``returned_to`` the site), which the spend ledger's burst
    budget, the autoscaler's burst-first scale-in and every reader of ``outcome == "burst"`` then pass
    over; the rest of the verdict (the policy, the rule that sent it out) stays for the history.
    """
    old = dict(placement)
    same_site = (site_id is not None and old.get("site_id") == site_id) or (
        site_id is None and (old.get("provider"), old.get("region")) == (provider, region))
    if same_site:
        new = {**old, **({"host": host, "host_id": host_id} if host_id is not None else {})}
    else:
        new = {**old, **dict.fromkeys(MOVED_CLEARS), "provider": provider, "region": region, "site": site,
               "site_id": site_id, "host": host, "host_id": host_id,
               "moved_from": "/".join(str(x) for x in (old.get("provider"), old.get("region")) if x) or None}
        burst = old.get("burst")
        if home and isinstance(burst, Mapping) and burst.get("outcome") == "burst":
            new["burst"] = {**burst, "outcome": "returned", "returned_to": site}
    new.update(update or {})
    return new
