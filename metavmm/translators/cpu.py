"""CPU compatibility: can a workload's CPU run on a host, and what CPU can every host of a pool offer?

A guest sees a CPU model and a feature set. Booting it on a host that lacks one of those features
fails (or the guest crashes on the first AVX-512 instruction); live-migrating it across hosts is safe
only when every host offers the guest's whole CPU. So metavmm answers two questions:

* :func:`compare` (requirement vs host) says ok or not, and why: another instruction set (x86 vs
  ARM), another vendor (Intel vs AMD: a vendor-specific model or a running guest cannot cross), or
  the features the host lacks, by name.
* :func:`baseline` (a pool of hosts) computes the CPU every host can give a guest: the common
  features and the richest named model within them, so live migration inside the pool is safe.

On libvirt hosts the daemon itself answers (:func:`compare_libvirt`, :func:`baseline_libvirt`:
``compareHypervisorCPU`` and ``baselineHypervisorCPU`` know QEMU's real models and the host's quirks).
Elsewhere (clouds, catalog snapshots) the answer comes from feature sets, with libvirt's model table
(``/usr/share/libvirt/cpu_map``) to name models when it is installed.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from lxml import etree

from metavmm.foundation.errors import ValidationError

CPU_MAP = Path("/usr/share/libvirt/cpu_map")
_FAMILY = {"x86_64": "x86", "i686": "x86", "i386": "x86", "aarch64": "ARM", "armv7l": "ARM", "ppc64le": "POWER",
           "ppc64": "POWER", "s390x": "s390x", "riscv64": "RISC-V"}
_VENDORS = {"genuineintel": "Intel", "intel": "Intel", "authenticamd": "AMD", "amd": "AMD", "hygongenuine": "Hygon",
            "hygon": "Hygon", "arm": "ARM"}


def family(arch: str) -> str:
    """The instruction-set family of a libvirt arch name (x86_64 -> x86, aarch64 -> ARM)."""
    return _FAMILY.get(arch, arch)


def vendor_name(vendor: str | None) -> str | None:
    return _VENDORS.get(vendor.lower(), vendor) if vendor else None


@dataclass(frozen=True, slots=True)
class CpuSpec:
    """A CPU as the catalog knows it: arch, vendor, libvirt model name and libvirt feature names."""

    arch: str
    vendor: str | None = None
    model: str | None = None
    features: frozenset[str] = frozenset()
    name: str = ""  # the host or workload this describes, for reasons

    @classmethod
    def of(cls, arch: str, vendor: str | None = None, model: str | None = None, features: Iterable[str] = (),
           name: str = "") -> CpuSpec:
        return cls(arch, vendor_name(vendor), model, frozenset(features), name)

    @classmethod
    def from_host(cls, host: Any) -> CpuSpec:
        """From a catalog ``Host`` or a driver ``HostInfo`` (both carry cpu_arch, cpu_vendor, cpu_model ...)."""
        return cls.of(host.cpu_arch, host.cpu_vendor, host.cpu_model, host.cpu_features, getattr(host, "name", ""))

    def all_features(self) -> frozenset[str]:
        """Own features plus those the named model implies (per libvirt's model table)."""
        model = models().get(self.model or "")
        return self.features | (model.features if model else frozenset())

    def libvirt_xml(self) -> str:
        """A host-CPU style ``<cpu>`` definition, as compareHypervisorCPU and baselineHypervisorCPU take it."""
        parts = [f"<arch>{escape(self.arch)}</arch>"]
        if self.model:
            parts.append(f"<model>{escape(self.model)}</model>")
        if self.vendor:
            parts.append(f"<vendor>{escape(self.vendor)}</vendor>")
        parts += [f"<feature name='{escape(f)}'/>" for f in sorted(self.features)]
        return "<cpu>" + "".join(parts) + "</cpu>"


@dataclass(frozen=True, slots=True)
class CpuVerdict:
    """The answer to "can this run there?": ``ok``, and always a reason a human can act on."""

    ok: bool
    reason: str
    missing: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Baseline:
    """The CPU every host of a pool can offer (``cpu``), or why there is none (``ok`` False)."""

    ok: bool
    reason: str
    cpu: CpuSpec | None = None
    groups: dict[str, list[str]] = field(default_factory=dict)  # vendor or family -> host names, when split


@dataclass(frozen=True, slots=True)
class CpuModel:
    name: str
    vendor: str | None
    features: frozenset[str]


@functools.cache
def models(cpu_map: Path = CPU_MAP) -> dict[str, CpuModel]:
    """libvirt's x86 model table (name -> vendor and full feature set); empty when libvirt is not installed."""
    raw: dict[str, tuple[str | None, set[str], str | None]] = {}
    for path in sorted(cpu_map.glob("x86_*.xml")) if cpu_map.is_dir() else []:
        root = etree.parse(str(path), etree.XMLParser(no_network=True, resolve_entities=False)).getroot()
        for m in root.findall("model"):
            vendor = m.find("vendor")
            parent = m.find("model")
            raw[m.get("name", "")] = (vendor.get("name") if vendor is not None else None,
                                      {f.get("name", "") for f in m.findall("feature")},
                                      parent.get("name") if parent is not None else None)

    def resolve(name: str, depth: int = 0) -> tuple[str | None, set[str]]:
        vendor, feats, parent = raw[name]
        if parent and parent in raw and depth < 8:
            p_vendor, p_feats = resolve(parent, depth + 1)
            return vendor or p_vendor, feats | p_feats
        return vendor, feats

    out = {}
    for name in raw:
        vendor, feats = resolve(name)
        out[name] = CpuModel(name, vendor, frozenset(feats))
    return out


def compare(required: CpuSpec, host: CpuSpec, *, live: bool = False) -> CpuVerdict:
    """Can a guest with CPU ``required`` run on ``host``? ``live``: a running guest arriving by live migration."""
    who = f"host {host.name}" if host.name else "the host"
    if family(required.arch) != family(host.arch):
        return CpuVerdict(False, f"the workload needs an {family(required.arch)} CPU ({required.arch}) and {who} is "
                                 f"{family(host.arch)} ({host.arch}): a guest cannot run on another instruction set")
    if required.arch == "x86_64" and host.arch in ("i686", "i386"):
        return CpuVerdict(False, f"the workload is 64-bit (x86_64) and {who} is 32-bit ({host.arch})")
    model = models().get(required.model or "")
    vendor_bound = (model is not None and model.vendor is not None) or live
    if required.vendor and host.vendor and required.vendor != host.vendor and vendor_bound:
        what = f"CPU model {required.model} is {required.vendor}-only" if model and model.vendor else \
            f"a running guest keeps its {required.vendor} CPU"
        return CpuVerdict(False, f"CPU vendors do not match: {what} and {who} is {host.vendor}; boot it cold on a "
                                 "generic model (e.g. qemu64 plus common features) instead")
    missing = tuple(sorted(required.all_features() - host.all_features()))
    if missing:
        shown = ", ".join(missing[:12]) + (f" and {len(missing) - 12} more" if len(missing) > 12 else "")
        return CpuVerdict(False, f"{who} lacks {len(missing)} CPU feature(s) the workload needs: {shown}", missing)
    return CpuVerdict(True, f"{who} offers every CPU feature the workload needs"
                            + (f" (model {required.model})" if required.model else ""))


def baseline(hosts: Sequence[CpuSpec]) -> Baseline:
    """The CPU a guest may be given so that it can live-migrate between any two of ``hosts``."""
    if not hosts:
        raise ValidationError("baseline of an empty pool: name at least one host")
    families = _group(hosts, lambda h: family(h.arch))
    if len(families) > 1:
        return Baseline(False, f"the pool mixes {_describe(families)}: no CPU model runs on more than one "
                               "instruction set; split the pool", groups=families)
    vendors = _group(hosts, lambda h: h.vendor or "unknown")
    if len(vendors) > 1:
        return Baseline(False, f"CPU vendors do not match ({_describe(vendors)}): a running guest cannot "
                               "live-migrate between vendors; split the pool by vendor", groups=vendors)
    common = frozenset.intersection(*(h.all_features() for h in hosts))
    vendor = hosts[0].vendor
    candidates = [m for m in models().values() if m.features <= common and (m.vendor in (None, vendor))]
    best = max(candidates, key=lambda m: (len(m.features), m.vendor is not None, m.name), default=None)
    extra = common - (best.features if best else frozenset())
    cpu = CpuSpec(hosts[0].arch, vendor, best.name if best else None, frozenset(extra), "baseline")
    return Baseline(True, f"{len(hosts)} host(s) share {len(common)} CPU features"
                          + (f"; richest common model {best.name} plus {len(extra)} feature(s)" if best else ""), cpu)


def _group(hosts: Sequence[CpuSpec], key: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for i, h in enumerate(hosts):
        out.setdefault(key(h), []).append(h.name or f"host{i}")
    return out


def _describe(groups: dict[str, list[str]]) -> str:
    return "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(groups.items()))


# --- libvirt hosts ------------------------------------------------------------------------------------


def compare_libvirt(conn: Any, required: CpuSpec, *, virttype: str = "kvm") -> CpuVerdict:
    """Ask a libvirt daemon (``conn``, a libvirt.virConnect) whether its host can run ``required``."""
    import libvirt

    who = f"host {conn.getHostname()}"
    if family(required.arch) != family(conn.getInfo()[0]):
        return compare(required, CpuSpec(conn.getInfo()[0], name=conn.getHostname()))
    try:
        result = conn.compareHypervisorCPU(None, required.arch, None, virttype, required.libvirt_xml(),
                                           libvirt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE)
    except libvirt.libvirtError as exc:
        message = exc.get_error_message() or str(exc)
        if exc.get_error_code() == libvirt.VIR_ERR_CPU_INCOMPATIBLE:
            return CpuVerdict(False, f"{who}: {message}")
        raise ValidationError(f"{who} cannot compare CPUs: {message}") from exc
    if result == libvirt.VIR_CPU_COMPARE_INCOMPATIBLE:
        return CpuVerdict(False, f"{who}: libvirt reports the CPU incompatible")
    kind = {libvirt.VIR_CPU_COMPARE_IDENTICAL: "identical to", libvirt.VIR_CPU_COMPARE_SUPERSET: "a superset of"}
    return CpuVerdict(True, f"{who}: the host CPU is {kind.get(result, 'compatible with')} what the workload needs")


def baseline_libvirt(conn: Any, hosts: Sequence[CpuSpec], *, virttype: str = "kvm") -> Baseline:
    """baselineHypervisorCPU over the hosts' CPUs: the migratable CPU libvirt would give a guest in this pool."""
    import libvirt

    if not hosts:
        raise ValidationError("baseline of an empty pool: name at least one host")
    pure = baseline(hosts)
    if not pure.ok:  # libvirt would fail too ("CPU vendors do not match"); keep our reason with its groups
        return pure
    try:
        xml = conn.baselineHypervisorCPU(None, hosts[0].arch, None, virttype, [h.libvirt_xml() for h in hosts],
                                         libvirt.VIR_CONNECT_BASELINE_CPU_MIGRATABLE)
    except libvirt.libvirtError as exc:
        return Baseline(False, f"libvirt: {exc.get_error_message() or exc}")
    root = etree.fromstring(xml.encode(), etree.XMLParser(no_network=True, resolve_entities=False))
    feats = {f.get("name", "") for f in root.findall("feature") if f.get("policy", "require") == "require"}
    cpu = CpuSpec(hosts[0].arch, vendor_name(root.findtext("vendor")) or hosts[0].vendor, root.findtext("model"),
                  frozenset(feats), "baseline")
    return Baseline(True, f"libvirt baseline of {len(hosts)} host(s): {cpu.model} plus {len(feats)} feature(s)", cpu)


@functools.cache
def _cpuid_bits(cpu_map: Path = CPU_MAP) -> tuple[tuple[int, str, int, str], ...]:
    """libvirt's x86 feature table as (leaf, register, mask, feature name), sub-leaf 0 only."""
    path = cpu_map / "x86_features.xml"
    if not path.is_file():
        return ()
    root = etree.parse(str(path), etree.XMLParser(no_network=True, resolve_entities=False)).getroot()
    out = []
    for feature in root.findall("feature"):
        cpuid = feature.find("cpuid")
        if cpuid is None or int(cpuid.get("ecx_in", "0"), 16) != 0:
            continue
        for reg in ("eax", "ebx", "ecx", "edx"):
            if cpuid.get(reg):
                out.append((int(cpuid.get("eax_in", "0"), 16), reg, int(cpuid.get(reg, "0"), 16),
                            feature.get("name", "")))
    return tuple(out)


def cpuid_features(leaves: Mapping[int, Mapping[str, int]], cpu_map: Path = CPU_MAP) -> list[str]:
    """libvirt feature names of the bits set in raw CPUID registers (``{leaf: {"ecx": value, ...}}``).

    Hypervisors that report CPUID dumps rather than names (vSphere's ``HostHardwareInfo.cpuFeature``)
    get the same vocabulary as libvirt hosts, so the scheduler compares them with one table.
    """
    return sorted({name for leaf, reg, mask, name in _cpuid_bits(cpu_map)
                   if leaf in leaves and leaves[leaf].get(reg, 0) & mask == mask})
