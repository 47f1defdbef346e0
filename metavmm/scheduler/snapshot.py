"""An immutable picture of the catalog, the only thing the scheduler reads.

The scheduler never queries the database or calls a driver while it decides: :func:`load_snapshot`
reads the catalog tables once (async), and everything after that works on frozen dataclasses and
read-only mappings, so filters and costs are pure functions that can be tested with hand-built views
and run thousands of times a second. Capacity that placements consume is tracked beside the snapshot
(see :mod:`metavmm.scheduler.ledger`), never written into it.

Prices are normalised into the snapshot's currency at load time through an injectable
``to_currency(amount, currency)`` converter. Without one, a price in another currency is kept with a
``problem`` ("price in EUR; no currency converter to USD") and the price filter rejects the candidate
with that reason, instead of comparing euros with dollars.

Public clouds expose no hosts: their sites carry flavors only, and candidates there are (site, flavor)
pairs. On-prem sites carry hosts, priced as the price comparison prices a shape: composed from a
family's component prices (``vcpu-hour`` + ``gib-hour``, plus ``gpu-hour`` per GPU model; see
:func:`metavmm.foundation.prices.components`) or by the site's priced flavors, those the catalog lists
and those whose price states its shape.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from sqlalchemy import or_
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog import models as m
from metavmm.foundation.config import SchedulerSettings
from metavmm.foundation.errors import MetavmmError, NotFound, ValidationError
from metavmm.foundation.prices import (
    COMPONENT_UNITS,
    COMPUTE_UNITS,
    PriceUnit,
    Shape,
    components,
    gpu_model_key,
    normalise_arch,
)
from metavmm.foundation.records import Inventory

Converter = Callable[[Decimal, str], Decimal]
PLACEMENT_UNITS = frozenset({*COMPUTE_UNITS, PriceUnit.GIB_MONTH, PriceUnit.GIB_EGRESS})
"""What a placement is priced from: compute, the disk's storage and the egress of what it moves."""
"""``to_currency(amount, currency) -> amount`` in the snapshot's currency (issue 8 provides one)."""

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[Any, Any]:
    return _EMPTY


def frozen_map(data: Mapping[Any, Any] | None = None) -> Mapping[Any, Any]:
    """A read-only copy; every empty one is the same object (10,000 hosts without GPUs, and their views,
    would otherwise be 20,000 more objects for the garbage collector to walk)."""
    return MappingProxyType(dict(data)) if data else _EMPTY


@lru_cache(maxsize=4096, typed=True)
def shared(value: Hashable) -> Any:
    """The first object equal to ``value`` seen (recently): hosts share one frozenset of features (and host
    views one set of their arch), instead of one object each for the garbage collector to walk."""
    return value


def _gpu_map(gpus: Mapping[str, int]) -> Mapping[str, int]:
    """A host's GPUs by :func:`gpu_model_key` (two spellings of one model add up)."""
    if all(gpu_model_key(k) == k for k in gpus):
        return gpus if isinstance(gpus, MappingProxyType) else frozen_map(gpus)
    out: dict[str, int] = {}
    for model, n in gpus.items():
        key = gpu_model_key(model) or model
        out[key] = out.get(key, 0) + n
    return frozen_map(out)


def hypervisor_family(hv: str) -> str:
    """KVM and QEMU (TCG) run the same guests; every other type is its own family."""
    return "kvm" if hv in ("kvm", "qemu") else hv


@dataclass(frozen=True, slots=True)
class ProviderView:
    id: int
    name: str
    kind: str
    on_prem: bool
    capabilities: frozenset[str] = frozenset()
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class HostView:
    id: int
    name: str
    site_id: int
    hypervisor: str
    arch: str
    vendor: str | None = None
    model: str | None = None
    features: frozenset[str] = frozenset()
    cores: int = 0
    memory_mib: int = 0
    gpus: Mapping[str, int] = field(default_factory=_empty)
    nested_virt: bool = False
    state: str = m.HostState.UP
    vcpus_used: int = 0
    memory_mib_used: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "arch", normalise_arch(self.arch) or self.arch)
        object.__setattr__(self, "gpus", _gpu_map(self.gpus))
        object.__setattr__(self, "features", shared(self.features))

    @property
    def profile(self) -> tuple[Any, ...]:
        """What makes two hosts interchangeable for every filter but capacity (an equivalence class key)."""
        return (self.site_id, self.hypervisor, self.arch, self.vendor, self.model, self.features,
                tuple(sorted(self.gpus.items())), self.nested_virt, self.state)


