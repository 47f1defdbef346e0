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
