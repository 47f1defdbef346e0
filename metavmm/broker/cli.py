"""The ``metavmm`` command line: serve, db, config, catalog.

Every command reads the federation file (``--config``, $METAVMM_CONFIG, or config/default.yaml) and
the database (``--database``, $METAVMM_DATABASE_URL, the file's ``database:``, or the embedded SQLite
default). Errors of metavmm's own kind are printed as one clear line and exit 1, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click
from rich.table import Table

from metavmm.broker.cli_common import MetavmmGroup, Settings, console, err_console, pass_settings
from metavmm.broker.config import load_config
from metavmm.catalog import db

__all__ = ["Settings", "console", "err_console", "main", "pass_settings"]


@click.group(cls=MetavmmGroup)
@click.option("--config", "config_path", envvar="METAVMM_CONFIG", type=click.Path(dir_okay=False),
              help="federation file (default: config/default.yaml)")
@click.option("--database", envvar="METAVMM_DATABASE_URL", help="sqlite:///PATH or postgresql://...")
@click.option("-v", "--verbose", count=True, help="more logging (-v info, -vv debug)")
@click.version_option(package_name="metavmm")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, database: str | None, verbose: int) -> None:
    """metavmm: one federation over OpenStack, libvirt/KVM, vCenter, AWS, GCP and Azure."""
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = Settings(config_path, database)


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="federation file")
@click.option("--database", help="database URL")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--no-sync", is_flag=True, help="do not pull provider inventory in the background")
@pass_settings
def serve(settings: Settings, config_path: str | None, database: str | None, host: str, port: int,
          no_sync: bool) -> None:
    """Run the broker (OCCI at /, REST at /api/v1, /healthz, /readyz) until SIGTERM."""
    from aiohttp import web

    from metavmm.broker.app import HTTP_LIMITS, create_app

    if config_path:
        settings.config_path = config_path
    if database:
        settings._database = database
    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    from metavmm.broker.auth import server_ssl_context

    app = create_app(settings.config, settings.database, sync=not no_sync)
    tls = server_ssl_context(settings.config.auth)
    scheme = "https" if tls else "http"
    console.print(f"metavmm serving on {scheme}://{host}:{port} (database {_safe_url(settings.database)})")
    web.run_app(app, host=host, port=port, print=None, handle_signals=True, ssl_context=tls,
                **HTTP_LIMITS)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# --- db -------------------------------------------------------------------------------------------


@main.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@pass_settings
def db_upgrade(settings: Settings, revision: str) -> None:
    """Create or migrate the catalog schema (Alembic)."""
    db.upgrade(settings.database, revision)
    console.print(f"database {_safe_url(settings.database)} at revision {db.current_revision(settings.database)}")


@db_group.command("current")
@pass_settings
def db_current(settings: Settings) -> None:
    """Show the schema revision of the database."""
    console.print(db.current_revision(settings.database) or "(empty database)")


# --- config ---------------------------------------------------------------------------------------


@main.group("config")
def config_group() -> None:
    """The federation file."""


@config_group.command("check")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@pass_settings
def config_check(settings: Settings, path: str | None) -> None:
    """Validate a federation file and summarise it."""
    cfg = load_config(path or settings.config_path)
    table = Table(title=f"federation {cfg.federation.name}: {len(cfg.providers)} providers")
    for col in ("provider", "kind", "on-prem", "enabled", "sites", "credentials"):
        table.add_column(col)
    for p in cfg.providers:
        sites = ", ".join(s.region for s in p.sites) or "-"
        table.add_row(p.name, p.kind, _yes(p.on_prem), _yes(p.enabled), sites,
                      p.credentials.reference() if p.credentials else "-")
    console.print(table)
    console.print(f"{len(cfg.prices)} price tables, {len(cfg.policies)} policies: [green]OK[/]")


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


# --- catalog --------------------------------------------------------------------------------------


@main.group("catalog")
def catalog_group() -> None:
    """The resource catalog."""


@catalog_group.command("sync")
@click.option("--provider", "providers", multiple=True, help="sync only these providers")
@pass_settings
def catalog_sync(settings: Settings, providers: Sequence[str]) -> None:
    """Pull inventory from every configured provider into the catalog."""
    from metavmm.broker.sync import sync_all

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
        return _yes(value)
    if isinstance(value, list):
        return ", ".join(map(str, value)) if value else "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}x{v}" if isinstance(v, int) else f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


def _features(host: Any) -> str:
    return f"{len(host.cpu_features)} ({', '.join(host.cpu_traits[:6])}{'...' if len(host.cpu_traits) > 6 else ''})"


# name: (model, [(column, getter)]) for `catalog show NAME`
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
                                   ("present", col("present")), ("resource", col("provider_resource_id"))]),
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

from metavmm.broker.cli_identity import register as register_identity  # noqa: E402
from metavmm.broker.cli_operations import operations_group  # noqa: E402

main.add_command(operations_group)


register_identity(main)

from metavmm.broker.cli_prices import prices_group  # noqa: E402

main.add_command(prices_group)

from metavmm.broker.cli_schedule import schedule_group  # noqa: E402

main.add_command(schedule_group)

from metavmm.broker.cli_images import image_group, ovf_group  # noqa: E402

for _group in (image_group, ovf_group):
    main.add_command(_group)

from metavmm.broker.cli_marketplace import marketplace  # noqa: E402

main.add_command(marketplace)

from metavmm.broker import cli_flows  # noqa: E402,F401  (provision/act/migrate/delete under `operations`)

if __name__ == "__main__":
    main()
