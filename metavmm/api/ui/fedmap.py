"""The federation map on the overview: providers with their sites, the transfer links the scheduler assumes
between them, and the conversion graph it routes images through.

Both pictures are drawn from the scheduler's own functions (``link_between`` through
:func:`metavmm.services.linkrates.configured`, :func:`conversion_graph`),
so the map cannot disagree with what placement costs. Beside each configured rate, the rate the broker's
own transfers measured (:mod:`metavmm.services.linkrates`), each way: the median of the pair's kept
samples, their count and the newest one's age. Like :mod:`.charts`, plain SVG with the numbers in
``data-*`` attributes: no script draws it and a test reads the edges from the DOM.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from datetime import UTC, datetime

from markupsafe import Markup, escape

from metavmm.catalog.models import Provider, Site, aware
from metavmm.foundation.config import SchedulerSettings
from metavmm.scheduler.graph import Link, conversion_graph
from metavmm.services.linkrates import PairRate, configured

SIZE = 720
SITE_DOTS = 48  # more sites than this are drawn as a count


@dataclass(frozen=True)
class ProviderSpot:
    provider: Provider
    sites: list[Site]
    x: float
    y: float


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


def age_text(ts: datetime | None, now: datetime | None = None) -> str:
    """An age people read at a glance: 42 s, 7 min, 3 h, 2 d; no time: never."""
    ts = aware(ts)
    if ts is None:
        return "never"
    s = max(0, int(((now or datetime.now(UTC)) - ts).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s // size} {unit}"
    return f"{s} s"


def _measured_attrs(rate: PairRate | None, way: str, now: datetime) -> str:
    """``data-measured-<way>-*``: the median MiB/s, the sample count and the newest sample's age in seconds."""
    if rate is None:
        return ""
    return (f' data-measured-{way}-mib-per-s="{rate.median_mib_per_s:g}" data-measured-{way}-samples="{rate.samples}"'
            f' data-measured-{way}-age-s="{rate.age_s(now):.0f}"')


def _measured_text(rate: PairRate, now: datetime) -> str:
    return f"{rate.median_mib_per_s:g} MiB/s (median of {rate.samples}, newest {age_text(rate.last_at, now)} ago)"


def federation_svg(providers: list[Provider], sites: list[Site], settings: SchedulerSettings,
                   measured: dict[tuple[str, str], PairRate] | None = None, now: datetime | None = None) -> Markup:
    """Providers on a circle, each ringed by its sites; one line per pair of providers with the WAN rate
    and the egress price each way, and the rate measured each way where transfers were; each provider's
    label says the rate between its own sites (configured, and measured where known)."""
    measured, now = measured or {}, now or datetime.now(UTC)
    spots = _spots(providers, sites)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="fedmap" id="federation-map" role="img" '
             f'width="{SIZE}" height="{SIZE}" viewBox="0 0 {SIZE} {SIZE}" aria-label="Federation map">'
             "<title>Federation map: providers, their sites, and the transfer links the scheduler assumes</title>"]
    for a, b in itertools.combinations(spots, 2):
        ab, ba = configured(a.provider, b.provider, settings), configured(b.provider, a.provider, settings)
        mx, my = (a.x + b.x) / 2, (a.y + b.y) / 2
        paid = [f"egress {_money(link)}/GiB from {src.provider.name}"
                for link, src in ((ab, a), (ba, b)) if link.egress_per_gib > 0]
        label = ", ".join([f"{ab.mib_per_s:g} MiB/s", *paid])
        forward, back = measured.get((a.provider.name, b.provider.name)), measured.get((b.provider.name,
                                                                                         a.provider.name))
        seen = [f"{src.provider.name}→{dst.provider.name} {_measured_text(rate, now)}"
                for rate, src, dst in ((forward, a, b), (back, b, a)) if rate is not None]
        parts.append(f'<g class="link{" measured" if seen else ""}" data-from="{escape(a.provider.name)}" '
                     f'data-to="{escape(b.provider.name)}" '
                     f'data-mib-per-s="{ab.mib_per_s:g}" data-egress-forward="{_money(ab)}" '
                     f'data-egress-back="{_money(ba)}"{_measured_attrs(forward, "forward", now)}'
                     f'{_measured_attrs(back, "back", now)}>'
                     f'<line x1="{a.x:.1f}" y1="{a.y:.1f}" x2="{b.x:.1f}" y2="{b.y:.1f}"/>'
                     f'<text x="{mx:.1f}" y="{my:.1f}" text-anchor="middle">{escape(label)}</text>'
                     + "".join(f'<text class="measured" x="{mx:.1f}" y="{my + 14 * (i + 1):.1f}" '
                               f'text-anchor="middle">measured {escape(text)}</text>' for i, text in enumerate(seen))
                     + "</g>")
    for spot in spots:
        inside = configured(spot.provider, spot.provider, settings)
        kind = "on-prem" if spot.provider.on_prem else "cloud"
        own = measured.get((spot.provider.name, spot.provider.name))
        parts.append(f'<g class="provider {kind}" data-provider="{escape(spot.provider.name)}" '
                     f'data-kind="{escape(spot.provider.kind)}" data-sites="{len(spot.sites)}" '
                     f'data-internal-mib-per-s="{inside.mib_per_s:g}"{_measured_attrs(own, "internal", now)}>')
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
                     f"{inside.mib_per_s:g} MiB/s inside</text>"
                     + (f'<text class="note measured" x="{spot.x:.1f}" y="{spot.y + 90:.1f}" text-anchor="middle">'
                        f"measured {escape(_measured_text(own, now))}</text>" if own is not None else "")
                     + "</g>")
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