@dataclass(frozen=True, slots=True)
class FlavorView:
    id: int
    name: str
    provider_id: int
    site_id: int | None  # None: offered at every site of the provider
    vcpus: int
    ram_mib: int
    disk_gib: int = 0
    gpu_model: str | None = None
    gpu_count: int = 0
    arch: str | None = None
    features: frozenset[str] | None = None  # None: the provider does not say
    nested_virt: bool | None = None  # None: follow the provider's capability

    def __post_init__(self) -> None:
        object.__setattr__(self, "arch", normalise_arch(self.arch))
        object.__setattr__(self, "gpu_model", gpu_model_key(self.gpu_model))


@dataclass(frozen=True, slots=True)
class PriceView:
    """A price per hour in the snapshot's currency (``amount``), or why it cannot be used (``problem``)."""

    amount: Decimal | None
    original_amount: Decimal
    currency: str
    source: str = ""
    effective_date: date | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class SitePrices:
    flavors: Mapping[str, PriceView] = field(default_factory=_empty)  # hourly prices by flavor name
    families: Mapping[str, tuple[PriceView, PriceView]] = field(default_factory=_empty)  # (vcpu-hour, gib-hour)
    gpus: Mapping[str, PriceView] = field(default_factory=_empty)  # gpu-hour by GPU model (gpu_model_key)
    ladder: tuple[tuple[FlavorView, PriceView], ...] = ()  # the site's priced flavors, cheapest first
    storage: PriceView | None = None  # per GiB-month of disk: the cheapest of the newest storage prices
    egress: PriceView | None = None  # per GiB leaving the site: the cheapest of the newest egress prices

    def gpu(self, model: str | None) -> PriceView | None:
        return self.gpus.get(gpu_model_key(model) or "")


@dataclass(frozen=True, slots=True)
class SiteProfile:
    """What the up hosts of a site offer that no placement changes (computed once per snapshot)."""

    archs: frozenset[str] = frozenset()
    vendors: frozenset[str | None] = frozenset()
    feature_sets: tuple[frozenset[str], ...] = ()
    hypervisors: frozenset[str] = frozenset()
    nested: bool = False
    all_gpu: bool = False  # every up host has GPUs: work without GPUs here strands some

    @staticmethod
    def of(hosts: Sequence[HostView]) -> SiteProfile:
        up = [h for h in hosts if h.state == m.HostState.UP]
        return SiteProfile(frozenset(h.arch for h in up), frozenset(h.vendor for h in up),
                           tuple(sorted({h.features for h in up}, key=sorted)), frozenset(h.hypervisor for h in up),
                           any(h.nested_virt for h in up),
                           bool(up) and all(any(n > 0 for n in h.gpus.values()) for h in up))


@dataclass(frozen=True, slots=True)
class SiteView:
    id: int
    name: str
    region: str
    provider: ProviderView
    country: str | None = None
    hosts: tuple[HostView, ...] = ()
    flavors: tuple[FlavorView, ...] = ()
    prices: SitePrices = field(default_factory=SitePrices)
    hypervisors: frozenset[str] = frozenset()
    profile: SiteProfile = field(default_factory=SiteProfile)

    @property
    def on_prem(self) -> bool:
        return self.provider.on_prem

    @property
    def has_hosts(self) -> bool:
        return bool(self.hosts)


@dataclass(frozen=True, slots=True)
class ImageView:
    """A catalog image. ``arch``, ``cpu_vendor`` and ``cpu_features`` (``Image.extra``, libvirt feature
    names) are what the guest needs; the prefilter makes them the request's."""

    id: str
    name: str
    arch: str = "x86_64"
    hypervisor: str | None = None
    format: str = "qcow2"
    size_bytes: int = 0
    cpu_vendor: str | None = None
    cpu_features: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "arch", normalise_arch(self.arch) or "x86_64")


@dataclass(frozen=True, slots=True)
class ReplicaView:
    image_id: str
    site_id: int
    format: str
    size_bytes: int = 0
    provider_image_id: str = ""  # what the site's provider calls it (what a create boots)


