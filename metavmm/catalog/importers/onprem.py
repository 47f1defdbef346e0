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

from collections.abc import Collection

from metavmm.catalog.importers.base import ImportResult
from metavmm.foundation.config import PriceFile, parse_yaml_model
from metavmm.foundation.errors import ConfigError
from metavmm.foundation.prices import PriceFileError, check_records, price_records, unusable


def parse(text: str, source: str, provider: str | None = None, kind: str = "onprem",
          flavorless: Collection[str] = ()) -> ImportResult:
    """Parse an on-prem price file; with ``provider``, only that provider's tables are taken.

    A price the scheduler could not use is refused as in the federation file (``flavorless``: the
    providers that list no flavors, so their hourly prices must state their shapes)."""
    try:
        doc = parse_yaml_model(text, source, PriceFile)
    except ConfigError as exc:
        raise PriceFileError(str(exc).splitlines()) from None
    tables = [t if provider is None or t.provider == provider else None for t in doc.prices]
    records = check_records(price_records(tables, text, source, kind))
    problems = unusable(records, flavorless)
    if problems:
        raise PriceFileError(problems)
    return ImportResult(records=records)
