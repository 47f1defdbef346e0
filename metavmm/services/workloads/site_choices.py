"""Where a compute could go if its create named the site: the launch form's choice of sites, with prices.

:meth:`WorkloadService.site_choices <metavmm.services.workloads.service.WorkloadService.site_choices>` asks
the scheduler once, in a dry run, with every site of the federation file's providers named: exactly what a
create naming one of them asks (a create that names its site is a constraint the scheduler checks, and burst
policies do not apply to it, REST's rule), so a site offered here is one a launch there is placed at now,
and one not offered comes with the scheduler's reason. Nothing here decides: this module only folds the
dry run's per-candidate explanation into one line per site.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from metavmm.scheduler.plan import Placement
from metavmm.scheduler.summary import explanation

BEST = "the scheduler's pick among these sites (price, then movement and balance)"


@dataclass(frozen=True)
class SiteChoice:
    site: str
    provider: str
    region: str
    feasible: bool
    price_per_hour: str | None  # the cheapest candidate (host or flavor) that passed, in the federation currency
    best: bool  # the scheduler's own pick among all the named sites (price, movement, balance)
    reason: str  # why not (the first rule that failed there), or what passed


@dataclass(frozen=True)
class SiteChoices:
    currency: str
    summary: str
    sites: tuple[SiteChoice, ...]  # feasible ones cheapest first, then the others by name

    @property
    def feasible(self) -> tuple[SiteChoice, ...]:
        return tuple(s for s in self.sites if s.feasible)


EXCLUDED = frozenset({"host excluded", "site excluded"})  # the scheduler's codes for what the request ruled out


def reason(entry: dict[str, object], excluded: str | None) -> str:
    """Why the scheduler rejected ``entry`` (a candidate of an explanation): ``excluded`` (why the request's
    placement groups ruled hosts or sites out) where that is what rejected it, its own reason otherwise."""
    if excluded and entry.get("code") in EXCLUDED:
        return excluded
    return str(entry.get("reason") or "")


def fold(placement: Placement, sites: list[tuple[str, str, str]], *, excluded: str | None = None) -> SiteChoices:
    """One :class:`SiteChoice` per ``(site, provider, region)`` from an ``explain`` dry run naming them all;
    ``excluded`` is why the request ruled hosts or sites out (its placement groups), said instead of the
    scheduler's generic words where that is what rejected a site."""
    by_site: dict[str, list[dict[str, object]]] = {}
    for entry in explanation(placement):
        by_site.setdefault(str(entry.get("site") or ""), []).append(entry)
    out = []
    for name, provider, region in sites:
        entries = by_site.get(name, [])
        passed = [e for e in entries if e["outcome"] in ("chosen", "passed")]
        if passed:
            cheapest = min(passed, key=lambda e: (e["price_per_hour"] is None, Decimal(str(e["price_per_hour"] or 0))))
            best = any(e["outcome"] == "chosen" for e in passed)
            out.append(SiteChoice(name, provider, region, True, _text(cheapest["price_per_hour"]), best,
                                  BEST if best else str(cheapest.get("reason") or "")))
        else:
            first = next((e for e in entries if e["outcome"] == "rejected"), {})
            why = reason(first, excluded)
            out.append(SiteChoice(name, provider, region, False, None, False,
                                  why or "the scheduler found no candidate there"))
    out.sort(key=lambda s: (not s.feasible, s.price_per_hour is None,
                            Decimal(s.price_per_hour or 0) if s.feasible else Decimal(0), s.site))
    return SiteChoices(placement.currency, placement.summary, tuple(out))


def _text(value: object) -> str | None:
    return None if value is None else str(value)
