"""``metavmm marketplace``: list, show, publish, replicate, launch; signed image lists (keygen, sign-list,
subscribe, subscriptions, sync-list). The commands call the same services as REST, as the site operator (admin).

The group receives the main command's settings (federation file, database) as the click context object;
it does not import :mod:`metavmm.cli.main`, which also runs as ``python -m metavmm.cli.main``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from metavmm.catalog import db
from metavmm.catalog.db import session_scope
from metavmm.cli.flows import _change, _follow, _submit
from metavmm.foundation.errors import ValidationError
from metavmm.services.vocabulary import DEFAULT_PROJECT

if TYPE_CHECKING:  # SQLAlchemy, the tables and the marketplace services load when a command runs, not for --help
    from sqlalchemy.ext.asyncio import async_sessionmaker
    from sqlmodel.ext.asyncio.session import AsyncSession

    from metavmm.catalog.models import Operation
    from metavmm.services.identity import Identity
    from metavmm.services.workloads.service import WorkloadService

T = TypeVar("T")
Settings = Any  # metavmm.cli.main.Settings: .config (FederationConfig) and .database (URL)
console = Console(width=None if sys.stdout.isatty() else 240)
pass_settings = click.pass_obj


def _run(settings: Settings, work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]], *,
         write: bool = False) -> T:
    async def main() -> T:
        if write:
            await db.upgrade_async(settings.database)
        engine = db.make_engine(settings.database)
        try:
            return await work(db.make_sessionmaker(engine))
        finally:
            await engine.dispose()

    if not write:
        db.require_current_schema(settings.database)
    return asyncio.run(main())


async def _noop(_maker: Any) -> None:
    return None


def _dump(model: Any) -> None:
    click.echo(json.dumps(model.model_dump(mode="json"), indent=2))


@click.group("marketplace")
def marketplace() -> None:
    """Images published once by a school, launched at any site."""


@marketplace.command("list")
@click.option("--q", help="words in the name or description")
@click.option("--name")
@click.option("--publisher")
@click.option("--os")
@click.option("--os-version")
@click.option("--arch")
@click.option("--hypervisor")
@click.option("--format", "fmt")
@click.option("--version")
@click.option("--visibility", multiple=True, type=click.Choice(["public", "federation", "school", "project"]))
@click.option("--tag", multiple=True, help="entries with all these tags")
@click.option("--port", multiple=True, help="entries exposing all these ports (22/tcp)")
@click.option("--fits-vcpus", type=int)
@click.option("--fits-ram-mib", type=int)
@click.option("--all-versions", is_flag=True, help="include superseded and expired versions")
@click.option("--sort", type=click.Choice(["name", "publisher", "updated", "created", "size", "os"]), default="updated")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def list_cmd(settings: Settings, fmt: str | None, as_json: bool, **filters: Any) -> None:
    """Search the marketplace; every entry field is a filter."""
    from metavmm.services.marketplace.entries import ADMIN, LIST_COLUMNS, ImageQuery, list_row, render, search

    filters = {k: (list(v) if isinstance(v, tuple) else v) for k, v in filters.items() if v not in (None, (), False)}
    query = ImageQuery.model_validate({**filters, **({"format": fmt} if fmt else {})})

    async def work(maker: async_sessionmaker[AsyncSession]) -> tuple[list[Any], int]:
        async with maker() as session:
            rows, total = await search(session, query, ADMIN)
            return ([await render(session, r) for r in rows] if as_json else rows), total

    rows, total = _run(settings, work)
    if as_json:
        click.echo(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    table = Table(title=f"marketplace images ({len(rows)} of {total})")
    table.add_column("id")
    for col in LIST_COLUMNS:
        table.add_column(col, justify="right" if col == "size" else "left")
    for image in rows:
        table.add_row(image.id[:8], *list_row(image).values())
    console.print(table)


@marketplace.command("show")
@click.argument("image")
@pass_settings
def show(settings: Settings, image: str) -> None:
    """One entry (by id, name or PUBLISHER/NAME) with its replicas, as JSON."""
    from metavmm.services.marketplace.entries import ADMIN, get_image, render

    async def work(maker: async_sessionmaker[AsyncSession]) -> Any:
        async with maker() as session:
            return await render(session, await get_image(session, image, ADMIN), with_replicas=True)

    _dump(_run(settings, work))


@marketplace.command("publish")
@click.argument("source")
@click.option("--name", required=True)
@click.option("--publisher", required=True, help="the publishing school")
@click.option("--format", "fmt", required=True, help="qcow2, raw, vmdk, vdi, vhd, vhdx")
@click.option("--register", is_flag=True, help="keep the disk where it is instead of copying it into the blob store")
@click.option("--description", default="")
@click.option("--os")
@click.option("--os-version")
@click.option("--arch", default="x86_64", show_default=True)
@click.option("--hypervisor")
@click.option("--version", help="default: the current version plus one")
@click.option("--visibility", default="project", show_default=True,
              type=click.Choice(["public", "federation", "school", "project"]))
@click.option("--tag", "tags", multiple=True)
@click.option("--port", "access_ports", multiple=True, help="22/tcp ...")
@click.option("--min-vcpus", type=int, default=1, show_default=True)
@click.option("--min-ram-mib", type=int, default=0, show_default=True)
@click.option("--sha256", help="refuse the disk unless it has this SHA-256")
@click.option("--sha512", help="refuse the disk unless it has this SHA-512")
@click.option("--grace-days", type=float, default=14, show_default=True, help="how long the previous version lives")
@pass_settings
def publish_cmd(settings: Settings, source: str, fmt: str, register: bool, grace_days: float, **fields: Any) -> None:
    """Publish SOURCE (a path or http(s) URL): checksums verified, content inspected, versions chained."""
    from metavmm.services.marketplace.entries import ImageMeta, render
    from metavmm.services.marketplace.publish import publish
    from metavmm.translators.ova import OvaLimits

    fields = {k: (list(v) if isinstance(v, tuple) else v) for k, v in fields.items() if v is not None}
    try:
        meta = ImageMeta.model_validate({**fields, "format": fmt})
    except Exception as exc:  # pydantic's message names the field
        raise ValidationError(str(exc)) from None

    async def work(maker: async_sessionmaker[AsyncSession]) -> Any:
        async with session_scope(maker) as session:
            image = await publish(session, meta, source, register=register, grace=timedelta(days=grace_days),
                                  admin=True, limits=OvaLimits.from_config(settings.config.limits))
            return await render(session, image)

    with console.status("verifying and inspecting the disk..."):
        out = _run(settings, work, write=True)
    console.print(f"published [bold]{out.publisher}/{out.name}[/] v{out.version} ({out.id}) "
                  f"{out.format}, {out.size_bytes} bytes, sha256 {out.sha256}")


@marketplace.command("replicate")
@click.argument("image")
@click.option("--site", required=True)
@_follow
@pass_settings
def replicate_cmd(settings: Settings, image: str, site: str, wait: bool, interval: float,
                  idempotency_key: str | None) -> None:
    """Copy IMAGE to SITE (streamed, verified, converted, registered), or reuse the replica already there:
    an operation the broker runs; --wait follows it and names the replica."""
    from metavmm.services.marketplace.entries import ADMIN
    from metavmm.services.marketplace.launch import submit_replicate

    _run(settings, _noop, write=True)  # the schema first (a fresh database)
    op = _submit(settings, lambda engine: submit_replicate(engine, image, site, audience=ADMIN),
                 wait=wait, interval=interval)
    if op is not None:
        how = "reused" if op.outputs.get("replica_reused") else "copied"
        console.print(f"replica at {site}: {op.outputs.get('replica_image')} ({how}; operation {op.id})",
                      highlight=False)
        for note in op.outputs.get("replica_notes", []):
            console.print(f"[yellow]note:[/] {escape(note)}")


@marketplace.command("launch")
@click.argument("image")
@click.option("--name", required=True, help="the workload's name")
@click.option("--site", help="only this site (default: where the scheduler places it; a replica there costs no copy)")
@click.option("--flavor", help="a flavor of the catalog (its size wins over --vcpus and --ram-mib)")
@click.option("--vcpus", type=click.IntRange(1, 4096), help="default 1 without a flavor")
@click.option("--ram-mib", type=click.IntRange(1), help="default 512 without a flavor")
@click.option("--disk-gib", type=click.IntRange(0), default=0, show_default=True, help="0: the image's own size")
@click.option("--project", default=DEFAULT_PROJECT, show_default=True, envvar="METAVMM_PROJECT",
              help="the project that owns it (and whose quota it counts against)")
@_follow
@pass_settings
def launch_cmd(settings: Settings, image: str, name: str, site: str | None, flavor: str | None, vcpus: int | None,
               ram_mib: int | None, disk_gib: int, project: str, wait: bool, interval: float,
               idempotency_key: str | None) -> None:
    """Launch a VM from IMAGE (id, name or publisher/name): a create through the workload service, as
    REST's launch and `operations provision --image` are, so the image is replicated where the scheduler
    places it. Prints the operation; --wait follows it (a running broker runs its steps)."""
    from metavmm.services.marketplace.launch import LaunchIn, launch

    try:
        req = LaunchIn(name=name, site=site, flavor=flavor, vcpus=vcpus, ram_mib=ram_mib, disk_gib=disk_gib)
    except Exception as exc:  # pydantic's message names the field
        raise ValidationError(str(exc)) from None

    async def change(service: WorkloadService, caller: Identity) -> Operation:
        return (await launch(service, caller, image, req, idempotency_key=idempotency_key)).operation

    _change(settings, change, project=project, wait=wait, interval=interval)


@marketplace.command("keygen")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
def keygen(path: str | None) -> None:
    """Create this site's Ed25519 endorser key (default: the state dir, where the REST image list reads it)."""
    from metavmm.api.rest.marketplace import endorser_key_path
    from metavmm.services.marketplace.imagelist import generate_key

    private, public = generate_key(path or endorser_key_path())
    console.print(f"private key {private} (mode 0600); give subscribers the public key {public}")


