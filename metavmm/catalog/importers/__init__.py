"""Price importers: one module per source, one interface, validated records with their places.

Every importer reads text (a file the user points at, or an API answer saved or fetched) and
returns an :class:`~metavmm.catalog.importers.base.ImportResult` of checked
:class:`~metavmm.catalog.importers.base.PriceRecord` values, or raises
:class:`~metavmm.catalog.importers.base.PriceFileError` listing each problem as ``file:line: reason``.
Storing is separate (:func:`metavmm.catalog.prices.store_prices`), in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # loaded by the importers themselves: `metavmm prices --help` lists IMPORTERS without them
    from metavmm.catalog.importers.base import ImportResult
    from metavmm.catalog.importers.shapes import ShapeTable


@dataclass(frozen=True)
class ImportOptions:
    shapes: ShapeTable | None = None
    provider: str | None = None  # the configured provider the prices belong to
    provider_kind: str | None = None  # keep only this kind's prices (multi-provider files)
    flavorless: frozenset[str] = frozenset()  # on-prem: providers that list no flavors (libvirt, vCenter)


def _onprem(text: str, source: str, opts: ImportOptions) -> ImportResult:
    from metavmm.catalog.importers import onprem

    return onprem.parse(text, source, provider=opts.provider, flavorless=opts.flavorless)


def _libcloud(text: str, source: str, opts: ImportOptions) -> ImportResult:
    from metavmm.catalog.importers import libcloud

    return libcloud.parse(text, source, opts.shapes, kind=opts.provider_kind)


def _aws(text: str, source: str, opts: ImportOptions) -> ImportResult:
    from metavmm.catalog.importers import aws_pricelist

    return aws_pricelist.parse(text, source)


def _azure(text: str, source: str, opts: ImportOptions) -> ImportResult:
    from metavmm.catalog.importers import azure_retail

    return azure_retail.parse(text, source, opts.shapes)


def _gcp(text: str, source: str, opts: ImportOptions) -> ImportResult:
    from metavmm.catalog.importers import gcp_billing

    return gcp_billing.parse(text, source, opts.shapes)


IMPORTERS: dict[str, Callable[[str, str, ImportOptions], ImportResult]] = {
    "onprem": _onprem,
    "libcloud": _libcloud,
    "aws-pricelist": _aws,
    "azure-retail": _azure,
    "gcp-billing": _gcp,
}
# the provider kind each importer's prices belong to (None: named per record or per table)
IMPORTER_KINDS = {"onprem": None, "libcloud": None, "aws-pricelist": "aws", "azure-retail": "azure",
                  "gcp-billing": "gcp"}


def import_file(kind: str, path: str | Path, opts: ImportOptions | None = None) -> ImportResult:
    """Read and check one price file with the importer named ``kind``."""
    from metavmm.foundation.prices import PriceFileError

    if kind not in IMPORTERS:
        raise PriceFileError([f"unknown price source {kind!r}; expected one of {', '.join(IMPORTERS)}"])
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PriceFileError([f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}"]) from None
    return IMPORTERS[kind](text, str(path), opts or ImportOptions())
