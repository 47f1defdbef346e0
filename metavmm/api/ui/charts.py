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
    kind: str = "used"  # the filled part's CSS class (the price chart: on-prem or public)


def bar_chart(title: str, bars: list[Bar], *, unit: str = "", chart_id: str = "chart",
              legend: tuple[tuple[str, str], ...] = ()) -> Markup:
    """A labelled horizontal bar chart; with totals, the filled part is ``value`` and the rest is free.

    A ``legend`` ((CSS class, label) pairs) gets its own row above the bars, so it never covers one; a
    label too long for its column is cut on screen and kept whole in its ``<title>`` and ``data-label``.
    """
    top = max([float(b.total if b.total is not None else b.value) for b in bars] or [0.0]) or 1.0
    span = WIDTH - LABEL_W - 110
    head = BAR_H + GAP if legend else 0
    height = head + len(bars) * (BAR_H + GAP) + GAP
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{escape(chart_id)}" role="img" '
             f'width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" data-unit="{escape(unit)}" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>']
    if legend:
        parts.append(f'<g class="legend" data-top="{GAP}" data-bottom="{GAP + BAR_H}">')
        x = LABEL_W
        for kind, label in legend:
            parts.append(f'<g class="legend-item" data-kind="{escape(kind)}"><rect class="{escape(kind)}" x="{x}" '
                         f'y="{GAP}" width="{BAR_H}" height="{BAR_H}"/><text x="{x + BAR_H + 4}" '
                         f'y="{GAP + BAR_H - 5}">{escape(label)}</text></g>')
            x += BAR_H + 12 + 8 * len(label)
        parts.append("</g>")
    for i, b in enumerate(bars):
        y = head + GAP + i * (BAR_H + GAP)
        value = float(b.value)
        w = max(0.0, value / top * span)
        total_attr = f' data-total="{b.total}"' if b.total is not None else ""
        parts.append(f'<g class="bar" data-label="{escape(b.label)}" data-value="{b.value}"{total_attr} '
                     f'data-kind="{escape(b.kind)}" data-y="{y}">')
        shown_label = b.label if len(b.label) <= 34 else b.label[:33] + "…"
        parts.append(f'<text x="{LABEL_W - 6}" y="{y + BAR_H - 5}" text-anchor="end"><title>{escape(b.label)}</title>'
                     f'{escape(shown_label)}</text>')
        if b.total is not None:
            tw = max(0.0, float(b.total) / top * span)
            parts.append(f'<rect class="free" x="{LABEL_W}" y="{y}" width="{tw:.1f}" height="{BAR_H}"/>')
        parts.append(f'<rect class="{escape(b.kind)}" x="{LABEL_W}" y="{y}" width="{w:.1f}" height="{BAR_H}"/>')
        shown = f"{b.value} / {b.total}" if b.total is not None else f"{b.value}"
        parts.append(f'<text x="{LABEL_W + span + 6}" y="{y + BAR_H - 5}">{escape(shown)} {escape(unit)}</text></g>')
    parts.append("</svg>")
    return Markup("".join(parts))