@marketplace.command("sign-list")
@click.option("--publisher", required=True)
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False))
@click.option("--key", "key_path", type=click.Path(dir_okay=False), help="default: the site's endorser key")
@click.option("--identifier", help="default: PUBLISHER-images")
@click.option("--version", required=True, help="must grow with every list (subscribers refuse older ones)")
@click.option("--base-url", help="this broker's URL; images are then fetched from its blob endpoint")
@click.option("--valid-days", type=float, default=30, show_default=True)
@pass_settings
def sign_list_cmd(settings: Settings, publisher: str, out_path: str, key_path: str | None, identifier: str | None,
                  version: str, base_url: str | None, valid_days: float) -> None:
    """Write a signed image list of PUBLISHER's public and federation entries."""
    from metavmm.api.rest.marketplace import endorser_key_path
    from metavmm.services.marketplace.imagelist import load_private_key
    from metavmm.services.marketplace.subscriptions import publish_list

    key = load_private_key(key_path or endorser_key_path())

    async def work(maker: async_sessionmaker[AsyncSession]) -> bytes:
        async with maker() as session:
            return await publish_list(session, key, publisher=publisher, identifier=identifier or f"{publisher}-images",
                                      version=version, base_url=base_url, valid_for=timedelta(days=valid_days))

    data = _run(settings, work)
    Path(out_path).write_bytes(data)
    console.print(f"signed image list written to {out_path} ({len(data)} bytes)")


