"""``metavmm cluster create|list|show|delete|scale|reset-seat``: a class of seats, through the cluster service.

The commands act as the operator (an admin) of ``--project``, like ``metavmm operations provision``, and go
through the same cluster service as ``POST /api/v1/clusters`` (which creates every seat through the one
workload service). They only write operations: a running broker (``metavmm serve``, or ``metavmm
operations run``) runs them; ``--wait`` follows the seats until each ended.

A roster file gives seats, in serial order, an owner and an SSH key: one line per seat, ``name`` then,
optionally, the key (``ada ssh-ed25519 AAAA... ada@laptop``); blank lines and ``#`` comments are skipped.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.markup import escape
from rich.table import Table

from metavmm.cli.common import MetavmmGroup, Settings, console, pass_settings
from metavmm.foundation.errors import ValidationError
from metavmm.services.vocabulary import DEFAULT_PROJECT

T = TypeVar("T")


@click.group("cluster", cls=MetavmmGroup)
def cluster_group() -> None:
    """Virtual clusters: a class of identical computes created, scaled and deleted at once."""


def _service(settings: Settings, project: str | None,
             work: Callable[[Any, Any], Awaitable[T]]) -> T:
    """Run ``work(service, caller)`` with a cluster service over this catalog, as the project's operator."""
    from metavmm.cli.operations import _run
    from metavmm.services.clusters import ClusterService
    from metavmm.services.identity import operator_identity
    from metavmm.services.operations.engine import Engine
    from metavmm.services.placement import Placer
    from metavmm.services.workloads.service import WorkloadService

    async def go(sessions: Any) -> T:
        engine = Engine(sessions, settings.config, settings.database)
        await engine.start(run_steps=False)  # submit only: a broker runs the steps
        try:
            async with sessions() as session:
                caller = await operator_identity(session, project)
                await session.commit()
            workloads = WorkloadService(sessions, settings.config, engine, Placer(settings.config))
            return await work(ClusterService(workloads), caller)
        finally:
            await engine.stop()

    return _run(settings, go)


def read_roster(path: str) -> tuple[Any, ...]:
    """The roster file's seats (see the module docstring)."""
    from metavmm.services.clusters import Seat

    seats = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        owner, _, key = line.partition(" ")
        seats.append(Seat(owner=owner, ssh_key=key.strip() or None))
    return tuple(seats)


def _print(view: Any, as_json: bool = False) -> None:
    c = view.cluster
    if as_json:
        console.print_json(json.dumps({
            "id": c.id, "name": c.name, "site": c.site, "running": view.running, "expires_at":
            c.expires_at.isoformat() if c.expires_at else None,
            "placement": c.template.get("placement", {}).get("summary"),
            "seats": [{"serial": s.serial, "hostname": s.hostname, "address": s.address, "mac": s.mac,
                       "owner": s.owner, "workload_id": s.workload.id, "state": s.workload.observed_state,
                       "progress": s.operation.progress if s.operation else None} for s in view.seats]}))
        return
    console.print(f"cluster {escape(c.name)} ({c.id}) at {escape(str(c.site))}: {view.running}/{len(view.seats)} "
                  f"running" + (f", expires {c.expires_at:%Y-%m-%d %H:%M} UTC" if c.expires_at else ""),
                  highlight=False)
    summary = c.template.get("placement", {}).get("summary")
    if summary:
        console.print(f"  {escape(summary)}", highlight=False)
    table = Table("seat", "hostname", "address", "mac", "owner", "state", "operation")
    for s in view.seats:
        op = s.operation
        table.add_row(str(s.serial), s.hostname, s.address or "-", s.mac, escape(s.owner) or "-",
                      s.workload.observed_state, f"{op.kind} {op.state} {op.progress:.0%}" if op else "-")
    console.print(table)


async def _follow(service: Any, caller: Any, cluster_id: str, interval: float) -> Any:
    """Poll until every seat's latest operation ended, printing the count when it changes."""
    from metavmm.services.operations.store import ACTIVE

    last = None
    while True:
        view = await service.get(caller, cluster_id)
        busy = sum(1 for s in view.seats if s.operation is not None and s.operation.state in ACTIVE)
        if busy != last:
            console.print(f"{view.running}/{len(view.seats)} running, {busy} operations under way", highlight=False)
            last = busy
        if busy == 0:
            return view
        await asyncio.sleep(interval)


def _project_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--project", default=DEFAULT_PROJECT, show_default=True, envvar="METAVMM_PROJECT",
                        help="the project that owns the class (and whose quota it counts against)")(fn)


@cluster_group.command("create")
@click.argument("name")
@click.option("--seats", required=True, type=click.IntRange(1, 500))
@click.option("--image", help="a marketplace image the project may launch (id, name or publisher/name)")
@click.option("--flavor")
@click.option("--vcpus", type=click.IntRange(1, 1024))
@click.option("--ram-mib", type=click.IntRange(1))
@click.option("--disk-gib", type=click.IntRange(0), default=0, show_default=True)
@click.option("--network", "network_id", help="an existing network workload (its range gives the addresses)")
@click.option("--cidr", help="or a new network with this range (10.20.0.0/24)")
@click.option("--first-address", type=click.IntRange(2), default=10, show_default=True,
              help="the host number of seat 1's address in the range")
