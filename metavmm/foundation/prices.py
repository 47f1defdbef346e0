"""Prices as values: the one unit vocabulary, the shape a price is for, a validated record, and the checks
every price passes, wherever it comes from (the federation file's own tables, a price file, a provider API).

They sit in the foundation because the federation file is checked with them (``metavmm config check``
refuses a price the scheduler could not use) and the catalog's importers and the scheduler speak the same
units: a price row written by one is read by the other without translation.
"""

from __future__ import annotations

import enum
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import yaml

from metavmm.foundation.currencies import normalise_currency
from metavmm.foundation.errors import ConfigError, ValidationError

if TYPE_CHECKING:  # the federation file's models are built on these values, not the other way round
    from metavmm.foundation.config import PriceTable

MAX_ERRORS = 20
# A monthly price is ~730 times the hourly one. An hourly price per vCPU this many times the median
# of its file is almost surely a monthly (or yearly) figure labelled hourly.
UNIT_CONFUSION_FACTOR = 100


class PriceUnit(enum.StrEnum):
    HOUR = "hour"  # one instance of the flavor for one hour
    VCPU_HOUR = "vcpu-hour"  # component prices, composed into a shape by the comparison
    GIB_HOUR = "gib-hour"  # RAM
    GPU_HOUR = "gpu-hour"
    GIB_MONTH = "gib-month"  # storage
    GIB_EGRESS = "gib-egress"  # network egress per GiB


COMPONENT_UNITS = frozenset({PriceUnit.VCPU_HOUR, PriceUnit.GIB_HOUR, PriceUnit.GPU_HOUR})


def normalise_arch(arch: str | None) -> str | None:
    """One spelling per architecture: ``arm64``/``aarch64`` -> aarch64, ``x86``/``amd64`` -> x86_64."""
    if not arch:
        return None
    low = arch.strip().lower()
    if low in ("arm64", "aarch64", "arm"):
        return "aarch64"
    if low in ("x86", "x86_64", "amd64", "x64", "64-bit"):
        return "x86_64"
    return low


@dataclass(frozen=True, slots=True)
class Shape:
    """What a flavor gives: vCPUs, RAM in MiB, GPUs (model and count) and CPU architecture."""

    vcpus: int
    ram_mib: int
    gpu_model: str | None = None
    gpu_count: int = 0
    arch: str | None = None

    @property
    def ram_gib(self) -> Decimal:
        return Decimal(self.ram_mib) / 1024

    def describe(self) -> str:
        gib = self.ram_gib.normalize()
        text = f"{self.vcpus} vCPU / {gib:f} GiB"
        if self.gpu_count:
            text += f" / {self.gpu_count}x {self.gpu_model}"
        if self.arch:
            text += f" ({self.arch})"
        return text


@dataclass(frozen=True, slots=True)
class PriceRecord:
    """One validated price, ready for the catalog's ``price`` table."""

    provider_kind: str
    region: str
    flavor: str
    amount: Decimal
    currency: str
    source: str
    effective_date: date
    unit: str = PriceUnit.HOUR
    os: str = "linux"
    shape: Shape | None = None
    family: str | None = None
    gpu_model: str | None = None  # for gpu-hour component prices
    provider: str | None = None  # the configured provider, when the source names it (on-prem tables)
    where: str = ""  # file:line, or file plus a key path / SKU id: the stored source_ref
    path: tuple[str | int, ...] = ()  # JSON path of the price, turned into a line only for errors


class PriceFileError(ValidationError):
    """A price source was rejected; every problem is listed with its place (file:line: reason)."""

    title = "Invalid price file"

    def __init__(self, problems: Sequence[str]) -> None:
        shown = list(problems[:MAX_ERRORS])
        more = len(problems) - len(shown)
        text = "\n".join(shown) + (f"\n... and {more} more problems" if more > 0 else "")
        super().__init__(f"price file rejected, nothing imported:\n{text}")
        self.problems = list(problems)


