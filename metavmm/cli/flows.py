"""``metavmm operations provision|act|resize|migrate|delete``: submit a change, and with ``--wait`` follow it.

provision, act, resize and delete go through the workload service, as REST and OCCI requests do: the
same validation and error messages, the project's quota, the scheduler's placement, idempotency keys.
The command acts as an admin (see :func:`metavmm.services.identity.operator_identity`), in the project
``--project`` names (default: the federation's default project). migrate submits the engine's
migration flow (the service has no migration yet).

Each command writes the operation and prints its id; ``--wait`` then shows the same progress bars as
``metavmm operations watch`` until it ends (exit status 0 only when it succeeded). The command never
runs steps itself: the broker that serves this catalog does (its in-process executor polls for new
operations; procrastinate workers get a job). An admin without a running broker starts one that only
runs steps, ``metavmm operations run``, or ``metavmm serve``; ``--wait`` says so when nothing has
claimed the operation after a while, and keeps waiting.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import click
from rich.markup import escape

from metavmm.cli.operations import (
    Settings,
    _run,
    console,
    exit_for,
    operations_group,
    pass_settings,
    watch_operation,
)
from metavmm.services.vocabulary import COMPUTE_ACTIONS, DEFAULT_PROJECT

if TYPE_CHECKING:  # the catalog, engine, scheduler and services load when a command runs, not for --help
    from metavmm.catalog.models import Operation
    from metavmm.services.identity import Identity
    from metavmm.services.operations.engine import Engine
    from metavmm.services.operations.store import Sessions
    from metavmm.services.workloads.service import WorkloadService

Submit = Callable[["Engine"], Awaitable["Operation"]]
Change = Callable[["WorkloadService", "Identity"], Awaitable["Operation"]]


def _submit(settings: Settings, submit: Submit, *, wait: bool, interval: float) -> Operation | None:
    """Write the operation ``submit`` makes; with ``wait``, follow it and return it once it succeeded
    (any other end exits 1 with the reason)."""
    from metavmm.services.operations.engine import Engine

    mode = settings.config.operations.executor

    async def work(sessions: Sessions) -> Operation | None:
        engine = Engine(sessions, settings.config, settings.database)
        await engine.start(run_steps=False)  # submit only (procrastinate: defer a job); a broker runs it
        try:
            op = await submit(engine)
        finally:
            await engine.stop()
        console.print(f"operation {op.id} ({op.kind} of {op.target_id}): {op.state}", highlight=False)
        if not wait:
            console.print(f"follow it with: metavmm operations watch {op.id}", highlight=False)
            return None
        return await watch_operation(sessions, op.id, interval, mode=mode)

    op = _run(settings, work)
    if op is not None:
        exit_for(op)
    return op


def _change(settings: Settings, change: Change, *, project: str | None = None, wait: bool,
            interval: float) -> None:
    """Submit ``change`` through the workload service, as the operator (an admin) of ``project``."""
    from metavmm.services.identity import operator_identity
    from metavmm.services.placement import Placer
    from metavmm.services.workloads.service import WorkloadService

    async def submit(engine: Engine) -> Operation:
        async with engine.sessions() as session:
            caller = await operator_identity(session, project)
            await session.commit()  # the default project, if this made it
        service = WorkloadService(engine.sessions, settings.config, engine, Placer(settings.config))
        return await change(service, caller)

    _submit(settings, submit, wait=wait, interval=interval)


def _follow(fn: Callable[..., None]) -> Callable[..., None]:
    """The options every flow command shares."""
    for option in (
        click.option("--wait", is_flag=True, help="show progress bars until the operation ends (a running broker, "
                     "`metavmm serve` or `metavmm operations run`, runs its steps)"),
        click.option("--interval", default=0.5, show_default=True, type=click.FloatRange(0.05, 60)),
        click.option("--idempotency-key", help="a retried command with the same key gets the same operation"),
    ):
        fn = option(fn)
    return fn


@operations_group.command("provision")
@click.option("--name", help="a label (default: compute-<first 8 characters of its id>)")
@click.option("--image", help="a marketplace image the project may launch: id, name or publisher/name "
              "(default: none, an empty disk)")
@click.option("--flavor", help="a flavor of the catalog (its size wins over --vcpus/--ram-mib)")
@click.option("--vcpus", type=click.IntRange(1, 1024))
@click.option("--ram-mib", type=click.IntRange(1))
@click.option("--disk-gib", type=click.IntRange(0), default=0, show_default=True)
@click.option("--site", help="only this site")
@click.option("--provider", "providers", multiple=True, help="only this provider (repeatable)")
@click.option("--max-price", type=click.FloatRange(0), help="per hour, in the federation's currency")
@click.option("--affinity-group", help="the project's group whose members share a host")
@click.option("--anti-affinity-group", help="the project's group whose members never share a host")
@click.option("--project", default=DEFAULT_PROJECT, show_default=True, envvar="METAVMM_PROJECT",
              help="the project that owns it (and whose quota it counts against)")
@_follow
@pass_settings
def ops_provision(settings: Settings, name: str | None, image: str | None, flavor: str | None, vcpus: int | None,
                  ram_mib: int | None, disk_gib: int, site: str | None, providers: tuple[str, ...],
                  max_price: float | None, affinity_group: str | None, anti_affinity_group: str | None,
                  project: str, wait: bool, interval: float, idempotency_key: str | None) -> None:
    """Create a compute where the scheduler places it, as a REST create does (quota, placement, rules)."""
    from metavmm.services.workloads.requests import CreateRequest

    req = CreateRequest(name=name, image=image, flavor=flavor, vcpus=vcpus, ram_mib=ram_mib, disk_gib=disk_gib,
                        site=site, providers=providers, max_price_per_hour=max_price, affinity_group=affinity_group,
                        anti_affinity_group=anti_affinity_group)

    async def create(service: WorkloadService, caller: Identity) -> Operation:
        accepted = await service.create(caller, req, idempotency_key=idempotency_key)
        w = accepted.workload
        where = w.spec.get("placement", {})
        again = " (replayed: the first request's answer)" if accepted.replayed else ""
        console.print(f"workload {w.id} ({escape(w.name)}, project {escape(caller.project)}){again}: "
                      f"{escape(where.get('summary', ''))}", highlight=False)
        return accepted.operation

    _change(settings, create, project=project, wait=wait, interval=interval)


@operations_group.command("act")
@click.argument("workload_id")
@click.argument("verb", type=click.Choice([a for a in COMPUTE_ACTIONS if a != "save"]))
@_follow
@pass_settings
def ops_act(settings: Settings, workload_id: str, verb: str, wait: bool, interval: float,
            idempotency_key: str | None) -> None:
    """Start, stop, restart, suspend or resume a compute (refused where it does not apply, as in REST)."""
    _change(settings, lambda s, caller: s.act(caller, workload_id, verb, idempotency_key=idempotency_key),
            wait=wait, interval=interval)


@operations_group.command("resize")
@click.argument("workload_id")
@click.option("--flavor")
@click.option("--vcpus", type=click.IntRange(1, 1024))
@click.option("--ram-mib", type=click.IntRange(1))
@_follow
@pass_settings
def ops_resize(settings: Settings, workload_id: str, flavor: str | None, vcpus: int | None, ram_mib: int | None,
               wait: bool, interval: float, idempotency_key: str | None) -> None:
    """Give a placed compute a new shape (a flavor, or vCPUs and RAM); growth counts against the quota."""
    _change(settings, lambda s, caller: s.resize(caller, workload_id, flavor=flavor, vcpus=vcpus, ram_mib=ram_mib,
                                                 idempotency_key=idempotency_key),
            wait=wait, interval=interval)


@operations_group.command("migrate")
@click.argument("workload_id")
@click.option("--to", "target", required=True, help="the target provider (the same one: another host of it)")
@click.option("--host", help="live: the target host (OpenStack, sim)")
@click.option("--cold", is_flag=True, help="stop, export, convert, import and boot at the target")
@click.option("--region", help="cold: the target region")
@click.option("--format", "disk_format", default="raw", show_default=True, help="cold: the disk format on the way")
@click.option("--boot-marker", help="cold: a regex the clone's serial console must show (targets with a console)")
@_follow
@pass_settings
def ops_migrate(settings: Settings, workload_id: str, target: str, host: str | None, cold: bool, region: str | None,
                disk_format: str, boot_marker: str | None, wait: bool, interval: float,
                idempotency_key: str | None) -> None:
    """Move a workload: live (default) or cold, with the progress of every step."""
    from metavmm.services.operations import flows

    if cold:
        _submit(settings, lambda e: flows.cold_migrate(e, workload_id, target_provider=target, target_region=region,
                                                       disk_format=disk_format, boot_marker=boot_marker,
                                                       idempotency_key=idempotency_key),
                wait=wait, interval=interval)
    else:
        _submit(settings, lambda e: flows.live_migrate(e, workload_id, target_provider=target, target_host=host,
                                                       idempotency_key=idempotency_key),
                wait=wait, interval=interval)


@operations_group.command("delete")
@click.argument("workload_id")
@_follow
@pass_settings
def ops_delete(settings: Settings, workload_id: str, wait: bool, interval: float,
               idempotency_key: str | None) -> None:
    """Delete a workload (a compute's links go with it; its quota comes back once the provider let go)."""
    _change(settings, lambda s, caller: s.delete(caller, workload_id, idempotency_key=idempotency_key),
            wait=wait, interval=interval)