@click.option("--hostname-pattern", default="{cluster}-{n:02d}", show_default=True)
@click.option("--ssh-key", help="every seat's SSH public key (a roster line's key wins)")
@click.option("--ssh-key-file", type=click.Path(exists=True, dir_okay=False))
@click.option("--user-data", "user_data_file", type=click.Path(exists=True, dir_okay=False),
              help="a cloud-init user-data file for every seat")
@click.option("--roster", type=click.Path(exists=True, dir_okay=False), help="per seat: name [ssh key]")
@click.option("--strategy", type=click.Choice(["spread", "pack"]), default="spread", show_default=True)
@click.option("--site")
@click.option("--expires-in", type=click.FloatRange(min=0, min_open=True), help="hours until the class is deleted")
@click.option("--wait", is_flag=True, help="follow the seats until each create ended (a broker runs them)")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.05, 60))
@click.option("--json", "as_json", is_flag=True)
@_project_option
@pass_settings
def create_cmd(settings: Settings, name: str, seats: int, image: str | None, flavor: str | None, vcpus: int | None,
               ram_mib: int | None, disk_gib: int, network_id: str | None, cidr: str | None, first_address: int,
               hostname_pattern: str, ssh_key: str | None, ssh_key_file: str | None, user_data_file: str | None,
               roster: str | None, strategy: str, site: str | None, expires_in: float | None, wait: bool,
               interval: float, as_json: bool, project: str) -> None:
    """Create a class of SEATS computes in one request, as POST /api/v1/clusters does."""
    from metavmm.services.clusters import ClusterRequest

    if ssh_key and ssh_key_file:
        raise ValidationError("give --ssh-key or --ssh-key-file, not both")
    key = Path(ssh_key_file).read_text().strip() if ssh_key_file else ssh_key
    req = ClusterRequest(
        name=name, seats=seats, image=image, flavor=flavor, vcpus=vcpus, ram_mib=ram_mib, disk_gib=disk_gib,
        network_id=network_id, cidr=cidr, first_address=first_address, hostname_pattern=hostname_pattern,
        ssh_key=key, user_data=Path(user_data_file).read_text() if user_data_file else None,
        roster=read_roster(roster) if roster else (), strategy=strategy,  # type: ignore[arg-type]
        site=site, expires_at=datetime.now(UTC) + timedelta(hours=expires_in) if expires_in else None)

    async def work(service: Any, caller: Any) -> Any:
        view = await service.create(caller, req)
        return await _follow(service, caller, view.cluster.id, interval) if wait else view

    _print(_service(settings, project, work), as_json)


@cluster_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@_project_option
@pass_settings
def list_cmd(settings: Settings, as_json: bool, project: str) -> None:
    """The project's clusters: seats running of seats, site, expiry."""
    mine = _service(settings, project, lambda s, caller: s.list_clusters(caller, project_id=caller.project_id))
    if as_json:
        console.print_json(json.dumps([{"id": v.cluster.id, "name": v.cluster.name, "seats": len(v.seats),
                                        "running": v.running, "site": v.cluster.site} for v in mine]))
        return
    table = Table("name", "id", "site", "running", "expires")
    for v in mine:
        c = v.cluster
        table.add_row(c.name, c.id, str(c.site), f"{v.running}/{len(v.seats)}",
                      f"{c.expires_at:%Y-%m-%d %H:%M}" if c.expires_at else "-")
    console.print(table)


@cluster_group.command("show")
@click.argument("cluster")
@click.option("--wait", is_flag=True, help="follow until no seat has an operation under way")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.05, 60))
@click.option("--json", "as_json", is_flag=True)
@_project_option
@pass_settings
def show_cmd(settings: Settings, cluster: str, wait: bool, interval: float, as_json: bool, project: str) -> None:
    """Each seat of CLUSTER (a name or an id): hostname, address, MAC, owner, state, latest operation."""
    async def work(service: Any, caller: Any) -> Any:
        return await (_follow(service, caller, cluster, interval) if wait else service.get(caller, cluster))

    _print(_service(settings, project, work), as_json)


@cluster_group.command("delete")
@click.argument("cluster")
@_project_option
@pass_settings
def delete_cmd(settings: Settings, cluster: str, project: str) -> None:
    """Delete every seat of CLUSTER (and the network it made); prints the operations."""
    ops = _service(settings, project, lambda s, caller: s.delete(caller, cluster))
    console.print(f"cluster {escape(cluster)}: {len(ops)} delete operations submitted", highlight=False)
    for op in ops:
        console.print(f"  operation {op.id} ({op.kind} of {op.target_id})", highlight=False)


@cluster_group.command("scale")
@click.argument("cluster")
@click.option("--seats", required=True, type=click.IntRange(1, 500))
@click.option("--json", "as_json", is_flag=True)
@_project_option
@pass_settings
def scale_cmd(settings: Settings, cluster: str, seats: int, as_json: bool, project: str) -> None:
    """Add seats (the lowest free serials) or remove the highest; the others keep name, address and MAC."""
    _print(_service(settings, project, lambda s, caller: s.scale(caller, cluster, seats)), as_json)


@cluster_group.command("reset-seat")
@click.argument("cluster")
@click.argument("serial", type=click.IntRange(1, 500))
@_project_option
@pass_settings
def reset_cmd(settings: Settings, cluster: str, serial: int, project: str) -> None:
    """Reset seat SERIAL of CLUSTER to its base image (its VM deleted and created again, same identity)."""
    op = _service(settings, project, lambda s, caller: s.reset_seat(caller, cluster, serial))
    console.print(f"operation {op.id} (reset of seat {serial}): {op.state}", highlight=False)
