"""What every price importer returns, and the checks every price passes before it is stored.

An importer turns one source (an on-prem price table, Libcloud's pricing.json, an AWS Price List
response, an Azure Retail Prices page, a GCP Cloud Billing Catalog page) into :class:`PriceRecord`
values. Each record remembers where it was read (``where``: ``file:line`` or ``file:item``), so
a bad price is reported at its place. Importing is all or nothing: :func:`check_records` collects
every problem and raises one :class:`PriceFileError` listing them, and nothing is stored.
"""

from __future__ import annotations

import enum
import json
import math
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from metavmm.catalog.currencies import normalise_currency
from metavmm.errors import ValidationError

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


@dataclass
class ImportResult:
    """The records of one import and what was skipped on purpose (spot, reserved, zero...)."""

    records: list[PriceRecord] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


class SkipPrice(Exception):
    """An entry deliberately not imported (spot, reserved, another product): counted by reason."""


JsonPath = tuple[str | int, ...]


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


# --- JSON positions -------------------------------------------------------------------------------

_WS = re.compile(r"[ \t\n\r]*")


def json_line(text: str, path: Sequence[str | int]) -> int | None:
    """The line where the value at ``path`` starts in the JSON ``text`` (None if not found).

    Only used on the error path: the fast path parses with :func:`json.loads`, which keeps no
    positions; here keys are scanned and skipped values are decoded by the C decoder.
    """
    decoder = json.JSONDecoder()
    scan = json.decoder.scanstring  # type: ignore[attr-defined]
    i = _WS.match(text, 0).end()  # type: ignore[union-attr]
    try:
        for part in path:
            if text[i] == "{" and isinstance(part, str):
                i += 1
                while True:
                    i = _WS.match(text, i).end()  # type: ignore[union-attr]
                    if text[i] == "}":
                        return None
                    key, i = scan(text, i + 1)
                    i = _WS.match(text, i).end() + 1  # type: ignore[union-attr]  # past ':'
                    i = _WS.match(text, i).end()  # type: ignore[union-attr]
                    if key == part:
                        break
                    i = _WS.match(text, decoder.raw_decode(text, i)[1]).end()  # type: ignore[union-attr]
                    if text[i] == ",":
                        i += 1
            elif text[i] == "[" and isinstance(part, int):
                i += 1
                for _ in range(part):
                    i = _WS.match(text, i).end()  # type: ignore[union-attr]
                    i = _WS.match(text, decoder.raw_decode(text, i)[1]).end()  # type: ignore[union-attr]
                    if text[i] != ",":
                        return None
                    i += 1
                i = _WS.match(text, i).end()  # type: ignore[union-attr]
                if text[i] == "]":
                    return None
            else:
                return None
    except (IndexError, ValueError):
        return None
    return text.count("\n", 0, i) + 1


def load_json(text: str, source: str) -> Any:
    """Parse JSON, or raise PriceFileError naming the line and column of the syntax error."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PriceFileError([f"{source}:{exc.lineno}: not valid JSON: {exc.msg} (column {exc.colno})"]) from None


class JsonPlace:
    """Turns a JSON path into ``file:line`` lazily, so the fast path never scans for positions."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source

    def __call__(self, rec: PriceRecord) -> str:
        return self.at(*rec.path) if rec.path else rec.where or self.source

    def at(self, *path: str | int) -> str:
        line = json_line(self.text, path)
        return f"{self.source}:{line}" if line else f"{self.source}: at {'/'.join(map(str, path))}"


def paged_items(data: Any, source: str, key: str, what: str) -> list[tuple[JsonPath, Any]]:
    """The entries of an API answer saved as one page or as a JSON list of pages, with their paths."""
    pages = data if isinstance(data, list) else [data]
    items: list[tuple[JsonPath, Any]] = []
    for p, page in enumerate(pages):
        if not isinstance(page, dict) or not isinstance(page.get(key), list):
            raise PriceFileError([f"{source}:1: not {what} (no {key} array)"])
        prefix: JsonPath = (p,) if isinstance(data, list) else ()
        items.extend(((*prefix, key, i), item) for i, item in enumerate(page[key]))
    return items


def convert_items(items: Iterable[tuple[JsonPath, Any]], convert: Callable[[JsonPath, Any], Iterable[PriceRecord]],
                  source: str, place: JsonPlace | None = None,
                  extra: Callable[[list[PriceRecord]], Iterable[PriceRecord]] | None = None) -> ImportResult:
    """Run ``convert`` on every entry, count skips, collect every problem at its place, then check all.

    ``extra`` derives more records from the converted ones (GCP composes machine types from parts).
    """
    result = ImportResult()
    problems: list[str] = []
    records: list[PriceRecord] = []
    for path, item in items:
        try:
            records.extend(convert(path, item))
        except SkipPrice as skip:
            result.skip(str(skip))
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            problems.append(f"{place.at(*path) if place else source + ' ' + '/'.join(map(str, path))}: {exc}")
    if extra is not None:
        records.extend(extra(records))
    locate = place if place is not None else (lambda rec: rec.where or rec.source)
    return ImportResult(records=check_records(records, problems, locate=locate), skipped=result.skipped)
