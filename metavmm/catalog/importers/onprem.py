"""On-prem price tables: the prices a centre states itself, from the federation file or a price file.

A price file has the federation file's ``prices:`` section only (same schema, same located errors)::

    prices:
      - provider: nchc-openstack
        region: taichung
        currency: TWD
        effective_date: 2026-01-01
        source: "NCHC cost model 2026"
        items:
          - {flavor: m1.4c32g, vcpus: 4, ram_gib: 32, amount: "6.68"}
          - {flavor: gpu.h100, vcpus: 16, ram_gib: 192, gpu: "H100:1", amount: "192"}
"""

from __future__ import annotations

from decimal import Decimal

import yaml

from metavmm.broker.config import PriceFile, PriceTable, parse_yaml_model
from metavmm.catalog.importers.base import (
    COMPONENT_UNITS,
    ImportResult,
    PriceFileError,
    PriceRecord,
    Shape,
    check_records,
    normalise_arch,
)
from metavmm.errors import ConfigError


def table_records(table: PriceTable, kind: str = "onprem", lines: list[int] | None = None,
                  source: str | None = None) -> list[PriceRecord]:
    """The records of one validated price table (shapes included, when the items state them)."""
    out = []
    for i, item in enumerate(table.items):
        model, count = item.gpu_model_count()
        shape = None
        if item.vcpus is not None and item.ram_gib is not None:
            ram_mib = int((item.ram_gib * 1024).to_integral_value())
            shape = Shape(item.vcpus, ram_mib, model, count, normalise_arch(item.arch))
        where = f"{source}:{lines[i]}" if source and lines and i < len(lines) else f"{table.source}: items[{i}]"
        component = item.unit in COMPONENT_UNITS
        out.append(PriceRecord(
            provider_kind=kind, region=table.region, flavor=item.flavor, amount=Decimal(item.amount),
            currency=table.currency, source=table.source, effective_date=table.effective_date, unit=item.unit,
            os=item.os, shape=shape, family=item.flavor if component else None,
            gpu_model=model if item.unit == "gpu-hour" else None, provider=table.provider, where=where,
        ))
    return out


def parse(text: str, source: str, provider: str | None = None, kind: str = "onprem") -> ImportResult:
    """Parse an on-prem price file; with ``provider``, only that provider's tables are taken."""
    try:
        doc = parse_yaml_model(text, source, PriceFile)
    except ConfigError as exc:
        raise PriceFileError(str(exc).splitlines()) from None
    tables = [t if provider is None or t.provider == provider else None for t in doc.prices]
    return ImportResult(records=check_records(_records(tables, text, source, kind)))


def check_tables(tables: list[PriceTable], text: str, source: str) -> None:
    """Check the federation file's own price tables as a price file is checked (unit confusion
    included); raise ConfigError with each problem's line."""
    try:
        check_records(_records(list(tables), text, source, "onprem"))
    except PriceFileError as exc:
        raise ConfigError("\n".join(exc.problems)) from None


def _records(tables: list[PriceTable | None], text: str, source: str, kind: str) -> list[PriceRecord]:
    lines = _item_lines(text)
    return [rec for i, table in enumerate(tables) if table is not None
            for rec in table_records(table, kind, lines.get(i), source)]


def _item_lines(text: str) -> dict[int, list[int]]:
    """Line of each item of each table, from the YAML node tree (for error messages)."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    out: dict[int, list[int]] = {}
    prices = next((v for k, v in root.value if k.value == "prices"), None) if root is not None else None
    for t, table in enumerate(getattr(prices, "value", [])):
        items = next((v for k, v in table.value if k.value == "items"), None)
        out[t] = [node.start_mark.line + 1 for node in getattr(items, "value", [])]
    return out
