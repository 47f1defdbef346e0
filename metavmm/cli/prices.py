"""``metavmm prices``: import price files, compare a shape across providers, draw the comparison."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.table import Table

from metavmm.catalog import db
from metavmm.catalog.importers import IMPORTERS
from metavmm.cli.common import Settings, console, err_console, pass_settings

if TYPE_CHECKING:  # the scheduler's pricing loads when a command runs
    from metavmm.scheduler.pricing import Comparison

T = TypeVar("T")


def _run(settings: Settings, work: Callable[[Any], Awaitable[T]], *, register: bool = False) -> T:
    """Run ``work(sessionmaker)`` on a migrated catalog (with the configured providers written first)."""
    from metavmm.services.sync import register_providers

    async def run() -> T:
        await db.upgrade_async(settings.database)
        engine = db.make_engine(settings.database)
        try:
            maker = db.make_sessionmaker(engine)
            if register:
                await register_providers(maker, settings.config)
            return await work(maker)
        finally:
            await engine.dispose()

    return asyncio.run(run())


@click.group("prices")
def prices_group() -> None:
    """Price catalog: import price files, compare a shape across providers and regions."""


@prices_group.command("import")
@click.argument("kind", type=click.Choice(sorted(IMPORTERS)))
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--provider", help="the configured provider these prices belong to")
@click.option("--shapes", type=click.Path(dir_okay=False, path_type=Path),
              help="instance-type table giving flavors their vCPU/RAM/GPU (Libcloud's ec2_instance_types.json, "
                   "or a shapes: YAML file)")
@click.option("--replace", is_flag=True, help="replace prices another source already stored for the same provider, "
              "region, flavor, unit and date (without it such an import is refused)")
@pass_settings
def prices_import(settings: Settings, kind: str, path: Path, provider: str | None, shapes: Path | None,
                  replace: bool) -> None:
    """Check a price file and store it in one transaction (nothing is stored when any price is wrong).

    KIND is the source format: onprem (YAML price tables), libcloud (pricing.json), aws-pricelist
    (GetProducts answer or bulk offer file), azure-retail (Retail Prices API pages), gcp-billing
    (Cloud Billing Catalog skus pages). A file with prices in a currency the federation file's rate
    table cannot convert is refused whole.
    """
    from metavmm.scheduler.pricing import RateTable
    from metavmm.services.prices import import_price_file

    if provider and provider not in {p.name for p in settings.config.providers}:
        raise click.BadParameter(f"{provider!r} is not in the federation file", param_hint="--provider")
    rates = RateTable.from_config(settings.config)
    summary = _run(settings, lambda maker: import_price_file(maker, kind, path, provider=provider, shapes=shapes,
                                                             rates=rates, replace=replace, config=settings.config),
                   register=True)
    console.print(f"imported [bold]{summary.stored}[/] prices from {path} ({kind}"
                  f"{', provider ' + provider if provider else ''}); {summary.shaped} with a shape; "
                  f"parsed in {summary.parse_s:.2f} s, stored in {summary.store_s:.2f} s", highlight=False)
    if summary.repriced:
        console.print(f"re-priced {summary.repriced} running workloads at the sites it prices (the spend ledger "
                      "accrues at the new prices from now on)", highlight=False)
    for reason, count in sorted(summary.skipped.items(), key=lambda kv: -kv[1]):
        console.print(f"  skipped {count}: {reason}", highlight=False)


def _request_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        click.option("--vcpus", type=click.IntRange(0), default=0, help="vCPUs requested"),
        click.option("--ram", "ram", type=click.FloatRange(0), default=0.0, help="RAM requested, GiB"),
        click.option("--gpu", help="GPU model and count, e.g. H100:1"),
        click.option("--arch", help="CPU architecture (x86_64, aarch64)"),
        click.option("--os", "os_name", default="linux", show_default=True, help="operating system / licence"),
        click.option("--currency", help="currency of the comparison (default: the rate table's base)"),
        click.option("--region", help="only this region"),
        click.option("--provider", "providers", multiple=True, help="only these providers"),
        click.option("--limit", type=click.IntRange(1), default=30, show_default=True, help="rows shown"),
    ]):
        func = opt(func)
    return func


def _compare(settings: Settings, vcpus: int, ram: float, gpu: str | None, arch: str | None, os_name: str,
             currency: str | None, region: str | None, providers: tuple[str, ...]) -> Comparison:
    from metavmm.scheduler.pricing import ShapeRequest
    from metavmm.services.prices import compare_prices

    req = ShapeRequest.parse(vcpus, str(ram), gpu, arch, os_name)
    return _run(settings, lambda maker: compare_prices(maker, settings.config, req, currency=currency,
                                                       region=region, providers=set(providers) or None),
                register=True)  # the federation file's own price tables are always current


@prices_group.command("compare")
@_request_options
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@pass_settings
def prices_compare(settings: Settings, vcpus: int, ram: float, gpu: str | None, arch: str | None, os_name: str,
                   currency: str | None, region: str | None, providers: tuple[str, ...], limit: int,
                   as_json: bool) -> None:
    """The best matching flavor at every provider and region, cheapest first."""
    result = _compare(settings, vcpus, ram, gpu, arch, os_name, currency, region, providers)
    if as_json:
        from metavmm.api.rest.prices import comparison_out

        click.echo(json.dumps(comparison_out(result, limit).model_dump(mode="json"), indent=2))
        return
    console.print(comparison_table(result, limit))
    if result.unmatched:
        err_console.print(f"{len(result.unmatched)} provider regions have no matching shape, e.g. "
                          + "; ".join(f"{k}: {v}" for k, v in list(result.unmatched.items())[:3]), highlight=False)
    if not result.quotes:
        err_console.print("no price matches: import prices with `metavmm prices import` or widen the request")


def _money(value: Decimal) -> str:
    """Two decimals, or four below 1 (a 0.0224 USD/h price is not 0.02)."""
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4f}"


def comparison_table(result: Comparison, limit: int) -> Table:
    gpu = result.request.gpu_count
    rates = f"; rates {result.rates.date} ({result.rates.source})" if result.rates.date else ""
    table = Table(title=f"{result.request.describe()}: {len(result.quotes)} provider regions, {result.currency}"
                        f"{rates}")
    cols = ["#", "provider", "region", "flavor", "shape", "dist", f"{result.currency}/h"]
    cols += [f"per GPU-h x{gpu}"] if gpu else []
    cols += ["per vCPU-h", "per GiB-h"]
    side = [(name, attr) for name, attr in (("disk per GiB-mo", "disk_gib_month"), ("egress per GiB", "egress_gib"))
            if any(getattr(q, attr) is not None for q in result.quotes[:limit])]  # where the catalog has them
    cols += [name for name, _ in side] + ["source price", "date", "source"]
    for col in cols:
        table.add_column(col, justify="right" if col in ("#", "dist") or "/" in col or "per" in col else "left")
    for i, q in enumerate(result.quotes[:limit], 1):
        date_cell = f"[red]{q.effective_date} stale[/]" if q.stale else str(q.effective_date)
        row = [str(i), q.provider + (" (on-prem)" if q.on_prem else ""), q.region,
               q.flavor + (" (composed)" if q.composed else "") + (f" (discount {q.discount.describe()})"
                                                                    if q.discount else ""),
               q.shape.describe(), f"{q.distance:g}",
               _money(q.hourly)]
        row += [_money(q.rank_price)] if gpu else []
        row += [_part(q.per_vcpu_hour), _part(q.per_gib_hour), *(_part(getattr(q, attr)) for _, attr in side),
                f"{q.amount.normalize():f} {q.currency}", date_cell, q.source]
        table.add_row(*row)
    return table


def _part(value: Decimal | None) -> str:
    """A per-part price, or "-" for a part the priced shape does not have (a GPU-only shape's vCPUs)."""
    return "-" if value is None else f"{value:.4f}"


@prices_group.command("chart")
@_request_options
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="file to write; .svg or .png")
@pass_settings
def prices_chart(settings: Settings, vcpus: int, ram: float, gpu: str | None, arch: str | None, os_name: str,
                 currency: str | None, region: str | None, providers: tuple[str, ...], limit: int,
                 output: Path) -> None:
    """Draw the comparison as a bar chart (SVG or PNG) for a report."""
    from metavmm.scheduler.pricing.chart import render_chart

    fmt = output.suffix.lstrip(".").lower()
    if fmt not in ("svg", "png"):
        raise click.BadParameter("the file must end in .svg or .png", param_hint="--output")
    result = _compare(settings, vcpus, ram, gpu, arch, os_name, currency, region, providers)
    output.write_bytes(render_chart(result, fmt, top=limit))
    console.print(f"wrote {output} ({len(result.quotes[:limit])} bars, {result.currency}, {date.today()})")