@marketplace.command("subscribe")
@click.argument("name")
@click.option("--url", required=True, help="path, file:// or http(s):// URL of the signed list")
@click.option("--key", "key_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="the endorser's public key (PEM)")
@click.option("--endorser", default="", help="the expected endorser (dc:creator)")
@click.option("--identifier", help="the expected list identifier")
@click.option("--visibility", default="federation", show_default=True,
              type=click.Choice(["public", "federation", "school", "project"]))
@pass_settings
def subscribe_cmd(settings: Settings, name: str, url: str, key_file: str, endorser: str, identifier: str | None,
                  visibility: str) -> None:
    """Subscribe to another site's signed image list, pinning its endorser's key."""
    from metavmm.services.marketplace.subscriptions import SubscriptionIn, subscribe

    req = SubscriptionIn(name=name, url=url, public_key_pem=Path(key_file).read_text(), endorser=endorser,
                         identifier=identifier, visibility=visibility)  # type: ignore[arg-type]

    async def work(maker: async_sessionmaker[AsyncSession]) -> str:
        async with session_scope(maker) as session:
            return (await subscribe(session, req)).key_id

    console.print(f"subscribed to {name}; endorser key {_run(settings, work, write=True)[:16]}...")


@marketplace.command("sync-list")
@click.argument("name", required=False)
@click.option("--all", "every", is_flag=True, help="every enabled subscription (for cron)")
@pass_settings
def sync_list_cmd(settings: Settings, name: str | None, every: bool) -> None:
    """Fetch, verify and import a subscribed image list (refused lists change nothing)."""
    from metavmm.services.marketplace.subscriptions import SyncReport, sync_enabled, sync_subscription

    if every == (name is not None):
        raise click.UsageError("give a subscription NAME or --all")
    if name is not None:
        results: dict[str, Any] = {name: _run(settings, lambda maker: sync_subscription(maker, name), write=True)}
    else:
        results = _run(settings, sync_enabled, write=True)
    for sub, report in results.items():
        if isinstance(report, SyncReport):
            console.print(f"{sub} v{report.version}: {report.added} added, {report.updated} updated, "
                          f"{report.expired} expired")
        else:
            console.print(f"[red]{sub}: refused:[/] {report}", highlight=False)
    if any(not isinstance(r, SyncReport) for r in results.values()):
        sys.exit(1)


@marketplace.command("subscriptions")
@pass_settings
def subscriptions_cmd(settings: Settings) -> None:
    """The image lists this site subscribes to, each with its status (what REST's subscriptions list says)."""
    from sqlmodel import select

    from metavmm.catalog.models import ImageListSubscription
    from metavmm.services.marketplace.subscriptions import SubscriptionOut, render_subscription

    async def work(maker: async_sessionmaker[AsyncSession]) -> list[SubscriptionOut]:
        async with maker() as session:
            rows = (await session.exec(select(ImageListSubscription).order_by(ImageListSubscription.name))).all()
        return [render_subscription(r) for r in rows]

    table = Table("name", "status", "version", "last good sync", "list expires", "images", "endorser key",
                  "last error")
    for sub in _run(settings, work):
        when = [f"{t:%Y-%m-%d %H:%M}" if t else "-" for t in (sub.last_success_at, sub.list_expires_at)]
        table.add_row(escape(sub.name), sub.status, escape(sub.last_version or "-"), *when, str(sub.image_count),
                      sub.key_id[:16], escape(sub.last_error or ""))
    console.print(table)


@marketplace.command("prune")
@pass_settings
def prune_cmd(settings: Settings) -> None:
    """Delete libvirt replicas of expired images that no VM disk is built on."""
    from metavmm.services.marketplace.replication import prune_expired

    report = _run(settings, lambda maker: prune_expired(maker, settings.config), write=True)
    for path in report.removed:
        console.print(f"removed {path}")
    for path, why in report.kept.items():
        console.print(f"kept {path}: {why}")
    console.print(f"{len(report.removed)} removed, {len(report.kept)} kept")
