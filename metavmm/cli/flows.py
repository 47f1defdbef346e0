"""``metavmm operations provision|act|migrate|delete``: submit a flow, and with ``--wait`` follow it.

Each command writes the operation (the plan of :mod:`metavmm.services.operations.flows`) and prints its
id; ``--wait`` then shows the same progress bars as ``metavmm operations watch`` until it ends (exit
status 0 only when it succeeded). Who runs the steps: the broker that serves this catalog (its
in-process executor polls for new operations; procrastinate workers get a job), or, with ``--here``,
an executor inside this command, for an admin without a running broker (``--here`` implies ``--wait``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import click

from metavmm.catalog.models import Operation
from metavmm.cli.operations import (
    Settings,
    _run,
    console,
    exit_for,
    operations_group,
    pass_settings,
    watch_operation,
)
from metavmm.foundation.errors import ConfigError
from metavmm.services.operations import flows
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.store import Sessions

Submit = Callable[[Engine], Awaitable[Operation]]


def _submit(settings: Settings, submit: Submit, *, wait: bool, here: bool, interval: float) -> None:
    if here and settings.config.operations.executor != "inprocess":
        raise ConfigError("--here runs the steps in this command, but this federation's workers run them "
                          "(operations.executor: procrastinate): use --wait")

    async def work(sessions: Sessions) -> Operation | None:
        engine = Engine(sessions, settings.config, settings.database)
        await engine.start(run_steps=here)
        try:
            op = await submit(engine)
            console.print(f"operation {op.id} ({op.kind} of {op.target_id}): {op.state}", highlight=False)
            if not (wait or here):
                console.print(f"follow it with: metavmm operations watch {op.id}", highlight=False)
                return None
            return await watch_operation(sessions, op.id, interval)
        finally:
            await engine.stop()

    op = _run(settings, work)
    if op is not None:
        exit_for(op)


def _follow(fn: Callable[..., None]) -> Callable[..., None]:
    """The options every flow command shares."""
    for option in (
        click.option("--wait", is_flag=True, help="show progress bars until the operation ends"),
        click.option("--here", is_flag=True, help="run the steps in this command (no broker needed); implies --wait"),
        click.option("--interval", default=0.5, show_default=True, type=click.FloatRange(0.05, 60)),
        click.option("--idempotency-key", help="a retried command with the same key gets the same operation"),
    ):
        fn = option(fn)
    return fn


@operations_group.command("provision")
@click.option("--name", required=True)
@click.option("--provider", required=True, help="a provider of the federation file")
@click.option("--region", required=True)
@click.option("--image", required=True, help="the provider's image id (or path, for libvirt)")
@click.option("--vcpus", type=click.IntRange(1, 1024), default=1, show_default=True)
@click.option("--ram-mib", type=click.IntRange(16), default=512, show_default=True)
@click.option("--flavor")
@click.option("--host", help="a host of the region (where the provider lets an admin choose)")
@_follow
@pass_settings
def ops_provision(settings: Settings, name: str, provider: str, region: str, image: str, vcpus: int, ram_mib: int,
                  flavor: str | None, host: str | None, wait: bool, here: bool, interval: float,
                  idempotency_key: str | None) -> None:
    """Create a compute at PROVIDER/REGION (an admin's direct placement; REST creates go through the scheduler)."""
    _submit(settings, lambda e: flows.provision(e, name=name, provider=provider, region=region, image=image,
                                                vcpus=vcpus, ram_mib=ram_mib, flavor=flavor, host=host,
                                                idempotency_key=idempotency_key),
            wait=wait, here=here, interval=interval)


@operations_group.command("act")
@click.argument("workload_id")
@click.argument("verb", type=click.Choice(sorted(flows.POWER_TARGET)))
@_follow
@pass_settings
def ops_act(settings: Settings, workload_id: str, verb: str, wait: bool, here: bool, interval: float,
            idempotency_key: str | None) -> None:
    """Start, stop, suspend or restart a workload's VM."""
    _submit(settings, lambda e: flows.power(e, workload_id, verb, idempotency_key=idempotency_key),
            wait=wait, here=here, interval=interval)


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
                disk_format: str, boot_marker: str | None, wait: bool, here: bool, interval: float,
                idempotency_key: str | None) -> None:
    """Move a workload: live (default) or cold, with the progress of every step."""
    if cold:
        _submit(settings, lambda e: flows.cold_migrate(e, workload_id, target_provider=target, target_region=region,
                                                       disk_format=disk_format, boot_marker=boot_marker,
                                                       idempotency_key=idempotency_key),
                wait=wait, here=here, interval=interval)
    else:
        _submit(settings, lambda e: flows.live_migrate(e, workload_id, target_provider=target, target_host=host,
                                                       idempotency_key=idempotency_key),
                wait=wait, here=here, interval=interval)


@operations_group.command("delete")
@click.argument("workload_id")
@_follow
@pass_settings
def ops_delete(settings: Settings, workload_id: str, wait: bool, here: bool, interval: float,
               idempotency_key: str | None) -> None:
    """Delete a workload's VM (and the image a migration made for it alone)."""
    _submit(settings, lambda e: flows.delete(e, workload_id, idempotency_key=idempotency_key),
            wait=wait, here=here, interval=interval)
