"""The federation map on the overview: providers with their sites, the transfer links the scheduler assumes
between them, and the conversion graph it routes images through.

Both pictures are drawn from the scheduler's own functions (:func:`link_between`, :func:`conversion_graph`),
so the map cannot disagree with what placement costs. Like :mod:`.charts`, plain SVG with the numbers in
``data-*`` attributes: no script draws it and a test reads the edges from the DOM.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from markupsafe import Markup, escape

from metavmm.catalog.models import Provider, Site
from metavmm.foundation.config import SchedulerSettings
from metavmm.scheduler.graph import Link, conversion_graph, link_between
from metavmm.scheduler.snapshot import ProviderView, SiteView

SIZE = 720
SITE_DOTS = 48  # more sites than this are drawn as a count


@dataclass(frozen=True)
class ProviderSpot:
    provider: Provider
    sites: list[Site]
    x: float
    y: float


def _view(p: Provider) -> SiteView:
    """A site of ``p`` as the scheduler sees it, for the link rules (which depend on the provider only)."""
    return SiteView(id=0, name=p.name, region="", provider=ProviderView(id=p.id or 0, name=p.name, kind=p.kind,
                                                                         on_prem=p.on_prem))


def _spots(providers: list[Provider], sites: list[Site]) -> list[ProviderSpot]:
    by_provider: dict[int, list[Site]] = {}
    for s in sites:
        by_provider.setdefault(s.provider_id, []).append(s)
    n, c = len(providers), SIZE / 2
    radius = 0.0 if n == 1 else SIZE * 0.32
    return [ProviderSpot(p, by_provider.get(p.id or 0, []), c + radius * math.cos(2 * math.pi * i / n - math.pi / 2),
                         c + radius * math.sin(2 * math.pi * i / n - math.pi / 2)) for i, p in enumerate(providers)]


def _money(link: Link) -> str:
    return f"{link.egress_per_gib.normalize():f}"


def federation_svg(providers: list[Provider], sites: list[Site], settings: SchedulerSettings) -> Markup:
    """Providers on a circle, each ringed by its sites; one line per pair of providers with the WAN rate
    and the egress price each way; each provider's label says the rate between its own sites."""
    spots = _spots(providers, sites)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="fedmap" id="federation-map" role="img" '
             f'width="{SIZE}" height="{SIZE}" viewBox="0 0 {SIZE} {SIZE}" aria-label="Federation map">'
             "<title>Federation map: providers, their sites, and the transfer links the scheduler assumes</title>"]
    for a, b in itertools.combinations(spots, 2):
        ab, ba = link_between(_view(a.provider), _view(b.provider), settings), \
            link_between(_view(b.provider), _view(a.provider), settings)
        mx, my = (a.x + b.x) / 2, (a.y + b.y) / 2
        paid = [f"egress {_money(link)}/GiB from {src.provider.name}"
                for link, src in ((ab, a), (ba, b)) if link.egress_per_gib > 0]
        label = ", ".join([f"{ab.mib_per_s:g} MiB/s", *paid])
        parts.append(f'<g class="link" data-from="{escape(a.provider.name)}" data-to="{escape(b.provider.name)}" '
                     f'data-mib-per-s="{ab.mib_per_s:g}" data-egress-forward="{_money(ab)}" '
                     f'data-egress-back="{_money(ba)}">'
                     f'<line x1="{a.x:.1f}" y1="{a.y:.1f}" x2="{b.x:.1f}" y2="{b.y:.1f}"/>'
                     f'<text x="{mx:.1f}" y="{my:.1f}" text-anchor="middle">{escape(label)}</text></g>')
    for spot in spots:
        inside = link_between(_view(spot.provider), _view(spot.provider), settings)
        kind = "on-prem" if spot.provider.on_prem else "cloud"
        parts.append(f'<g class="provider {kind}" data-provider="{escape(spot.provider.name)}" '
                     f'data-kind="{escape(spot.provider.kind)}" data-sites="{len(spot.sites)}" '
                     f'data-internal-mib-per-s="{inside.mib_per_s:g}">')
        shown = spot.sites[:SITE_DOTS]
        for i, site in enumerate(shown):
            angle = 2 * math.pi * i / max(len(shown), 1)
            parts.append(f'<circle class="site{"" if site.present else " gone"}" data-site="{escape(site.name)}" '
                         f'cx="{spot.x + 54 * math.cos(angle):.1f}" cy="{spot.y + 54 * math.sin(angle):.1f}" r="4">'
                         f"<title>{escape(site.name)} ({escape(site.region)})</title></circle>")
        more = f" (+{len(spot.sites) - SITE_DOTS} sites)" if len(spot.sites) > SITE_DOTS else ""
        parts.append(f'<circle class="hub" cx="{spot.x:.1f}" cy="{spot.y:.1f}" r="42"/>'
                     f'<text x="{spot.x:.1f}" y="{spot.y + 4:.1f}" text-anchor="middle">'
                     f"{escape(spot.provider.name[:14])}</text>"
                     f'<text class="note" x="{spot.x:.1f}" y="{spot.y + 76:.1f}" text-anchor="middle">'
                     f"{escape(spot.provider.kind)}, {len(spot.sites)} sites{more}, "
                     f"{inside.mib_per_s:g} MiB/s inside</text></g>")
    parts.append("</svg>")
    return Markup("".join(parts))


def conversion_rows() -> list[dict[str, str]]:
    """The conversion graph's edges as rows: qemu-img between formats, virt-v2v between hypervisor
    families, and which formats each hypervisor boots."""
    rows = []
    for src, dst, data in sorted(conversion_graph().edges(data=True)):
        edge = data.get("edge")
        rows.append({"from": src.split(":", 1)[1], "to": dst.split(":", 1)[1], "tool": data["tool"],
                     "rate": f"{edge.mib_per_s:g} MiB/s" if edge is not None else "-"})
    return rows