def parse_amount(value: Any) -> Decimal:
    """A price amount from JSON/YAML (number or numeric string); ValueError with the reason."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"amount must be a number, got {value!r}")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"amount must be a number, got {value!r}") from None
    if not amount.is_finite():
        raise ValueError(f"amount must be finite, got {value!r}")
    if amount < 0:
        raise ValueError(f"negative price {value!r}")
    return amount


def check_records(records: Iterable[PriceRecord], problems: list[str] | None = None,
                  locate: Callable[[PriceRecord], str] | None = None) -> list[PriceRecord]:
    """Validate records as a whole; raise PriceFileError listing every problem (nothing is stored).

    ``locate`` turns a record into ``file:line`` for the message (JSON importers pass a
    :class:`JsonPlace`); by default the record's ``where`` is used.
    """
    problems = list(problems or [])
    where = locate or (lambda rec: rec.where or rec.source)
    out: list[PriceRecord] = []
    for rec in records:
        reasons = _record_problems(rec)
        if reasons:
            problems.extend(f"{where(rec)}: {r}" for r in reasons)
        else:
            out.append(rec)
    problems.extend(_unit_confusion(out, where))
    if problems:
        raise PriceFileError(problems)
    return out


def _record_problems(rec: PriceRecord) -> list[str]:
    reasons = []
    if not rec.region:
        reasons.append("missing region")
    if not rec.flavor:
        reasons.append("missing flavor / instance type")
    if not rec.unit:
        reasons.append("missing unit")
    elif rec.unit not in PriceUnit.__members__.values():
        reasons.append(f"unknown unit {rec.unit!r} (expected one of {', '.join(PriceUnit)})")
    if not isinstance(rec.amount, Decimal) or not rec.amount.is_finite() or rec.amount < 0:
        reasons.append(f"invalid amount {rec.amount!r}")
    try:
        normalise_currency(rec.currency or "")
    except ValueError as exc:
        reasons.append(str(exc))
    if rec.shape is not None:
        if rec.unit != PriceUnit.HOUR:
            reasons.append(f"a priced shape ({rec.shape.describe()}) must be priced per hour, not per {rec.unit}")
        if rec.shape.vcpus < 1 or rec.shape.ram_mib < 1:
            reasons.append(f"impossible shape {rec.shape.describe()}")
        if rec.shape.gpu_count and not rec.shape.gpu_model:
            reasons.append("GPU count without a GPU model")
    if rec.unit == PriceUnit.GPU_HOUR and not rec.gpu_model:
        reasons.append("a gpu-hour price needs the GPU model")
    return reasons


def _unit_confusion(records: list[PriceRecord], where: Callable[[PriceRecord], str]) -> list[str]:
    """Hourly prices per vCPU far above the rest of their file: a monthly figure labelled hourly."""
    problems = []
    by_currency: dict[str, list[tuple[Decimal, PriceRecord]]] = {}
    for rec in records:
        if rec.shape is not None and rec.unit == PriceUnit.HOUR and rec.amount > 0:
            units = rec.shape.vcpus + 8 * rec.shape.gpu_count  # a GPU costs about as much as many cores
            by_currency.setdefault(rec.currency, []).append((rec.amount / units, rec))
    for rows in by_currency.values():
        if len(rows) < 3:
            continue
        median = statistics.median(r for r, _ in rows)
        for rate, rec in rows:
            if median > 0 and rate > median * UNIT_CONFUSION_FACTOR:
                factor = math.floor(rate / median)
                problems.append(
                    f"{where(rec)}: {rec.flavor} costs {rec.amount} {rec.currency} per hour, "
                    f"{factor}x the file's median per vCPU: a monthly price labelled hourly? "
                    f"(divide by 730 or set the right unit)")
    return problems


# --- the federation file's own price tables ---------------------------------------------------------


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


def check_tables(tables: list[PriceTable], text: str, source: str) -> None:
    """Check the federation file's own price tables as a price file is checked (unit confusion
    included); raise ConfigError with each problem's line."""
    try:
        check_records(price_records(list(tables), text, source, "onprem"))
    except PriceFileError as exc:
        raise ConfigError("\n".join(exc.problems)) from None


def price_records(tables: list[PriceTable | None], text: str, source: str, kind: str) -> list[PriceRecord]:
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
