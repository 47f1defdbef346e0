"""Server-rendered SVG charts: horizontal bars, the numbers kept in ``data-*`` attributes.

Our own few lines rather than a chart library: the page needs no script to draw, a test reads the
series from the DOM exactly (``data-value``), and nothing is fetched from elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from markupsafe import Markup, escape

BAR_H = 18
GAP = 6
LABEL_W = 220
WIDTH = 720


@dataclass(frozen=True)
class Bar:
    label: str
    value: float | Decimal
    total: float | Decimal | None = None  # with a total: the bar is value of total (used vs free)


def bar_chart(title: str, bars: list[Bar], *, unit: str = "", chart_id: str = "chart") -> Markup:
    """A labelled horizontal bar chart; with totals, the filled part is ``value`` and the rest is free."""
    top = max([float(b.total if b.total is not None else b.value) for b in bars] or [0.0]) or 1.0
    span = WIDTH - LABEL_W - 110
    height = len(bars) * (BAR_H + GAP) + GAP
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{escape(chart_id)}" role="img" '
             f'width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" data-unit="{escape(unit)}" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>']
    for i, b in enumerate(bars):
        y = GAP + i * (BAR_H + GAP)
        value = float(b.value)
        w = max(0.0, value / top * span)
        total_attr = f' data-total="{b.total}"' if b.total is not None else ""
        parts.append(f'<g class="bar" data-label="{escape(b.label)}" data-value="{b.value}"{total_attr}>')
        parts.append(f'<text x="{LABEL_W - 6}" y="{y + BAR_H - 5}" text-anchor="end">{escape(b.label[:34])}</text>')
        if b.total is not None:
            tw = max(0.0, float(b.total) / top * span)
            parts.append(f'<rect class="free" x="{LABEL_W}" y="{y}" width="{tw:.1f}" height="{BAR_H}"/>')
        parts.append(f'<rect class="used" x="{LABEL_W}" y="{y}" width="{w:.1f}" height="{BAR_H}"/>')
        shown = f"{b.value} / {b.total}" if b.total is not None else f"{b.value}"
        parts.append(f'<text x="{LABEL_W + span + 6}" y="{y + BAR_H - 5}">{escape(shown)} {escape(unit)}</text></g>')
    parts.append("</svg>")
    return Markup("".join(parts))
