"""The comparison chart read back from its SVG: every price legible and distinct, the axis names what a bar
measures, and the legend sits outside the plot where it cannot cover the last bar's price."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import date
from decimal import Decimal

from metavmm.foundation.prices import Shape
from metavmm.scheduler.pricing import PriceBook, PricePoint, RateTable, ShapeRequest, compare
from metavmm.scheduler.pricing.chart import render_chart, value_labels

SVG = "{http://www.w3.org/2000/svg}"
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _point(provider: str, amount: str, on_prem: bool = False, gpus: int = 0) -> PricePoint:
    return PricePoint(provider=provider, provider_kind="x", on_prem=on_prem, region="r", flavor=f"f-{provider}",
                      os="linux", unit="hour", amount=Decimal(amount), currency="USD",
                      effective_date=date(2026, 11, 1), source="test",
                      shape=Shape(8, 65536, "H100" if gpus else None, gpus))


def _group(root: ET.Element, gid: str) -> ET.Element:
    found = root.find(f".//{SVG}g[@id='{gid}']")
    assert found is not None, f"no <g id={gid!r}> in the chart"
    return found


def _ys(group: ET.Element) -> tuple[float, float]:
    """The vertical extent of a group: its paths' points and its texts' baselines."""
    ys: list[float] = []
    for path in group.iter(f"{SVG}path"):
        ys += [float(v) for v in NUMBER.findall(path.get("d", ""))[1::2]]
    ys += [float(t.get("y")) for t in group.iter(f"{SVG}text") if t.get("y")]  # type: ignore[arg-type]
    return min(ys), max(ys)


def _texts(root: ET.Element) -> list[str]:
    return ["".join(t.itertext()).strip() for t in root.iter(f"{SVG}text")]


def test_labels_keep_prices_apart() -> None:
    assert value_labels([Decimal("0.0116"), Decimal("0.0124")]) == ["0.0116", "0.0124"]
    assert value_labels([Decimal("192"), Decimal("213.37")]) == ["192.00", "213.37"]
    assert value_labels([Decimal("6.681"), Decimal("6.684")]) == ["6.681", "6.684"]  # 2 decimals would merge them
    assert value_labels([Decimal("5"), Decimal("5")]) == ["5.00", "5.00"]  # equal prices may read alike


def test_chart_data_read_from_the_svg() -> None:
    book = PriceBook([_point("a", "0.0116", on_prem=True), _point("b", "0.0124"), _point("c", "0.0131")])
    result = compare(book, ShapeRequest.parse(2, 4), RateTable("USD"), today=date(2026, 11, 2))
    root = ET.fromstring(render_chart(result, "svg"))
    values = ["".join(_group(root, f"value-{i}").itertext()).strip() for i in range(3)]
    assert values == ["0.0116", "0.0124", "0.0131"]  # not "0.01" three times
    legend = _group(root, "legend")
    assert ["".join(t.itertext()) for t in legend.iter(f"{SVG}text")] == ["on-prem", "public cloud"]
    _, bottom = _ys(_group(root, "plot-area"))
    legend_top, _ = _ys(legend)
    assert legend_top > bottom  # below the plot: the last (dearest, longest) bar's price stays visible
    width = float(NUMBER.match(root.get("width", "")).group())  # type: ignore[union-attr]
    last = _group(root, "value-2").find(f"{SVG}text")
    assert last is not None and float(last.get("x", "0")) < width
    assert "USD per hour" in _texts(root)


def test_gpu_axis_names_the_gpus_a_bar_costs() -> None:
    book = PriceBook([_point("a", "40", gpus=8), _point("b", "9", gpus=4)])
    result = compare(book, ShapeRequest.parse(gpu="H100:4"), RateTable("USD"), today=date(2026, 11, 2))
    root = ET.fromstring(render_chart(result, "svg"))
    texts = _texts(root)
    assert "USD per hour for 4x H100" in texts and not any("per 4 GPU" in t for t in texts)
    assert ["".join(_group(root, f"value-{i}").itertext()).strip() for i in range(2)] == ["9.00", "20.00"]
