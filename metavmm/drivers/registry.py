"""Lazy registry of driver classes by provider kind, so provider SDKs stay optional extras."""

from __future__ import annotations

import importlib
from typing import Any

from metavmm.drivers.base import Driver
from metavmm.errors import ConfigError

DRIVERS: dict[str, tuple[str, str]] = {
    # kind: ("module:Class", pip extra that provides its SDK)
    "libvirt": ("metavmm.drivers.libvirt:LibvirtDriver", "libvirt"),
    "openstack": ("metavmm.drivers.openstack:OpenStackDriver", "openstack"),
    "vmware": ("metavmm.drivers.vmware:VmwareDriver", "vmware"),
    "aws": ("metavmm.drivers.aws:AwsDriver", "aws"),
    "gcp": ("metavmm.drivers.gcp:GcpDriver", "gcp"),
    "azure": ("metavmm.drivers.azure:AzureDriver", "azure"),
    "sim": ("metavmm.drivers.sim:SimDriver", ""),
}


def driver_class(kind: str) -> type:
    try:
        target, extra = DRIVERS[kind]
    except KeyError:
        raise ConfigError(f"no driver for provider kind {kind!r}; known: {', '.join(sorted(DRIVERS))}") from None
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("metavmm"):
            raise ConfigError(f"the {kind} driver is not part of this metavmm version yet") from None
        raise ConfigError(
            f"the {kind} driver needs {exc.name}; install it with: pip install 'metavmm[{extra}]'"
        ) from None
    return getattr(module, cls_name)


def create_driver(provider_config: Any) -> Driver:
    """Build the driver for one provider entry of the federation file."""
    return driver_class(provider_config.kind)(provider_config)
