"""``metavmm catalog sync|show``: pull provider inventory into the catalog, list its rows."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click
from rich.table import Table

from metavmm.catalog import db
from metavmm.cli.common import Settings, console, err_console, pass_settings, yes


@click.group("catalog")
def catalog_group() -> None:
    """The resource catalog."""


@catalog_group.command("sync")
@click.option("--provider", "providers", multiple=True, help="sync only these providers")
@pass_settings
def catalog_sync(settings: Settings, providers: Sequence[str]) -> None:
    """Pull inventory from every configured provider into the catalog."""
    from metavmm.services.sync import sync_all

    cfg = settings.config
    unknown = set(providers) - {p.name for p in cfg.providers}
    if unknown:
        raise click.BadParameter(f"not in the federation file: {', '.join(sorted(unknown))}", param_hint="--provider")

    async def run() -> list[Any]:
        await db.upgrade_async(settings.database)
        engine = db.make_engine(settings.database)
        try:
            return await sync_all(db.make_sessionmaker(engine), cfg, set(providers) or None)
        finally:
            await engine.dispose()

    with console.status("pulling inventory from providers..."):
        results = asyncio.run(run())
    table = Table(title="inventory sync")
    for col in ("provider", "kind", "seconds", "sites", "hosts", "flavors", "images", "vms", "prices", "result"):
        table.add_column(col, justify="right" if col not in ("provider", "kind", "result") else "left")
    failed = False
    for r in results:
        c = r.counts
        nums = [str(getattr(c, k)) if c else "-" for k in ("sites", "hosts", "flavors", "images", "vms", "prices")]
        table.add_row(r.provider, r.kind, f"{r.seconds:.2f}", *nums,
                      "[green]ok[/]" if not r.error else f"[red]{r.error}[/]")
        failed |= bool(r.error)
    console.print(table)
    if failed:
        sys.exit(1)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return yes(value)
    if isinstance(value, list):
        return ", ".join(map(str, value)) if value else "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}x{v}" if isinstance(v, int) else f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


def _features(host: Any) -> str:
    return f"{len(host.cpu_features)} ({', '.join(host.cpu_traits[:6])}{'...' if len(host.cpu_traits) > 6 else ''})"


# name: (model, [(column, getter)]) for `catalog show NAME`
def _placed(workload: Any) -> str | None:
    """Where the workload service placed it and at what price (``--json`` has the whole summary: the
    alternatives and why each lost, the burst verdict)."""
    placement = workload.spec.get("placement") if isinstance(workload.spec, dict) else None
    if not isinstance(placement, dict) or not placement.get("site"):
        return None
    price = placement.get("price_per_hour")
    return f"{placement['site']}" + (f" {placement.get('host')}" if placement.get("host") else "") + (
        f" at {price}/h" if price is not None else "")


def _views() -> dict[str, tuple[Any, list[tuple[str, Callable[[Any], Any]]]]]:
    from metavmm.catalog import models as m

    def col(name: str) -> Callable[[Any], Any]:
        return lambda row: getattr(row, name)

    return {
        "providers": (m.Provider, [("name", col("name")), ("kind", col("kind")), ("endpoint", col("endpoint")),
                                   ("on_prem", col("on_prem")), ("simulated", col("simulated")),
                                   ("synced_at", col("synced_at")), ("sync_error", col("sync_error"))]),
        "sites": (m.Site, [("name", col("name")), ("region", col("region")), ("country", col("country")),
                           ("present", col("present"))]),
        "hosts": (m.Host, [("name", col("name")), ("hypervisor", lambda h: f"{h.hypervisor_type} "
                                                                          f"{h.hypervisor_version or ''}"),
                           ("arch", col("cpu_arch")), ("vendor", col("cpu_vendor")), ("model", col("cpu_model")),
                           ("cores", col("cpu_cores")), ("memory_mib", col("memory_mib")), ("gpus", col("gpus")),
                           ("nested", col("nested_virt")), ("state", col("state")),
                           ("features", _features)]),
        "flavors": (m.Flavor, [("name", col("name")), ("vcpus", col("vcpus")), ("ram_mib", col("ram_mib")),
                               ("disk_gib", col("disk_gib")), ("gpu", lambda f: f"{f.gpu_model}x{f.gpu_count}"
                                                               if f.gpu_count else None),
                               ("arch", col("arch")), ("present", col("present"))]),
        "images": (m.Image, [("name", col("name")), ("publisher", col("publisher")), ("os", col("os")),
                             ("arch", col("arch")), ("hypervisor", col("hypervisor")), ("format", col("format")),
                             ("size_bytes", col("size_bytes")), ("version", col("version"))]),
        "replicas": (m.ImageReplica, [("name", col("name")), ("format", col("format")),
                                      ("provider_image_id", col("provider_image_id")),
                                      ("size_bytes", col("size_bytes")), ("present", col("present"))]),
        "prices": (m.Price, [("kind", col("provider_kind")), ("region", col("region")),
                             ("flavor", col("flavor_name")), ("amount", col("amount")),
                             ("currency", col("currency")), ("unit", col("unit")),
                             ("effective", col("effective_date")), ("source", col("source"))]),
        "workloads": (m.Workload, [("id", col("id")), ("kind", col("kind")), ("name", col("name")),
                                   ("observed", col("observed_state")), ("managed", col("managed")),
                                   ("present", col("present")), ("resource", col("provider_resource_id")),
                                   ("placed", _placed)]),
        "operations": (m.Operation, [("id", col("id")), ("kind", col("kind")), ("state", col("state")),
                                     ("progress", col("progress")), ("error", col("error"))]),
    }


@catalog_group.command("show")
@click.argument("what", type=click.Choice(["providers", "sites", "hosts", "flavors", "images", "replicas",
                                           "prices", "workloads", "operations"]))
@click.option("--provider", help="only rows of this provider")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@click.option("--limit", default=200, show_default=True, type=click.IntRange(1))
@pass_settings
def catalog_show(settings: Settings, what: str, provider: str | None, as_json: bool, limit: int) -> None:
    """List catalog rows: providers, sites, hosts, flavors, images, replicas, prices, workloads, operations."""
    from metavmm.catalog.queries import list_rows

    model, columns = _views()[what]
    db.require_current_schema(settings.database)

    async def run() -> tuple[list[tuple[Any, str]], int]:
        engine = db.make_engine(settings.database)
        try:
            return await list_rows(db.make_sessionmaker(engine), model, provider=provider, limit=limit)
        finally:
            await engine.dispose()

    rows, total = asyncio.run(run())
    if as_json:
        click.echo(json.dumps([{"provider": p, **r.model_dump(mode="json")} for r, p in rows], indent=2))
        return
    table = Table(title=f"{what} ({len(rows)} of {total})")
    show_provider = what != "providers"
    if show_provider:
        table.add_column("provider")
    for name, _ in columns:
        table.add_column(name)
    for row, prov in rows:
        cells = [_fmt(get(row)) for _, get in columns]
        table.add_row(*([prov] if show_provider else []), *cells)
    console.print(table)
    if total == 0:
        err_console.print("the catalog has none yet: run `metavmm catalog sync` (or `metavmm serve`, which syncs)")
