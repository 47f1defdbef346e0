"""Prices as values: the one unit vocabulary, the shape a price is for, a validated record, and the checks
every price passes, wherever it comes from (the federation file's own tables, a price file, a provider API).

They sit in the foundation because the federation file is checked with them (``metavmm config check``
refuses a price the scheduler could not use) and the catalog's importers and the scheduler speak the same
units: a price row written by one is read by the other without translation.
"""

from __future__ import annotations

import enum
import functools
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

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
    """The one unit vocabulary: the federation file, every importer, the catalog and the scheduler use it."""

    HOUR = "hour"  # one instance of the flavor for one hour
    VCPU_HOUR = "vcpu-hour"  # component prices of a family (flavor: the family's name), composed into a shape
    GIB_HOUR = "gib-hour"  # RAM, per GiB
    GPU_HOUR = "gpu-hour"  # per GPU of one model, added to a composed shape that asks for GPUs
    GIB_MONTH = "gib-month"  # storage
    GIB_EGRESS = "gib-egress"  # network egress per GiB


COMPONENT_UNITS = frozenset({PriceUnit.VCPU_HOUR, PriceUnit.GIB_HOUR, PriceUnit.GPU_HOUR})
COMPUTE_UNITS = frozenset({PriceUnit.HOUR, *COMPONENT_UNITS})
"""What a compute shape is priced from: an instance-hour price, or a family's component prices."""
SIDE_UNITS = frozenset({PriceUnit.GIB_MONTH, PriceUnit.GIB_EGRESS})
"""Priced beside a shape: its disk (per GiB-month) and its egress (per GiB)."""


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


# Words around a GPU model that name its vendor, product line, memory or form factor, not the model:
# "NVIDIA H100 80GB HBM3", "nvidia-h100-80gb", "Tesla V100-SXM2-16GB" and "h100" are one model, H100.
_GPU_NOISE = re.compile(r"^(NVIDIA|AMD|INTEL|TESLA|GPU|GPUS|\d+GB|\d+G|HBM\d*E?|SXM\d*|PCIE|NVL|NVLINK|GEN\d+)$")


@functools.lru_cache(maxsize=4096)
def gpu_model_key(model: str | None) -> str | None:
    """One spelling per GPU model, the catalog's and the scheduler's: upper case, without vendor, memory
    and form-factor words (``nvidia-h100-80gb`` -> ``H100``, ``Tesla T4`` -> ``T4``, ``RTX A6000`` ->
    ``RTX A6000``). Requests, hosts, flavors and prices are compared through it, so a user's "h100" finds
    a provider's "NVIDIA H100 80GB". Memory variants of one model (A100 40GB and 80GB) become one model."""
    if not model or not model.strip():
        return None
    words = [w for w in re.split(r"[\s_\-/]+", model.strip().upper()) if w]
    kept = [w for w in words if not _GPU_NOISE.match(w)]
    return " ".join(kept or words)


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
        parts = [f"{self.vcpus} vCPU", f"{gib:f} GiB"] if self.vcpus or self.ram_mib or not self.gpu_count else []
        if self.gpu_count:
            parts.append(f"{self.gpu_count}x {self.gpu_model}")
        text = " / ".join(parts)
        if self.arch:
            text += f" ({self.arch})"
        return text


def excess(shape: Shape, vcpus: int = 0, ram_gib: Decimal = Decimal(0), gpu_model: str | None = None,
           gpu_count: int = 0, arch: str | None = None) -> float | None:
    """How far ``shape`` is above a request (0: exact), or None when it does not hold it.

    Each requested dimension adds its relative excess (8 vCPU for 4 requested adds 1.0); a dimension
    left at 0 means "any". A request without GPUs never takes a GPU shape; an arch given must match.
    """
    shape_gib = shape.ram_mib / 1024
    if shape.vcpus < vcpus or shape_gib < float(ram_gib):
        return None
    if arch and shape.arch and shape.arch != arch:
        return None
    if gpu_count:
        if shape.gpu_count < gpu_count or gpu_model_key(shape.gpu_model) != gpu_model_key(gpu_model):
            return None
    elif shape.gpu_count:
        return None
    d = 0.0
    if vcpus:
        d += (shape.vcpus - vcpus) / vcpus
    if ram_gib:
        d += (shape_gib - float(ram_gib)) / float(ram_gib)
    if gpu_count:
        d += (shape.gpu_count - gpu_count) / gpu_count
    return round(d, 6)


# --- composing a shape from component prices ---------------------------------------------------------


class PricePart(Protocol):
    """A price that may be a component: a :class:`PriceRecord`, the comparison's price point, a snapshot row."""

    @property
    def unit(self) -> str: ...

    @property
    def family(self) -> str | None: ...

    @property
    def gpu_model(self) -> str | None: ...

    @property
    def effective_date(self) -> date | None: ...


P = TypeVar("P", bound=PricePart)


@dataclass(frozen=True, slots=True)
class Components(Generic[P]):
    """What shapes are composed from at one provider and region: each family's vcpu-hour and gib-hour
    prices, and per GPU model a gpu-hour price that a composed shape asking for GPUs adds."""

    families: Mapping[str, tuple[P, P]] = field(default_factory=dict)  # family -> (vcpu-hour, gib-hour)
    gpus: Mapping[str, P] = field(default_factory=dict)  # GPU model (gpu_model_key) -> gpu-hour

    def gpu(self, model: str | None) -> P | None:
        return self.gpus.get(gpu_model_key(model) or "")


