"""A bar chart of a comparison (SVG or PNG) an admin can put in a report.

One horizontal bar per provider and region, cheapest at the top, on-prem clouds in one colour and
public clouds in another, each labelled with its flavor and price; the title states the request,
the currency and the rate table's date. matplotlib is an optional extra (``metavmm[charts]``).
"""

from __future__ import annotations

import io

from metavmm.foundation.errors import UnsupportedOperation
from metavmm.scheduler.pricing.compare import Comparison

FORMATS = {"svg": "image/svg+xml", "png": "image/png"}
INSTALL_HINT = "charts need matplotlib: pip install 'metavmm[charts]'"


def render_chart(comparison: Comparison, fmt: str = "svg", top: int = 20) -> bytes:
    """The chart as SVG or PNG bytes. Raises UnsupportedOperation when matplotlib is missing."""
    if fmt not in FORMATS:
        raise UnsupportedOperation(f"chart format {fmt!r}: use svg or png")
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        raise UnsupportedOperation(INSTALL_HINT) from None
    quotes = comparison.quotes[:top]
    per = f" per {comparison.request.gpu_count} GPU" if comparison.request.gpu_count else ""
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.42 * max(len(quotes), 1)))
    try:
        labels = [f"{q.provider} / {q.region}\n{q.flavor}" for q in quotes]
        values = [float(q.rank_price) for q in quotes]
        colours = ["#2b8a3e" if q.on_prem else "#1c5d99" for q in quotes]
        bars = ax.barh(range(len(quotes)), values, color=colours)
        ax.set_yticks(range(len(quotes)), labels, fontsize=8)
        ax.invert_yaxis()
        for bar, q in zip(bars, quotes, strict=True):
            mark = " (stale)" if q.stale else ""
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {q.rank_price:.2f}{mark}",
                    va="center", fontsize=8)
        ax.set_xlabel(f"{comparison.currency} per hour{per}")
        rates = f", rates of {comparison.rates.date}" if comparison.rates.date else ""
        ax.set_title(f"{comparison.request.describe()}: {comparison.currency}{rates}", fontsize=10)
        ax.margins(x=0.15)
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color="#2b8a3e", label="on-prem"), Patch(color="#1c5d99", label="public cloud")],
                  loc="lower right", fontsize=8)
        if not quotes:
            ax.text(0.5, 0.5, "no provider offers this shape", ha="center", transform=ax.transAxes)
        fig.tight_layout()
        out = io.BytesIO()
        fig.savefig(out, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
        return out.getvalue()
    finally:
        plt.close(fig)
