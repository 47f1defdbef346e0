"""The one registry of provider kinds: every fact about a kind that more than one layer needs.

A new kind is one entry here plus its config model (:mod:`metavmm.foundation.config`) and its driver
module; everything that asks "which kinds", "which hypervisor does its image run on" or "who gives a
port its MAC" reads this table, so no layer keeps its own list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

QEMU_MACS = ("52:54:00", 0xFF)
"""QEMU's locally administered prefix; the fourth byte may be anything up to the bound."""


@dataclass(frozen=True, slots=True)
class ProviderKindInfo:
    name: str
    driver: str
    """``module:Class`` of its driver, imported lazily so a provider SDK stays an optional extra."""
    extra: str
    """The pip extra that installs its SDK (``pip install 'metavmm[EXTRA]'``); empty: none needed."""
    hypervisor: str
    """The hypervisor family its VMs run on when the catalog knows no host (clouds): what a disk is
    converted for on its way there."""
    runs_vms: bool = True
    """False for the simulated provider: it schedules and answers, but boots nothing."""
    assigns_mac: bool = False
    """Its network service gives each port its MAC (neutron): the broker draws none and records none."""
    mac_range: tuple[str, int] = QEMU_MACS
    """Where a broker-drawn MAC comes from: the prefix and the largest fourth byte the platform accepts."""
    lists_flavors: bool = True
    """Its inventory lists flavors (named shapes). False: a VM takes any shape (libvirt, vCenter), so an
    hourly price there must state the shape it is for; the scheduler has no flavor to learn it from."""
    live_between_providers: bool = False
    """Two providers of this kind move a running VM into each other (two libvirt daemons: the target's
    URI); elsewhere a live migration stays inside one provider."""


KINDS: Mapping[str, ProviderKindInfo] = MappingProxyType({k.name: k for k in (
    ProviderKindInfo("libvirt", "metavmm.drivers.libvirt:LibvirtDriver", "libvirt", "qemu", lists_flavors=False,
                     live_between_providers=True),
    ProviderKindInfo("openstack", "metavmm.drivers.openstack:OpenStackDriver", "openstack", "kvm", assigns_mac=True),
    # vCenter accepts manually set MACs only in VMware's static range 00:50:56:00:00:00-00:50:56:3F:FF:FF
    ProviderKindInfo("vmware", "metavmm.drivers.vmware:VmwareDriver", "vmware", "esxi", mac_range=("00:50:56", 0x3F),
                     lists_flavors=False),
    ProviderKindInfo("aws", "metavmm.drivers.aws:AwsDriver", "aws", "xen"),
    ProviderKindInfo("gcp", "metavmm.drivers.gce:GceDriver", "gcp", "kvm", assigns_mac=True),
    ProviderKindInfo("azure", "metavmm.drivers.azure:AzureDriver", "azure", "hyperv"),
    # a partner's OCCI site: aiohttp is a core dependency; what the partner runs its guests on is its own
    ProviderKindInfo("occi", "metavmm.drivers.occi:OcciDriver", "", "kvm"),
    ProviderKindInfo("sim", "metavmm.drivers.sim:SimDriver", "", "fake", runs_vms=False),
)})


def kind_info(name: str) -> ProviderKindInfo | None:
    return KINDS.get(name)
