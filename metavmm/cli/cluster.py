"""``metavmm cluster create|list|show|delete|scale|reset-seat``: a class of seats, through the cluster service.

The commands act as the operator (an admin) of ``--project``, like ``metavmm operations provision``, and go
through the same cluster service as ``POST /api/v1/clusters`` (which creates every seat through the one
workload service). They only write operations: a running broker (``metavmm serve``, or ``metavmm
operations run``) runs them; ``--wait`` follows the seats until each ended.

A roster file gives seats, in serial order, an owner and an SSH key: one line per seat, ``name`` then,
optionally, the key (``ada ssh-ed25519 AAAA... ada@laptop``); blank lines and ``#`` comments are skipped.
A roster whose first line (after comments) is a CSV header starting with ``name,`` gives those columns
instead, any of ``name``, ``ssh_key``, ``password`` and ``password_hash`` (a SHA-512 crypt hash), as
``POST /api/v1/clusters``'s roster lines do.

Passwords are never on the command line (where ``ps`` and the shell history would show them) and never
printed: the class's own comes from ``--ask-password`` (asked twice, not echoed), the roster's from its
file, and ``--generate-passwords FILE`` gives every seat without one a random password, written only to
FILE (created new, readable by its owner alone) as ``serial,hostname,owner,password`` lines. The service
hashes each at once (SHA-512 crypt); only the hash reaches the catalog and the seat's cloud-init.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import replace
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
    """The roster file's seats (the formats :func:`metavmm.services.clusters.parse_roster` reads)."""
    from metavmm.services.clusters import parse_roster

    return parse_roster(Path(path).read_text())


def generated_passwords(seats: int, roster: tuple[Any, ...], has_class_password: bool) -> tuple[Any, ...]:
    """The roster with a random password for every seat that has none of its own (all ``seats`` of them:
    lines added for seats past the roster's end), so no seat falls back to the class's password."""
    from metavmm.services.clusters import Seat

    if has_class_password:
        raise ValidationError("give --generate-passwords or a class password (--ask-password, --password-hash), "
                              "not both")
    lines = list(roster) + [Seat() for _ in range(seats - len(roster))]
    return tuple(s if s.password or s.password_hash else replace(s, password=secrets.token_urlsafe(12))
                 for s in lines)


def _open_secret_file(path: str) -> int:
    """A new file only its owner reads (an existing one is not overwritten: it may hold another class's)."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ValidationError(f"{path} exists; --generate-passwords writes a new file") from None


def _print(view: Any, as_json: bool = False) -> None:
    c = view.cluster
    if as_json:
        console.print_json(json.dumps({
            "id": c.id, "name": c.name, "site": c.site, "running": view.running, "expires_at":
            c.expires_at.isoformat() if c.expires_at else None,
            "placement": c.template.get("placement", {}).get("summary"),
            "networks": c.template.get("networks") or ({c.site: c.network_id} if c.network_id else {}),
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
    networks = c.template.get("networks") or {}
    if len(networks) > 1:  # a class over several sites: its network at each
        console.print("  networks: " + ", ".join(f"{escape(site)} {net}" for site, net in sorted(networks.items())),
                      highlight=False)
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


def _site_cidrs(given: tuple[str, ...]) -> dict[str, str]:
    """``--site-cidr SITE=CIDR`` options as REST's ``cidrs``."""
    out: dict[str, str] = {}
    for item in given:
        site, sep, cidr = item.partition("=")
        if not sep or not site or not cidr:
            raise ValidationError(f"--site-cidr {item!r}: give SITE=CIDR, like host0=10.20.0.0/24")
        out[site] = cidr
    return out


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
@click.option("--roster", type=click.Path(exists=True, dir_okay=False),
              help="per seat: name [ssh key], or a CSV file with a header (name,ssh_key,password,password_hash)")
@click.option("--ask-password", is_flag=True, help="ask for every seat's password (not echoed; a roster's wins)")
@click.option("--password-hash", help="or every seat's password as a SHA-512 crypt hash (openssl passwd -6)")
@click.option("--generate-passwords", "passwords_file", type=click.Path(dir_okay=False),
              help="a random password for each seat without one, written only to this new file (mode 0600)")
