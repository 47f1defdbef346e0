"""Equivalent-shape matching and price comparison across every provider and region.

For a requested shape (vCPU, GiB, GPU model and count, arch) each provider and region offers its
best matching flavor: the one that satisfies the request with the least excess, cheapest on a tie.
Excess is measured per requested dimension, relative to the request (``distance`` 0 is an exact
match; 8 vCPU for 4 requested adds 1.0). Dimensions not requested (0) are "any". A request
without GPUs never matches a GPU flavor. Families priced by parts (vcpu-hour + gib-hour [+ gpu-hour],
e.g. GCP custom machines or an on-prem cost model) are composed to the exact request, exactly as the
scheduler prices an on-prem host (both use :mod:`metavmm.foundation.prices`).

Quotes are ranked by what the request costs: the instance-hour price, or for GPU requests the price
per GPU-hour times the GPUs requested (an 8-GPU VM's price divided by 8 for one GPU). Every quote
is normalised per instance-hour, vCPU-hour, GiB-hour and GPU-hour in one currency, carries its
original amount, currency, source and date, and is flagged stale when older than the configured age.
Beside it stand the region's cheapest disk (per GiB-month) and egress (per GiB) prices, where the
catalog has them (SkyPilot #1228: a placement's cost is more than its instance-hours).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date
from decimal import Decimal

from metavmm.foundation.errors import ValidationError
from metavmm.foundation.prices import (
    PriceUnit,
    Shape,
    components,
    composed_amount,
    excess,
    gpu_model_key,
    normalise_arch,
)
from metavmm.scheduler.pricing.book import ATTACHABLE_GPU_FAMILIES, PriceBook, PricePoint, PriceScope
from metavmm.scheduler.pricing.currency import Converter, RateTable, currency_code
from metavmm.scheduler.pricing.discounts import DatedFactor, Discounts


@dataclass(frozen=True)
class ShapeRequest:
    vcpus: int = 0
    ram_gib: Decimal = Decimal(0)
    gpu_model: str | None = None
    gpu_count: int = 0
    arch: str | None = None
    os: str = "linux"

    @classmethod
    def parse(cls, vcpus: int = 0, ram_gib: float | Decimal | str = 0, gpu: str | None = None,
              arch: str | None = None, os: str = "linux") -> ShapeRequest:
        """From CLI/REST values; ``gpu`` is ``MODEL[:COUNT]`` such as ``H100:1``."""
        model, count = None, 0
        if gpu:
            model, _, raw = gpu.partition(":")
            if not model or (raw and not raw.isdigit()) or (raw and int(raw) < 1):
                raise ValidationError(f"gpu must look like H100 or H100:8, got {gpu!r}")
            count = int(raw or 1)
        ram = Decimal(str(ram_gib))
        if vcpus < 0 or ram < 0:
            raise ValidationError("vcpus and ram must not be negative")
        if vcpus == 0 and ram == 0 and count == 0:
            raise ValidationError("ask for something: --vcpus, --ram and/or --gpu")
        return cls(vcpus, ram, gpu_model_key(model), count, normalise_arch(arch), os)

    def scope(self) -> PriceScope:
        """What the database may leave out when loading prices for this request."""
        return PriceScope(self.os, self.vcpus, int(self.ram_gib * 1024), self.gpu_model, self.gpu_count)

    def describe(self) -> str:
        parts = []
        if self.vcpus:
            parts.append(f"{self.vcpus} vCPU")
        if self.ram_gib:
            parts.append(f"{self.ram_gib.normalize():f} GiB")
        if self.gpu_count:
            parts.append(f"{self.gpu_count}x {self.gpu_model}")
        return " / ".join(parts) + (f" ({self.arch})" if self.arch else "") + f", {self.os}"


def distance(shape: Shape, req: ShapeRequest) -> float | None:
    """How far ``shape`` is above the request (0: exact), or None when it does not satisfy it."""
    return excess(shape, req.vcpus, req.ram_gib, req.gpu_model, req.gpu_count, req.arch)


@dataclass(frozen=True)
class Quote:
    provider: str
    provider_kind: str
    on_prem: bool
    region: str
    flavor: str
    shape: Shape
    distance: float
    composed: bool  # priced from per-vCPU/GiB/GPU parts
    amount: Decimal  # as the source states it
    currency: str  # the source's currency
    hourly: Decimal  # instance-hour, in the comparison's currency
    per_vcpu_hour: Decimal | None  # None: the shape has no vCPUs (a GPU-only request priced by parts)
    per_gib_hour: Decimal | None  # None: the shape has no RAM
    per_gpu_hour: Decimal | None
    rank_price: Decimal  # what the request costs: hourly, or per GPU-hour x GPUs requested
    effective_date: date
    age_days: int
    stale: bool
    source: str
    source_ref: str | None
    discount: DatedFactor | None = None  # a committed-use/reserved discount applied to ``hourly`` and the rest
    disk_gib_month: Decimal | None = None  # the region's cheapest storage, per GiB-month (None: not priced)
    egress_gib: Decimal | None = None  # the region's cheapest egress, per GiB (None: not priced)


@dataclass
class Comparison:
    request: ShapeRequest
    currency: str
    rates: RateTable
    today: date
    quotes: list[Quote] = field(default_factory=list)
    unmatched: dict[str, str] = field(default_factory=dict)  # "provider/region" -> why nothing matched
    prices_considered: int = 0

    @property
    def rates_stale(self) -> bool:
        age = self.rates.age_days(self.today)
        return age is not None and age > self.rates.stale_after_days


def takes_gpus(kind: str, family: str | None) -> bool:
    """Whether a machine of ``family`` at a provider of ``kind`` can have a priced GPU attached."""
    allowed = ATTACHABLE_GPU_FAMILIES.get(kind)
    if allowed is None:
        return True
    return bool(family) and any(family == f or family.startswith(f"{f}-") for f in allowed)  # type: ignore[union-attr]


def _candidates(points: list[PricePoint], req: ShapeRequest, shaped_families: set[str],
                to_currency: Converter | None = None,
                ) -> Iterable[tuple[PricePoint, Shape, bool, Decimal, list[PricePoint]]]:
    """(point, shape, composed, amount, parts) for every priced shape of one provider and region.

    Component families are grouped as the scheduler groups them (:func:`components`) and composed to
    the exact request by the same :func:`composed_amount`, from the parts the request has: a GPU-only
    request is its GPUs, never 1 vCPU and 1 GiB it did not ask for. Where GPUs are attachable parts
    (GCP's N1, :data:`ATTACHABLE_GPU_FAMILIES`), a listed machine without GPUs plus the request's GPUs
    is a candidate too. Parts in other currencies than the family's vcpu-hour price (or the machine's)
    are converted into its currency first (with ``to_currency``; without it, skipped).
    """
    parts = components((p for p in points if p.os == req.os or p.unit == PriceUnit.GPU_HOUR), shaped_families)
    gpu = parts.gpu(req.gpu_model) if req.gpu_count else None
    for p in points:
        if p.unit == PriceUnit.HOUR and p.shape is not None and p.os == req.os:
            yield p, p.shape, False, p.amount, [p]
            if gpu is not None and not p.shape.gpu_count and p.provider_kind in ATTACHABLE_GPU_FAMILIES \
                    and takes_gpus(p.provider_kind, p.family):
                try:
                    gpu_amount = _in_currency(gpu, p.currency, to_currency)
                except (ValidationError, ArithmeticError):
                    continue
                shape = Shape(p.shape.vcpus, p.shape.ram_mib, req.gpu_model, req.gpu_count, p.shape.arch)
                yield p, shape, True, p.amount + gpu_amount * req.gpu_count, [p, gpu]
    vcpus, ram_gib = req.vcpus, req.ram_gib  # the parts the request has: 0 is a part it does not ask for
    for family, (core, ram) in parts.families.items():
        used = [core, ram]
        if req.gpu_count:
            if gpu is None or not takes_gpus(core.provider_kind, family):
                continue
            used.append(gpu)
        try:
            ram_amount = _in_currency(ram, core.currency, to_currency)
            gpu_amount = _in_currency(gpu, core.currency, to_currency) if gpu is not None else None
        except (ValidationError, ArithmeticError):
            continue  # a part nobody can convert: this family cannot be composed
        amount = composed_amount(core.amount, ram_amount, vcpus, ram_gib, gpu_amount, req.gpu_count)
        shape = Shape(vcpus, math.ceil(ram_gib * 1024), req.gpu_model if req.gpu_count else None, req.gpu_count,
                      req.arch)
        yield core, shape, True, amount, used


def _no_match_reason(points: list[PricePoint], req: ShapeRequest, shaped_families: set[str]) -> str | None:
    """Why a provider region priced by parts (or with GPU parts) quotes nothing, so it is never dropped
    silently; None when it has no parts (regions with listed shapes are explained by their count)."""
    parts = components((p for p in points if p.os == req.os or p.unit == PriceUnit.GPU_HOUR), shaped_families)
    if not parts.families and not parts.gpus:
        return None
    kind = points[0].provider_kind
    if req.gpu_count:
        if parts.gpu(req.gpu_model) is None:
            have = ", ".join(sorted(parts.gpus)) or "none"
            return f"no gpu-hour price for {req.gpu_model} (GPU parts priced here: {have})"
        if kind in ATTACHABLE_GPU_FAMILIES:
            fams = "/".join(f.upper() for f in ATTACHABLE_GPU_FAMILIES[kind])
            return f"{kind} attaches {req.gpu_model} GPUs only to {fams} machines, and none priced here holds " \
                   f"{req.describe()}"
    if not parts.families:
        return f"only GPU parts are priced here, no machine to attach them to for {req.describe()}"
    return f"no priced family composes {req.describe()}"


def _in_currency(p: PricePoint, currency: str, to_currency: Converter | None) -> Decimal:
    """``p``'s amount in ``currency`` (through the comparison's currency when they differ)."""
    if p.currency == currency:
        return p.amount
    if to_currency is None:
        raise ValidationError(f"no converter from {p.currency} to {currency}")
    return to_currency(p.amount, p.currency) / to_currency(Decimal(1), currency)


def compare(book: PriceBook, req: ShapeRequest, rates: RateTable, currency: str | None = None, *,
            today: date | None = None, providers: set[str] | None = None, region: str | None = None,
            discounts: Discounts | None = None) -> Comparison:
    """The best matching flavor at every provider and region, ranked by what the request costs (after
    the provider's committed-use or reserved discount valid ``today``, when ``discounts`` has one)."""
    today = today or date.today()
    target = currency_code(currency or rates.base)
    to_currency = rates.converter(target)
    result = Comparison(req, target, rates, today)
    for (provider, reg), points in book.groups.items():
        if (providers and provider not in providers) or (region and reg != region):
            continue
        result.prices_considered += len(points)
        disc = discounts.on(provider, today) if discounts is not None else None
        factor = disc.factor if disc is not None else Decimal(1)
        best: tuple[float, Decimal, PricePoint, Shape, bool, Decimal, list[PricePoint]] | None = None
        families = book.shaped_families.get((provider, reg), set())
        unconvertible: str | None = None
        for point, shape, composed, amount, used in _candidates(points, req, families, to_currency):
            d = distance(shape, req)
            if d is None:
                continue
            try:  # rows of one region in different currencies are compared in the comparison's currency
                normalised = to_currency(amount, point.currency) * factor
            except ValidationError as exc:
                unconvertible = str(exc)
                continue
            key = (d, normalised)
            if best is None or key < best[:2]:
                best = (d, normalised, point, shape, composed, amount, used)
        if best is None:
            why = unconvertible or _no_match_reason(points, req, families)
            if why:
                result.unmatched[f"{provider}/{reg}"] = why
            continue
        d, _, point, shape, composed, amount, used = best
        q = _quote(point, shape, composed, amount, used, d, req, to_currency, rates, today, disc)
        result.quotes.append(replace(q, disk_gib_month=_cheapest(points, PriceUnit.GIB_MONTH, to_currency),
                                     egress_gib=_cheapest(points, PriceUnit.GIB_EGRESS, to_currency)))
    result.quotes.sort(key=lambda q: (q.rank_price, q.distance, q.provider, q.region))
    quoted = {(q.provider, q.region) for q in result.quotes}
    for (provider, reg), count in sorted(book.shaped_counts.items()):
        if (provider, reg) not in quoted and (not providers or provider in providers) and reg == (region or reg) \
                and f"{provider}/{reg}" not in result.unmatched:
            result.unmatched[f"{provider}/{reg}"] = f"none of {count} priced shapes satisfies {req.describe()}"
    return result


def _cheapest(points: list[PricePoint], unit: PriceUnit, to_currency: Converter) -> Decimal | None:
    """The region's cheapest price in ``unit`` (storage per GiB-month, egress per GiB) in the comparison's
    currency; None when it has none (or none that converts)."""
    found = []
    for p in points:
        if p.unit == unit:
            try:
                found.append(to_currency(p.amount, p.currency))
            except ValidationError:
                continue
    return min(found, default=None)


def _quote(point: PricePoint, shape: Shape, composed: bool, amount: Decimal, used: list[PricePoint], d: float,
           req: ShapeRequest, to_currency: Converter, rates: RateTable, today: date,
           disc: DatedFactor | None = None) -> Quote:
    hourly = to_currency(amount, point.currency) * (disc.factor if disc is not None else 1)
    per_gpu = hourly / shape.gpu_count if shape.gpu_count else None
    rank = per_gpu * req.gpu_count if req.gpu_count and per_gpu is not None else hourly
    effective = min(p.effective_date for p in used)
    age = (today - effective).days
    family = point.family or ""
    prefix = family if family.endswith("custom") else f"{family}-custom"
    if composed and used[0].unit == PriceUnit.HOUR:  # a listed machine with the request's GPUs attached
        flavor = f"{point.flavor} + {shape.gpu_count}x {shape.gpu_model}"
    elif composed and not shape.vcpus and not shape.ram_mib:  # the request is its GPUs alone
        flavor = f"{shape.gpu_count}x {shape.gpu_model} ({family} parts)"
    elif composed:
        flavor = f"{prefix}-{shape.vcpus}-{shape.ram_mib}"
    else:
        flavor = point.flavor
    ref = ", ".join(p.source_ref or p.source for p in used) if composed else point.source_ref
    return Quote(
        provider=point.provider, provider_kind=point.provider_kind, on_prem=point.on_prem, region=point.region,
        flavor=flavor, shape=shape, distance=d, composed=composed, amount=amount, currency=point.currency,
        hourly=hourly, per_vcpu_hour=hourly / shape.vcpus if shape.vcpus else None,
        per_gib_hour=hourly / shape.ram_gib if shape.ram_mib else None,
        per_gpu_hour=per_gpu, rank_price=rank, effective_date=effective, age_days=age,
        stale=age > rates.stale_after_days, source=point.source, source_ref=ref, discount=disc)


def best_quote(book: PriceBook, req: ShapeRequest, rates: RateTable, provider: str, region: str,
               currency: str | None = None, *, today: date | None = None,
               discounts: Discounts | None = None) -> Quote | None:
    """What placing ``req`` at one provider and region costs (None: no priced shape there fits).

    The scheduler's price cost: the same matching, normalisation and currency as the comparison.
    """
    quotes = compare(book, req, rates, currency, today=today, providers={provider}, region=region,
                     discounts=discounts).quotes
    return quotes[0] if quotes else None