def components(parts: Iterable[P], shaped_families: Collection[str] = ()) -> Components[P]:
    """The component prices of one provider and region, as the comparison and the scheduler both read them.

    A family composes only with both a vcpu-hour and a gib-hour price, and only when it is not also sold
    as listed shapes (``shaped_families``: GCP's A3 comes as a3-highgpu-8g, never as a custom 4 vCPU
    machine). Of two prices for one part the newer counts (on a tie, the later one read).
    """
    parts_by_key: dict[tuple[str, str], P] = {}
    gpus: dict[str, P] = {}
    for p in parts:
        if p.unit == PriceUnit.GPU_HOUR and p.gpu_model:
            model = gpu_model_key(p.gpu_model) or ""
            if _newer(p, gpus.get(model)):
                gpus[model] = p
        elif p.unit in (PriceUnit.VCPU_HOUR, PriceUnit.GIB_HOUR) and p.family and p.family not in shaped_families \
                and _newer(p, parts_by_key.get((p.family, p.unit))):
            parts_by_key[(p.family, p.unit)] = p
    families = {fam: (core, parts_by_key[(fam, PriceUnit.GIB_HOUR)]) for (fam, unit), core in parts_by_key.items()
                if unit == PriceUnit.VCPU_HOUR and (fam, PriceUnit.GIB_HOUR) in parts_by_key}
    return Components(families, gpus)


def _newer(new: PricePart, old: PricePart | None) -> bool:
    return old is None or (new.effective_date or date.min) >= (old.effective_date or date.min)


def composed_amount(vcpu_hour: Decimal, gib_hour: Decimal, vcpus: int, ram_gib: Decimal,
                    gpu_hour: Decimal | None = None, gpu_count: int = 0) -> Decimal:
    """One hour of a composed shape: vCPUs x vcpu-hour + GiB x gib-hour (+ GPUs x gpu-hour)."""
    amount = vcpu_hour * vcpus + gib_hour * ram_gib
    if gpu_count:
        if gpu_hour is None:
            raise ValueError("a shape with GPUs needs a gpu-hour price")
        amount += gpu_hour * gpu_count
    return amount


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


def check_tables(tables: list[PriceTable], text: str, source: str, flavorless: Collection[str] = ()) -> None:
    """Check the federation file's own price tables as a price file is checked (unit confusion
    included), and refuse what the scheduler could not use (:func:`unusable`); raise ConfigError with
    each problem's line. ``flavorless``: the providers whose VMs take any shape and who list no flavors."""
    try:
        records = check_records(price_records(list(tables), text, source, "onprem"))
        problems = unusable(records, flavorless)
        if problems:
            raise PriceFileError(problems)
    except PriceFileError as exc:
        raise ConfigError("\n".join(exc.problems)) from None


def unusable(records: Sequence[PriceRecord], flavorless: Collection[str] = ()) -> list[str]:
    """On-prem prices the scheduler could not use, each with its place and why.

    The scheduler prices a VM from a flavor's hourly price or from a family's component prices, so it
    can use neither half of a family (a vcpu-hour without a gib-hour, or the reverse), a gpu-hour with no
    family to add it to, or an hourly price whose shape it cannot learn: a provider that lists no flavors
    (libvirt, vCenter) has none to take it from, so such a price must state ``vcpus`` and ``ram_gib``.
    """
    problems: list[str] = []
    groups: dict[tuple[str, str], list[PriceRecord]] = defaultdict(list)
    for rec in records:
        groups[(rec.provider or rec.provider_kind, rec.region)].append(rec)
    for (provider, region), recs in groups.items():
        at = f"{provider}/{region}"
        complete: set[tuple[str, str]] = set()
        for os_name in sorted({r.os for r in recs if r.unit != PriceUnit.GPU_HOUR}):
            found = components(r for r in recs if r.os == os_name)
            complete.update((os_name, fam) for fam in found.families)
        has_family = bool(complete)
        seen: dict[tuple[str, str, str, str, date], PriceRecord] = {}
        for rec in recs:
            unit = rec.unit
            if unit in (PriceUnit.VCPU_HOUR, PriceUnit.GIB_HOUR) and (rec.os, rec.family or "") not in complete:
                other = PriceUnit.GIB_HOUR if unit == PriceUnit.VCPU_HOUR else PriceUnit.VCPU_HOUR
                problems.append(f"{rec.where}: family {rec.family!r} has a {unit} price but no {other} price at "
                                f"{at} ({rec.os}): the scheduler composes a shape from both")
            elif unit == PriceUnit.GPU_HOUR and not has_family:
                problems.append(f"{rec.where}: a gpu-hour price ({rec.gpu_model}) is added to a family's vcpu-hour "
                                f"and gib-hour prices, and {at} has no such family")
            elif unit == PriceUnit.HOUR and rec.shape is None and rec.provider in flavorless:
                problems.append(f"{rec.where}: {rec.provider} lists no flavors, so the scheduler cannot tell what "
                                f"{rec.flavor!r} is: give its vcpus and ram_gib, or price by parts "
                                "(unit: vcpu-hour and gib-hour)")
            key = (rec.flavor, str(unit), rec.os, rec.gpu_model or "", rec.effective_date)
            if key in seen:
                problems.append(f"{rec.where}: {rec.flavor} ({unit}, {rec.os}) is priced twice at {at} for "
                                f"{rec.effective_date} (also {seen[key].where})")
            seen.setdefault(key, rec)
    return problems


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
