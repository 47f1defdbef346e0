"""Lazy registry of driver classes by provider kind, so provider SDKs stay optional extras."""

from __future__ import annotations

import importlib
from typing import Any

from metavmm.drivers.base import Driver
from metavmm.foundation.errors import ConfigError
from metavmm.foundation.kinds import KINDS


def driver_class(kind: str) -> type:
    info = KINDS.get(kind)
    if info is None:
        raise ConfigError(f"no driver for provider kind {kind!r}; known: {', '.join(sorted(KINDS))}")
    module_name, _, cls_name = info.driver.partition(":")
    extra = info.extra
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


def import_target(kind: str, wanted: str) -> str:
    """The disk format (a :mod:`metavmm.translators.disk` target name) a disk bound for a provider of
    ``kind`` is converted to: ``wanted`` when the kind's driver takes it as it is, else the driver's
    ``image_import_target`` (GCE takes raw only; Azure only a fixed, MiB-aligned VHD, ``vpc:azure``, so a
    plain ``vpc`` is not enough). Kinds without one, or whose SDK is missing, get ``wanted``."""
    try:
        cls = driver_class(kind)
    except ConfigError:
        return wanted
    target: str | None = getattr(cls, "image_import_target", None)
    if target is None:
        return wanted
    name, _, variant = wanted.partition(":")
    target_name, _, target_variant = target.partition(":")
    if name in cls.image_import_formats and (name != target_name or variant == target_variant):
        return wanted
    return target