@dataclass(frozen=True, slots=True)
class WorkloadView:
    """A running compute workload, as the migration planner needs it."""

    id: str
    name: str
    project_id: int | None
    site_id: int | None
    host_id: int | None
    vcpus: int
    ram_mib: int
    disk_gib: int = 0
    gpu_model: str | None = None
    gpu_count: int = 0
    image_id: str | None = None
    disk_format: str = "qcow2"
    disk_bytes: int = 0
    # placement groups of its project (the spec's ``affinity_group`` and ``anti_affinity_group``): the
    # members of an affinity group share a host, those of an anti-affinity group never do; moves keep both
    affinity_group: str | None = None
    anti_affinity_group: str | None = None
    residency: tuple[str, ...] = ()  # the countries its create allowed (``spec["residency"]``); moves keep it


@dataclass(frozen=True)
class Snapshot:
    """Everything the scheduler may read, frozen. Build it with :func:`load_snapshot` or :func:`build_snapshot`."""

    currency: str
    sites: tuple[SiteView, ...]
    images: Mapping[str, ImageView] = field(default_factory=_empty)
    replicas: Mapping[str, tuple[ReplicaView, ...]] = field(default_factory=_empty)  # by image id
    workloads: tuple[WorkloadView, ...] = ()
    quotas: Mapping[int, Mapping[str, Decimal]] = field(default_factory=_empty)  # project id -> resource -> limit
    usage: Mapping[int, Mapping[str, Decimal]] = field(default_factory=_empty)  # project id -> resource -> used
    projects: Mapping[str, int] = field(default_factory=_empty)  # name -> id
    settings: SchedulerSettings = field(default_factory=SchedulerSettings)
    has_converter: bool = False
    to_currency: Converter | None = field(default=None, repr=False, compare=False)  # into ``currency``
    policies: tuple[Any, ...] = ()  # the federation's burst policies (BurstPolicy), for place_or_burst
    taken_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    _site_by_id: Mapping[int, SiteView] = field(default_factory=_empty, repr=False)
    _host_by_id: Mapping[int, HostView] = field(default_factory=_empty, repr=False)
    _host_by_name: Mapping[str, HostView] = field(default_factory=_empty, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_site_by_id", frozen_map({s.id: s for s in self.sites}))
        hosts = [h for s in self.sites for h in s.hosts]
        object.__setattr__(self, "_host_by_id", frozen_map({h.id: h for h in hosts}))
        object.__setattr__(self, "_host_by_name", frozen_map({h.name: h for h in hosts}))

    def site(self, site_id: int) -> SiteView:
        return self._site_by_id[site_id]

    def site_named(self, name: str) -> SiteView | None:
        return next((s for s in self.sites if s.name == name or s.region == name), None)

    def host(self, host_id: int) -> HostView:
        return self._host_by_id[host_id]

    def find_host(self, host_id: int | None) -> HostView | None:
        return self._host_by_id.get(host_id) if host_id is not None else None

    def host_named(self, name: str) -> HostView | None:
        """A host by its bare name. Names repeat across providers (two sim providers, two libvirt daemons
        on one machine): anything that acts on a host an operator names uses :meth:`resolve_host`."""
        return self._host_by_name.get(name)

    def resolve_host(self, ref: str, *, near_site_id: int | None = None) -> HostView:
        """The one host ``ref`` means: ``host``, ``provider/host`` or ``site/host`` (a site by name or region).

        A bare name is looked for in ``near_site_id``'s site first, then in that site's provider, then
        everywhere; a name that still matches hosts of several providers is an error that lists the
        qualified names, never a guess (a pin must not land on another provider's host of that name).
        """
        hosts = [h for h in self._host_by_id.values() if h.name == ref]
        if not hosts and "/" in ref:
            scope, _, name = ref.rpartition("/")
            hosts = [h for h in self._host_by_id.values() if h.name == name
                     and scope in (self.site(h.site_id).name, self.site(h.site_id).region,
                                   self.site(h.site_id).provider.name)]
        if not hosts:
            raise NotFound(f"no host named {ref} in the catalog")
        if len(hosts) > 1 and near_site_id is not None:
            near = self._site_by_id.get(near_site_id)
            same_site = [h for h in hosts if h.site_id == near_site_id]
            same_provider = [h for h in hosts if near is not None
                             and self.site(h.site_id).provider.id == near.provider.id]
            hosts = same_site or same_provider or hosts
        if len(hosts) > 1:
            names = ", ".join(sorted(f"{self.site(h.site_id).name}/{h.name}" for h in hosts))
            raise ValidationError(f"host name {ref} is ambiguous; qualify it as site/host: {names}")
        return hosts[0]

    def hosts(self) -> Iterable[HostView]:
        return self._host_by_id.values()

    @property
    def host_count(self) -> int:
        return len(self._host_by_id)


# --- building -----------------------------------------------------------------------------------------


def _price_view(amount: Decimal, currency: str, target: str, to_currency: Converter | None, source: str,
                effective: date | None) -> PriceView:
    if currency == target:
        return PriceView(amount, amount, currency, source, effective)
    if to_currency is None:
        return PriceView(None, amount, currency, source, effective,
                         problem=f"price in {currency}; no currency converter to compare with {target}")
    try:
        return PriceView(Decimal(to_currency(amount, currency)), amount, currency, source, effective)
    except (MetavmmError, KeyError, ValueError, ArithmeticError) as exc:
        return PriceView(None, amount, currency, source, effective,
                         problem=f"price in {currency}: cannot convert to {target}: {exc}")


@dataclass(frozen=True, slots=True)
class PriceRow:
    """One compute price as the builder needs it (a ``Price`` row or a driver's ``PriceInfo``): an
    instance-hour price of a flavor (its shape when the price states one), or a component price of a
    family (``flavor`` is then the family, as in the federation file)."""

    provider_id: int
    region: str
    flavor: str
    amount: Decimal
    currency: str
    source: str = ""
    effective_date: date | None = None
    unit: str = PriceUnit.HOUR
    gpu_model: str | None = None  # of a gpu-hour price
    shape: Shape | None = None  # of an hourly price that states it
    listed_family: str | None = None  # an hourly price's family: the family is sold as listed shapes only

    @property
    def family(self) -> str | None:
        return self.flavor if self.unit in COMPONENT_UNITS else self.listed_family


def _site_prices(rows: Sequence[PriceRow], target: str, to_currency: Converter | None,
                 factor: Decimal | None = None) -> SitePrices:
    def view(r: PriceRow) -> PriceView:
        v = _price_view(r.amount, r.currency, target, to_currency, r.source, r.effective_date)
        if factor is None or factor == 1 or v.amount is None or r.unit not in COMPUTE_UNITS:
            return v  # a commitment discounts compute, not disks or traffic
        return replace(v, amount=v.amount * factor, source=f"{v.source} x {factor} (discount)")

    latest: dict[str, PriceRow] = {}
    for row in rows:
        if row.unit != PriceUnit.HOUR:
            continue
        old = latest.get(row.flavor)
        if old is None or (row.effective_date or date.min) >= (old.effective_date or date.min):
            latest[row.flavor] = row
    shaped = {r.listed_family for r in latest.values() if r.listed_family}
    parts = components(rows, shaped)
    return SitePrices(
        flavors=frozen_map({name: view(r) for name, r in latest.items()}),
        families=frozen_map({fam: (view(core), view(ram)) for fam, (core, ram) in parts.families.items()}),
        gpus=frozen_map({model: view(r) for model, r in parts.gpus.items()}),
        storage=_cheapest_newest(rows, PriceUnit.GIB_MONTH, view),
        egress=_cheapest_newest(rows, PriceUnit.GIB_EGRESS, view),
    )


def _cheapest_newest(rows: Sequence[PriceRow], unit: str, view: Callable[[PriceRow], PriceView]) -> PriceView | None:
    """The cheapest of the newest prices of ``unit`` per kind (``flavor``: a disk class, an egress meter): the
    standard disk a VM gets unless it asks for more, the egress rate a transfer pays. Unconvertible ones
    are kept only when nothing else is."""
    newest: dict[str, PriceRow] = {}
    for r in rows:
        if r.unit == unit:
            old = newest.get(r.flavor)
            if old is None or (r.effective_date or date.min) >= (old.effective_date or date.min):
                newest[r.flavor] = r
    views = [view(r) for r in newest.values()]
    usable = [v for v in views if v.amount is not None]
    if usable:
        return min(usable, key=lambda v: v.amount)  # type: ignore[arg-type, return-value]
    return views[0] if views else None


def _stated_flavors(rows: Sequence[PriceRow], known: set[str], provider_id: int, site_id: int) -> list[FlavorView]:
    """Flavors an hourly price states the shape of but the catalog does not list (an on-prem price table
    for a provider without flavors): the site's hosts are priced by them too, as the comparison does."""
    out: dict[str, FlavorView] = {}
    for r in rows:
        if r.unit == PriceUnit.HOUR and r.shape is not None and r.flavor not in known:
            sh = r.shape
            out[r.flavor] = FlavorView(-1, r.flavor, provider_id, site_id, sh.vcpus, sh.ram_mib, 0, sh.gpu_model,
                                       sh.gpu_count, sh.arch)
    return list(out.values())


def build_snapshot(*, currency: str, providers: Sequence[ProviderView], sites: Sequence[tuple[int, int, str, str,
                   str | None]], hosts: Sequence[HostView], flavors: Sequence[FlavorView],
                   prices: Sequence[PriceRow], images: Sequence[ImageView] = (),
                   replicas: Sequence[ReplicaView] = (), workloads: Sequence[WorkloadView] = (),
                   quotas: Mapping[int, Mapping[str, Decimal]] | None = None,
                   usage: Mapping[int, Mapping[str, Decimal]] | None = None,
                   projects: Mapping[str, int] | None = None, settings: SchedulerSettings | None = None,
                   to_currency: Converter | None = None, discounts: Mapping[str, Decimal] | None = None) -> Snapshot:
    """Assemble a frozen snapshot. ``sites`` are ``(id, provider_id, name, region, country)`` tuples.
    ``discounts``: provider name -> the factor its prices are multiplied by today (a committed-use or
    reserved discount, :mod:`metavmm.scheduler.pricing.discounts`)."""
    settings = settings or SchedulerSettings()
    by_provider = {p.id: p for p in providers}
    hosts_by_site: dict[int, list[HostView]] = defaultdict(list)
    for h in hosts:
        hosts_by_site[h.site_id].append(h)
    flavors_by_provider: dict[int, list[FlavorView]] = defaultdict(list)
    for f in flavors:
        flavors_by_provider[f.provider_id].append(f)
    prices_by_site: dict[tuple[int, str], list[PriceRow]] = defaultdict(list)
    for p in prices:
        prices_by_site[(p.provider_id, p.region)].append(p)
    views = []
    for site_id, provider_id, name, region, country in sites:
        provider = by_provider.get(provider_id)
        if provider is None or not provider.enabled:
            continue
        site_hosts = tuple(sorted(hosts_by_site.get(site_id, ()), key=lambda h: h.id))
        site_flavors = tuple(f for f in flavors_by_provider.get(provider_id, ()) if f.site_id in (None, site_id))
        if site_hosts:
            hvs = frozenset(h.hypervisor for h in site_hosts)
        else:
            hv = settings.public_hypervisors.get(provider.kind)
            hvs = frozenset({hv}) if hv else frozenset()
        rows_here = prices_by_site.get((provider_id, region), ())
        prices_here = _site_prices(rows_here, currency, to_currency, (discounts or {}).get(provider.name))
        priced = list(site_flavors)
        if site_hosts:
            priced += _stated_flavors(rows_here, {f.name for f in site_flavors}, provider_id, site_id)
        ladder = [(f, prices_here.flavors[f.name]) for f in priced if f.name in prices_here.flavors]
        ladder.sort(key=lambda fp: (fp[1].amount is None, fp[1].amount or 0, fp[0].vcpus, fp[0].ram_mib))
        prices_here = replace(prices_here, ladder=tuple(ladder))
        views.append(SiteView(site_id, name, region, provider, country, site_hosts, site_flavors, prices_here, hvs,
                              SiteProfile.of(site_hosts)))
    replicas_by_image: dict[str, list[ReplicaView]] = defaultdict(list)
    for r in replicas:
        replicas_by_image[r.image_id].append(r)
    return Snapshot(
        currency=currency, sites=tuple(views), images=frozen_map({i.id: i for i in images}),
        replicas=frozen_map({k: tuple(v) for k, v in replicas_by_image.items()}), workloads=tuple(workloads),
        quotas=frozen_map({k: frozen_map(v) for k, v in (quotas or {}).items()}),
        usage=frozen_map({k: frozen_map(v) for k, v in (usage or {}).items()}),
        projects=frozen_map(projects or {}), settings=settings, has_converter=to_currency is not None,
        to_currency=to_currency,
    )


def _group(spec: Mapping[str, Any], key: str) -> str | None:
    """A placement group's name from a workload spec (None: in no group of that kind)."""
    value = spec.get(key)
    return str(value) if isinstance(value, str) and value else None


def spec_residency(spec: Mapping[str, Any]) -> tuple[str, ...]:
    """The countries a workload's create allowed (``spec["residency"]``; empty: any): every later placement
    of it (a migration, a rebalance move, an HA restart) asks the scheduler for the same."""
    return tuple(str(c) for c in spec.get("residency") or ())


def _spec_int(spec: Mapping[str, Any], key: str, default: int = 0) -> int:
    try:
        return int(spec.get(key, default) or default)
    except (TypeError, ValueError):
        return default


async def load_snapshot(session: AsyncSession, *, currency: str = "USD", settings: SchedulerSettings | None = None,
                        to_currency: Converter | None = None, discounts: Mapping[str, Decimal] | None = None,
                        ) -> Snapshot:
    """Read the catalog once and freeze it. Sites and hosts no longer reported are left out."""
    providers = [ProviderView(p.id, p.name, p.kind, p.on_prem, frozenset(p.capabilities or ()), p.enabled)
                 for p in (await session.exec(select(m.Provider))).all() if p.id is not None]
    sites = [(s.id, s.provider_id, s.name, s.region, s.country)
             for s in (await session.exec(select(m.Site).where(m.Site.present == True))).all()]  # noqa: E712
    hosts = [HostView(h.id, h.name, h.site_id, h.hypervisor_type, h.cpu_arch, h.cpu_vendor, h.cpu_model,
                      frozenset(h.cpu_features or ()), h.cpu_cores, h.memory_mib,
                      frozen_map({k: int(v) for k, v in (h.gpus or {}).items()}), h.nested_virt, h.state,
                      h.vcpus_used, h.memory_mib_used)
             for h in (await session.exec(select(m.Host).where(m.Host.state != m.HostState.GONE))).all()]
    flavors = []
    for f in (await session.exec(select(m.Flavor).where(m.Flavor.present == True))).all():  # noqa: E712
        extra = f.extra or {}
        feats = extra.get("cpu_features")
        flavors.append(FlavorView(f.id, f.name, f.provider_id, f.site_id, f.vcpus, f.ram_mib, f.disk_gib,
                                  f.gpu_model, f.gpu_count, f.arch, frozenset(feats) if feats is not None else None,
                                  extra.get("nested_virt")))
    prices = [_price_row(p) for p in (await session.exec(select(m.Price).where(
        m.Price.provider_id.is_not(None), m.Price.unit.in_(PLACEMENT_UNITS),  # type: ignore[union-attr, attr-defined]
        or_(m.Price.os == "linux", m.Price.unit == PriceUnit.GPU_HOUR)))).all()]
    images = [ImageView(i.id, i.name, i.arch, i.hypervisor, i.format, i.size_bytes,
                        (i.extra or {}).get("cpu_vendor"), frozenset((i.extra or {}).get("cpu_features") or ()))
              for i in (await session.exec(select(m.Image))).all()]
    replicas = [ReplicaView(r.image_id, r.site_id, r.format, r.size_bytes, r.provider_image_id)
                for r in (await session.exec(select(m.ImageReplica).where(
                    m.ImageReplica.present == True))).all() if r.image_id]  # noqa: E712
    flavor_shapes = {f.name: f for f in flavors}
    workloads = []
    usage: dict[int, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for w in (await session.exec(select(m.Workload).where(m.Workload.kind == m.WorkloadKind.COMPUTE,
                                                          m.Workload.present == True))).all():  # noqa: E712
        spec = w.spec or {}
        shape = flavor_shapes.get(str(spec.get("flavor"))) if spec.get("flavor") else None
        vcpus = _spec_int(spec, "vcpus", shape.vcpus if shape else 0)
        ram = _spec_int(spec, "ram_mib", shape.ram_mib if shape else 0)
        gpu_model = spec.get("gpu_model") or (shape.gpu_model if shape else None)
        gpus = _spec_int(spec, "gpu_count", shape.gpu_count if shape else 0)
        workloads.append(WorkloadView(w.id, w.name, w.project_id, w.site_id, w.host_id, vcpus, ram,
                                      _spec_int(spec, "disk_gib"), gpu_model, gpus, spec.get("image_id"),
                                      str(spec.get("disk_format", "qcow2")), _spec_int(spec, "disk_bytes"),
                                      _group(spec, "affinity_group"), _group(spec, "anti_affinity_group"),
                                      spec_residency(spec)))
        if w.project_id is not None and w.desired_state != "deleted":
            u = usage[w.project_id]
            u["instances"] += 1
            u["vcpus"] += vcpus
            u["ram_mib"] += ram
            if gpu_model and gpus:
                u[f"gpus:{gpu_model_key(gpu_model)}"] += gpus
    quotas: dict[int, dict[str, Decimal]] = defaultdict(dict)
    for q in (await session.exec(select(m.Quota))).all():
        resource = f"gpus:{gpu_model_key(q.resource[5:])}" if q.resource.startswith("gpus:") else q.resource
        quotas[q.project_id][resource] = Decimal(q.limit)
    projects = {p.name: p.id for p in (await session.exec(select(m.Project))).all() if p.id is not None}
    return build_snapshot(currency=currency, providers=providers, sites=sites, hosts=hosts, flavors=flavors,
                          prices=prices, images=images, replicas=replicas, workloads=workloads, quotas=quotas,
                          usage=usage, projects=projects, settings=settings, to_currency=to_currency,
                          discounts=discounts)


def _price_row(p: m.Price) -> PriceRow:
    shape = None
    if p.unit == PriceUnit.HOUR and p.vcpus and p.ram_mib:
        shape = Shape(p.vcpus, p.ram_mib, p.gpu_model, p.gpu_count or 0, p.arch)
    return PriceRow(p.provider_id or 0, p.region, p.flavor_name, Decimal(p.amount), p.currency, p.source,
                    p.effective_date, p.unit, p.gpu_model if p.unit == PriceUnit.GPU_HOUR else None, shape,
                    p.family if p.unit == PriceUnit.HOUR else None)


def snapshot_from_inventories(entries: Sequence[tuple[str, str, bool, Iterable[str], Inventory]], *,
                              currency: str = "USD", settings: SchedulerSettings | None = None,
                              to_currency: Converter | None = None) -> Snapshot:
    """A snapshot straight from drivers' inventories (benchmarks, demos): ``(name, kind, on_prem, caps, inv)``.

    Ids are assigned in order; nothing is written anywhere.
    """
    providers, sites, hosts, flavors, prices = [], [], [], [], []
    site_id = host_id = flavor_id = 0
    for pid, (name, kind, on_prem, caps, inv) in enumerate(entries, start=1):
        providers.append(ProviderView(pid, name, kind, on_prem, frozenset(str(c) for c in caps)))
        region_ids: dict[str, int] = {}
        for s in inv.sites:
            site_id += 1
            region_ids[s.region] = site_id
            sites.append((site_id, pid, f"{name}/{s.region}", s.region, s.country))
        for h in inv.hosts:
            host_id += 1
            hosts.append(HostView(host_id, h.name, region_ids[h.region], h.hypervisor_type, h.cpu_arch,
                                  h.cpu_vendor, h.cpu_model, frozenset(h.cpu_features), h.cpu_cores, h.memory_mib,
                                  frozen_map(h.gpus), h.nested_virt, h.state, h.vcpus_used, h.memory_mib_used))
        for f in inv.flavors:
            flavor_id += 1
            feats = f.extra.get("cpu_features")
            flavors.append(FlavorView(flavor_id, f.name, pid, region_ids.get(f.region) if f.region else None,
                                      f.vcpus, f.ram_mib, f.disk_gib, f.gpu_model, f.gpu_count, f.arch,
                                      frozenset(feats) if feats is not None else None, f.extra.get("nested_virt")))
        prices.extend(PriceRow(pid, p.region, p.flavor, p.amount, p.currency, p.source, p.effective_date, p.unit,
                               p.gpu_model)
                      for p in inv.prices if p.unit in PLACEMENT_UNITS and p.os == "linux")
    return build_snapshot(currency=currency, providers=providers, sites=sites, hosts=hosts, flavors=flavors,
                          prices=prices, settings=settings, to_currency=to_currency)


__all__ = [
    "Converter", "FlavorView", "HostView", "ImageView", "PriceRow", "PriceView", "ProviderView",
    "ReplicaView", "SitePrices", "SiteView", "Snapshot", "WorkloadView", "build_snapshot", "hypervisor_family",
    "load_snapshot", "snapshot_from_inventories",
]
