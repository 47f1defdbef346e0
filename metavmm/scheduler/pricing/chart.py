"""A bar chart of a comparison (SVG or PNG) an admin can put in a report.

One horizontal bar per provider and region, cheapest at the top, on-prem clouds in one colour and
public clouds in another, each labelled with its flavor and price; the title states the request,
the currency and the rate table's date. matplotlib is an optional extra (``metavmm[charts]``).
"""

from __future__ import annotations

import io
import math
from decimal import Decimal

from metavmm.foundation.errors import UnsupportedOperation
from metavmm.scheduler.pricing.compare import Comparison

FORMATS = {"svg": "image/svg+xml", "png": "image/png"}
INSTALL_HINT = "charts need matplotlib: pip install 'metavmm[charts]'"
ON_PREM, PUBLIC = "#2b8a3e", "#1c5d99"


def value_labels(values: list[Decimal]) -> list[str]:
    """Bar labels as precise as the values need: at least 2 decimals and 3 significant digits, more until
    two different prices never print alike (0.0116 and 0.0124 USD/h are not both "0.01"); at most 6."""
    nonzero = [abs(v) for v in values if v]
    places = max(2, 2 - math.floor(math.log10(min(nonzero)))) if nonzero else 2
    places = min(places, 6)
    while places < 6:
        labels = {v.quantize(Decimal(1).scaleb(-6)): f"{v:.{places}f}" for v in values}
        if len(set(labels.values())) == len(labels):
            break
        places += 1
    return [f"{v:.{places}f}" for v in values]


def axis_label(comparison: Comparison) -> str:
    """What a bar measures: the request's price per hour, for GPU requests the GPUs it asks for (a larger
    VM's price shared per GPU), never a count with a unit in the singular ("per 4 GPU")."""
    req = comparison.request
    if req.gpu_count:
        return f"{comparison.currency} per hour for {req.gpu_count}x {req.gpu_model}"
    return f"{comparison.currency} per hour"


def render_chart(comparison: Comparison, fmt: str = "svg", top: int = 20) -> bytes:
    """The chart as SVG or PNG bytes. Raises UnsupportedOperation when matplotlib is missing.

    The SVG keeps its words as text (not glyph outlines) and names its parts (``bar-N``, ``value-N``,
    ``legend``, ``plot-area``), so it can be searched, read by a screen reader and checked by a test. The
    legend sits outside the plot, where it cannot cover the last bar's price.
    """
    if fmt not in FORMATS:
        raise UnsupportedOperation(f"chart format {fmt!r}: use svg or png")
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        raise UnsupportedOperation(INSTALL_HINT) from None
    quotes = comparison.quotes[:top]
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "metavmm"}):
        fig, ax = plt.subplots(figsize=(9, 1.9 + 0.42 * max(len(quotes), 1)), layout="constrained")
        try:
            labels = [f"{q.provider} / {q.region}\n{q.flavor}" for q in quotes]
            values = [float(q.rank_price) for q in quotes]
            colours = [ON_PREM if q.on_prem else PUBLIC for q in quotes]
            bars = ax.barh(range(len(quotes)), values, color=colours)
            ax.set_yticks(range(len(quotes)), labels, fontsize=8)
            ax.invert_yaxis()
            ax.patch.set_gid("plot-area")
            for i, (bar, q, shown) in enumerate(zip(bars, quotes, value_labels([q.rank_price for q in quotes]),
                                                    strict=True)):
                bar.set_gid(f"bar-{i}")
                mark = " (stale)" if q.stale else ""
                text = ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {shown}{mark}",
                               va="center", fontsize=8)
                text.set_gid(f"value-{i}")
            ax.set_xlabel(axis_label(comparison))
            rates = f", rates of {comparison.rates.date}" if comparison.rates.date else ""
            ax.set_title(f"{comparison.request.describe()}: {comparison.currency}{rates}", fontsize=10)
            ax.margins(x=0.18)
            legend = fig.legend(handles=[Patch(color=ON_PREM, label="on-prem"),
                                         Patch(color=PUBLIC, label="public cloud")],
                                loc="outside lower center", ncols=2, fontsize=8, frameon=False)
            legend.set_gid("legend")
            if not quotes:
                ax.text(0.5, 0.5, "no provider offers this shape", ha="center", transform=ax.transAxes)
            out = io.BytesIO()
            fig.savefig(out, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
            return out.getvalue()
        finally:
            plt.close(fig)