@click.option("--strategy", type=click.Choice(["spread", "pack"]), default="spread", show_default=True)
@click.option("--site", "sites", multiple=True,
              help="the site (name or region); repeat it for a class over several sites")
@click.option("--max-per-site", type=click.IntRange(1, 500), help="at most so many seats at one site")
@click.option("--site-cidr", "site_cidrs", multiple=True, metavar="SITE=CIDR",
              help="a class over several sites: the range of the network it makes at SITE (repeatable)")
@click.option("--expires-in", type=click.FloatRange(min=0, min_open=True), help="hours until the class is deleted")
@click.option("--wait", is_flag=True, help="follow the seats until each create ended (a broker runs them)")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.05, 60))
@click.option("--json", "as_json", is_flag=True)
@_project_option
@pass_settings
def create_cmd(settings: Settings, name: str, seats: int, image: str | None, flavor: str | None, vcpus: int | None,
               ram_mib: int | None, disk_gib: int, network_id: str | None, cidr: str | None, first_address: int,
               hostname_pattern: str, ssh_key: str | None, ssh_key_file: str | None, user_data_file: str | None,
               roster: str | None, ask_password: bool, password_hash: str | None, passwords_file: str | None,
               strategy: str, sites: tuple[str, ...], max_per_site: int | None, site_cidrs: tuple[str, ...],
               expires_in: float | None, wait: bool, interval: float, as_json: bool, project: str) -> None:
    """Create a class of SEATS computes in one request, as POST /api/v1/clusters does."""
    from metavmm.services.clusters import ClusterRequest, check_template, render_hostname

    if ssh_key and ssh_key_file:
        raise ValidationError("give --ssh-key or --ssh-key-file, not both")
    key = Path(ssh_key_file).read_text().strip() if ssh_key_file else ssh_key
    one_site = len(sites) == 1 and max_per_site is None  # one --site pins the class as REST's "site" does
    req = ClusterRequest(
        name=name, seats=seats, image=image, flavor=flavor, vcpus=vcpus, ram_mib=ram_mib, disk_gib=disk_gib,
        network_id=network_id, cidr=cidr, first_address=first_address, hostname_pattern=hostname_pattern,
        ssh_key=key, user_data=Path(user_data_file).read_text() if user_data_file else None,
        password_hash=password_hash, roster=read_roster(roster) if roster else (),
        strategy=strategy,  # type: ignore[arg-type]
        site=sites[0] if one_site else None, sites=() if one_site else sites, max_per_site=max_per_site,
        cidrs=_site_cidrs(site_cidrs),
        expires_at=datetime.now(UTC) + timedelta(hours=expires_in) if expires_in else None)
    if passwords_file:
        req = replace(req, roster=generated_passwords(seats, req.roster, ask_password or bool(password_hash)))
    check_template(req)  # a bad class is refused before a password is asked or a file written
    if ask_password:
        req = replace(req, password=click.prompt("password for every seat", hide_input=True,
                                                 confirmation_prompt=True, err=True))
        check_template(req)
    out = _open_secret_file(passwords_file) if passwords_file else None

    async def work(service: Any, caller: Any) -> Any:
        view = await service.create(caller, req)
        return await _follow(service, caller, view.cluster.id, interval) if wait else view

    try:
        view = _service(settings, project, work)
    except BaseException:
        if out is not None:
            os.close(out)
            os.unlink(passwords_file)  # type: ignore[arg-type]
        raise
    if out is not None:
        rows = io.StringIO()
        writer = csv.writer(rows)
        writer.writerow(("serial", "hostname", "owner", "password"))
        for n, seat in enumerate(req.roster, 1):
            if seat.password:
                writer.writerow((n, render_hostname(hostname_pattern, name, n), seat.owner, seat.password))
        with os.fdopen(out, "w") as f:
            f.write(rows.getvalue())
        console.print(f"passwords of {seats} seats written to {escape(passwords_file or '')} (only there)",
                      highlight=False)
    _print(view, as_json)


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