def _region(value: str) -> str:
    """Region names go into API filters: letters, digits and dashes only."""
    import re

    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", value):
        raise click.BadParameter(f"{value!r} is not a region name", param_hint="--region")
    return value


@prices_group.command("fetch")
@click.argument("source", type=click.Choice(["aws-pricelist", "azure-retail", "gcp-billing"]))
@click.option("--region", required=True, callback=lambda _c, _p, v: _region(v),
              help="provider region (AWS regionCode, Azure armRegionName, GCP region or 'all')")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="JSON file to write, in the format `metavmm prices import SOURCE` reads")
@click.option("--endpoint-url", help="API address (default: the provider's public endpoint)")
@click.option("--api-key-env", default="GCP_BILLING_API_KEY", show_default=True,
              help="environment variable holding the GCP API key (never printed)")
def prices_fetch(source: str, region: str, output: Path, endpoint_url: str | None, api_key_env: str) -> None:
    """Download a provider's own price list to a file, to check and import it like any price file.

    The file is the price's traceable source: import it with `metavmm prices import SOURCE FILE`.
    """
    import os

    from metavmm.catalog.importers import aws_pricelist, azure_retail, gcp_billing
    from metavmm.foundation.errors import ConfigError

    if source == "aws-pricelist":
        doc: dict[str, Any] = {"FormatVersion": "aws_v1",
                               "PriceList": aws_pricelist.fetch(region, endpoint_url=endpoint_url)}
        count = len(doc["PriceList"])
    elif source == "azure-retail":
        flt = f"serviceName eq 'Virtual Machines' and armRegionName eq '{region}' and priceType eq 'Consumption'"
        items = asyncio.run(azure_retail.fetch(flt, url=endpoint_url or azure_retail.API))
        doc, count = {"Items": items, "NextPageLink": None, "Count": len(items)}, len(items)
    else:
        key = os.environ.get(api_key_env)
        if not key:
            raise ConfigError(f"the GCP Cloud Billing API needs an API key in ${api_key_env}")
        skus = asyncio.run(gcp_billing.fetch(key, base_url=endpoint_url or gcp_billing.API))
        skus = [s for s in skus if region == "all" or region in (s.get("serviceRegions") or [])]
        doc, count = {"skus": skus, "nextPageToken": ""}, len(skus)
    output.write_text(json.dumps(doc, indent=1))
    console.print(f"wrote {count} {source} entries to {output}; next: metavmm prices import {source} {output}")
