"""The registry of step actions: what a plan's ``action`` names resolve to.

An action is ``async def fn(ctx: StepContext, **args) -> dict | None``. Its contract, because any
step may run again after a crash: it is idempotent. It looks at the world before acting (a "create
VM" first looks for a VM carrying the workload's tag) and returns what later steps need (merged
into the operation's ``outputs``). Actions raise typed errors; :func:`is_transient` decides which
ones are retried with backoff and which fail the step at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import InterfaceError, OperationalError

from metavmm.foundation.errors import (
    AuthError,
    ConfigError,
    DriverError,
    MetavmmError,
    ProviderConflict,
    ProviderNotFound,
    ProviderQuotaExceeded,
    ProviderUnavailable,
)

if TYPE_CHECKING:
    from metavmm.services.operations.context import StepContext

ActionFn = Callable[..., Awaitable[dict[str, Any] | None]]


class StepCancelled(MetavmmError):
    """Raised by a long-waiting action that saw its operation's cancel request: the engine rolls back
    and ends the operation ``cancelled`` (not ``rolled_back`` with an error)."""


class StepWaiting(Exception):
    """Raised by an action that waits for something outside its operation (a child operation): "not
    yet, ask me again in ``delay_s``". The engine parks the operation (lease and executor slot given
    back, ``not_before`` set) and a later claim runs the step again, so such an action only checks and
    never blocks; a waiting operation therefore never keeps the ones it waits for from running."""

    def __init__(self, reason: str, delay_s: float) -> None:
        super().__init__(reason)
        self.delay_s = delay_s


@dataclass(frozen=True, slots=True)
class ActionSpec:
    name: str
    fn: ActionFn
    doc: str


ACTIONS: dict[str, ActionSpec] = {}


def action(name: str) -> Callable[[ActionFn], ActionFn]:
    """Register ``fn`` under ``name`` (a dotted verb such as ``vm.create``)."""

    def register(fn: ActionFn) -> ActionFn:
        if name in ACTIONS and ACTIONS[name].fn is not fn:
            raise ValueError(f"step action {name!r} is registered twice")
        ACTIONS[name] = ActionSpec(name, fn, (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "")
        return fn

    return register


def get_action(name: str) -> ActionSpec:
    load_builtin_actions()
    try:
        return ACTIONS[name]
    except KeyError:
        raise ConfigError(f"unknown step action {name!r}; known: {', '.join(sorted(ACTIONS))}") from None


def load_builtin_actions() -> None:
    """Import the modules that register the broker's own actions (once; imports are cached)."""
    from metavmm.services.operations import (  # noqa: F401
        batch_actions,
        disk_actions,
        image_actions,
        link_actions,
        quota_actions,
        resize_actions,
        resource_actions,
        vm_actions,
    )
    from metavmm.services.protection import dr_actions, ha_actions  # noqa: F401


async def run_action(ctx: StepContext, name: str, args: dict[str, Any]) -> dict[str, Any]:
    return (await get_action(name).fn(ctx, **args)) or {}


def is_transient(exc: BaseException) -> bool:
    """Worth another try after a backoff: unreachable or busy providers, timeouts, I/O hiccups.

    Wrong input, missing resources, refused credentials, quotas and unsupported verbs fail at once:
    trying again would give the same answer.
    """
    if isinstance(exc, ProviderUnavailable | TimeoutError | ConnectionError | OperationalError | InterfaceError):
        return True  # Operational/InterfaceError: the catalog blinked (failover, dropped connection)
    if isinstance(exc, AuthError | ProviderNotFound | ProviderQuotaExceeded | ProviderConflict):
        return False
    if isinstance(exc, DriverError):
        return True  # an untyped provider failure: give it the configured attempts
    if isinstance(exc, MetavmmError):
        return False
    return isinstance(exc, OSError)
