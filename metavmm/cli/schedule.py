"""``metavmm schedule``: placement dry runs with explanations, batch placement, migration plans, replays.

Every command changes nothing (run ``metavmm catalog sync`` first). ``place`` asks the Placer a create
uses (placements still in transit, burst policies, the same checks) and prints what a create would do
now; the others read a fresh snapshot of the catalog. ``--json`` prints the same document the REST
API returns.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from metavmm.catalog import db
from metavmm.cli.common import Settings, console, pass_settings
from metavmm.foundation.errors import ValidationError

if TYPE_CHECKING:  # the scheduler (networkx, numpy), its schemas (pydantic) and the Placer load when a command runs
    import pydantic

    from metavmm.scheduler.request import PlacementRequest
    from metavmm.scheduler.schemas import PlacementOut
    from metavmm.scheduler.snapshot import Snapshot
    from metavmm.services.placement import PlannedCreate


def _snapshot(settings: Settings) -> Snapshot:
    from metavmm.scheduler import service

    async def run() -> Snapshot:
        await db.upgrade_async(settings.database)
        engine = db.make_engine(settings.database)
        try:
            return await service.snapshot(db.make_sessionmaker(engine), settings.config)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _dry_run(settings: Settings, req: PlacementRequest, explain: bool) -> PlannedCreate:
    """What a create of ``req`` would do now, through the Placer a create uses (nothing is written)."""
    from metavmm.services.placement import Placer

    async def run() -> PlannedCreate:
        await db.upgrade_async(settings.database)
        engine = db.make_engine(settings.database)
        try:
            async with db.make_sessionmaker(engine)() as session:
                return await Placer(settings.config).dry_run(
                    session, req, providers=frozenset(p.name for p in settings.config.providers), explain=explain)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _print_json(model: pydantic.BaseModel) -> None:
    click.echo(model.model_dump_json(indent=2))


def _steps_table(title: str, steps: list[Any]) -> Table:
    table = Table(title=title)
    for col in ("step", "site", "detail", "seconds", "price"):
        table.add_column(col, justify="right" if col in ("seconds", "price") else "left")
    for s in steps:
        step = f"{s.name} ({s.action})" if s.name else s.action
        table.add_row(step, s.site, s.detail, f"{s.seconds:.1f}", str(s.price) if s.price else "-")
    return table


@click.group("schedule")
def schedule_group() -> None:
    """Placement, batch placement, migration plans and burst replays (dry runs); migrations that run."""


@schedule_group.command("place")
@click.option("--name", default="vm", show_default=True)
@click.option("--vcpus", type=click.IntRange(1, 1024), required=True)
@click.option("--ram-gib", type=click.FloatRange(min=0.001), required=True)
@click.option("--gpu", help="MODEL:COUNT, e.g. H100:2")
@click.option("--arch", help="CPU architecture (default: the image's, x86_64 without one; 'any': no constraint)")
@click.option("--vendor", help="CPU vendor (Intel, AMD, ARM)")
@click.option("--feature", "features", multiple=True, help="required CPU feature (libvirt name), repeatable")
@click.option("--nested", is_flag=True, help="needs nested virtualisation")
@click.option("--image", "image_id", help="catalog image id")
@click.option("--image-format", default="qcow2", show_default=True)
@click.option("--image-size-gib", type=click.FloatRange(min=0), default=0)
@click.option("--image-hypervisor", help="the guest's hypervisor family (kvm, esxi, xen, hyperv)")
@click.option("--residency", multiple=True, help="allowed country (ISO 3166), repeatable")
@click.option("--site", "sites", multiple=True, help="only this site, repeatable")
@click.option("--provider", "providers", multiple=True, help="only this provider, repeatable")
@click.option("--on-prem-only", is_flag=True)
@click.option("--public-only", is_flag=True)
@click.option("--project")
@click.option("--hours", type=click.FloatRange(min=0.001), help="expected duration to price")
@click.option("--strategy", type=click.Choice(["pack", "spread"]))
@click.option("--max-price", type=click.FloatRange(min=0), help="per hour")
@click.option("--explain", is_flag=True, help="open every site: a reason or a score for every host")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def place(settings: Settings, name: str, vcpus: int, ram_gib: float, gpu: str | None, arch: str | None,
          vendor: str | None,
          features: tuple[str, ...], nested: bool, image_id: str | None, image_format: str, image_size_gib: float,
          image_hypervisor: str | None, residency: tuple[str, ...], sites: tuple[str, ...],
          providers: tuple[str, ...], on_prem_only: bool, public_only: bool, project: str | None,
          hours: float | None, strategy: str | None, max_price: float | None, explain: bool, as_json: bool) -> None:
    """Where would a create of this VM go now, at what price, by which steps, and why not elsewhere."""
    import pydantic

    from metavmm.scheduler.schemas import PlacementOut, PlacementRequestIn

    gpu_model, gpu_count = None, 0
    if gpu:
        model, _, count = gpu.partition(":")
        if not model or not count.isdigit() or int(count) < 1:
            raise click.BadParameter("expected MODEL:COUNT, e.g. H100:2", param_hint="--gpu")
        gpu_model, gpu_count = model, int(count)
    try:
        body = PlacementRequestIn(
            name=name, vcpus=vcpus, ram_mib=int(ram_gib * 1024), project=project, gpu_model=gpu_model,
            gpu_count=gpu_count, cpu_arch=arch, cpu_vendor=vendor,
            cpu_features=list(features), nested_virt=nested, image_id=image_id, image_format=image_format,
            image_size_bytes=int(image_size_gib * (1 << 30)), image_hypervisor=image_hypervisor,
            residency=list(residency), sites=list(sites), providers=list(providers), on_prem_only=on_prem_only,
            public_only=public_only, expected_hours=hours, strategy=strategy, max_price_per_hour=max_price)
        req = body.to_request()
    except pydantic.ValidationError as exc:
        raise ValidationError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) \
            from None
    planned = _dry_run(settings, req, explain)
    out = PlacementOut.of(planned.placement, planned.where, explain=explain)
    if as_json:
        _print_json(out)
        return
    colour = "green" if out.placed else "red"
    console.print(f"[bold {colour}]{out.summary}[/]", highlight=False, soft_wrap=True)
    if out.placed:
        target = out.host or out.flavor or "-"
        console.print(f"target: {out.site} / {target} ({out.provider}, {out.hypervisor}); "
                      f"{out.price_per_hour} {out.currency}/h, {out.total_price:.4f} {out.currency} over "
                      f"{out.expected_hours:g} h; ready in ~{out.seconds_to_ready:.0f} s", highlight=False)
        console.print(_steps_table("plan (dry run: the engine's steps a create would run)", out.steps))
    by_code: dict[str, list[str]] = {}
    counts: Counter[str] = Counter()
    for r in out.rejections:
        counts[r.code] += r.covers
        by_code.setdefault(r.code, []).append(f"{r.candidate}: {r.message}")
    if by_code:
        table = Table(title="why not elsewhere")
        for col in ("reason", "candidates", "example"):
            table.add_column(col)
        for code, n in counts.most_common():
            if n:  # flavors of a cloud site that passed elsewhere count for nothing: detail only (--json)
                table.add_row(code, str(n), by_code[code][0])
        console.print(table)
    if out.explanation:
        table = Table(title="every candidate (--explain)")
        for col in ("candidate", "site", "outcome", "more per hour", "why"):
            table.add_column(col)
        for e in out.explanation:
            diff = e["cost_difference_per_hour"] if e["outcome"] == "passed" else ""
            table.add_row(str(e["candidate"]), str(e["site"]), str(e["outcome"]), str(diff or ""), str(e["reason"]))
        console.print(table)
    _print_summary(out)


def _print_summary(out: PlacementOut) -> None:
    """The placement summary a create would keep: the next best and why each lost, the burst verdict."""
    alternatives: list[dict[str, Any]] = out.placement.get("alternatives") or []  # type: ignore[assignment]
    if alternatives:
        table = Table(title="next best, and why each lost")
        for col in ("candidate", "site", "lost on", "why"):
            table.add_column(col)
        for a in alternatives:
            lost = a["filter"] if a["lost"] == "filter" else "cost"
            table.add_row(a["candidate"], a["site"], lost, a["reason"])
        console.print(table)
    if out.burst is not None:
        console.print(f"burst: {out.burst.outcome}: {out.burst.reason}", highlight=False, soft_wrap=True)
        for line in burst_terms(out.burst):
            console.print(f"  {line}", highlight=False, soft_wrap=True)


def burst_terms(b: Any) -> list[str]:
    """The policy verdict's terms, one line each: the rule, the threshold, the budget, residency, providers."""
    if not b.policy:
        return [f"rule: {b.rule}"] if b.rule else []
    lines = [f"rule: {b.rule} (policy {b.policy})"]
    if b.utilisation is not None and b.threshold is not None:
        lines.append(f"threshold: on-prem at {b.utilisation:.0%} with this request, policy bursts above "
                     f"{b.threshold:.0%}: {'reached' if b.threshold_reached else 'not reached'}")
    if b.budget is not None:
        cost = f", this burst {b.burst_cost}" if b.burst_cost is not None else ""
        lines.append(f"budget: {b.budget} {b.budget_currency} a month, spent {b.budget_spent}{cost}, "
                     f"left {b.budget_left}")
    else:
        lines.append("budget: none set")
    lines.append("residency: " + (", ".join(b.residency) or "any country"))
    lines.append("allowed providers: " + ", ".join(b.allowed_providers))
    return lines


@schedule_group.command("batch")
@click.argument("requests_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def batch(settings: Settings, requests_file: str, as_json: bool) -> None:
    """Place many workloads at once: REQUESTS_FILE has one request per line (JSON, the REST body fields)."""
    import pydantic

    from metavmm.scheduler import service
    from metavmm.scheduler.schemas import BatchOut, PlacementRequestIn

    requests = []
    for lineno, line in enumerate(Path(requests_file).read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            requests.append(PlacementRequestIn.model_validate(json.loads(line)).to_request())
        except (json.JSONDecodeError, pydantic.ValidationError) as exc:
            raise ValidationError(f"{requests_file}:{lineno}: {exc}") from None
    if not requests:
        raise ValidationError(f"{requests_file}: no requests")
    out = BatchOut.of(service.place_batch(_snapshot(settings), requests))
    if as_json:
        _print_json(out)
        return
    console.print(f"placed {out.placed}/{out.placed + len(out.unplaced)} in {out.seconds:.3f} s "
                  f"({out.task_classes} task classes, {out.machine_classes} machine classes, {out.rounds} rounds); "
                  f"cost {out.cost:.4f}", highlight=False)
    sites = Counter(a.site for a in out.assignments)
    table = Table(title="where everything went")
    table.add_column("site")
    table.add_column("workloads", justify="right")
    for site, n in sites.most_common():
        table.add_row(site, str(n))
    for why, n in Counter(out.unplaced.values()).most_common():
        table.add_row(f"[red]unplaced: {why}[/]", str(n))
    console.print(table)


@schedule_group.command("plan-migration")
@click.option("--evacuate-host", "host", help="move every workload off this host")
@click.option("--evacuate-site", "site", help="move every workload off this site")
@click.option("--rebalance", "rebalance_site", help="even out utilisation inside this site")
@click.option("--tolerance", default=0.15, show_default=True, type=click.FloatRange(0.01, 0.99))
@click.option("--max-moves", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True)
@click.option("--execute", is_flag=True, help="submit the plan: one operation per move, under one batch")
@click.option("--wait", is_flag=True, help="with --execute: progress bars until the batch ends (a running broker, "
              "`metavmm serve` or `metavmm operations run`, runs its steps)")
@pass_settings
def plan_migration(settings: Settings, host: str | None, site: str | None, rebalance_site: str | None,
                   tolerance: float, max_moves: int, as_json: bool, execute: bool, wait: bool) -> None:
    """Plan an evacuation or a rebalance: live or cold per workload, each step timed and priced.

    With --execute the plan is submitted (re-planned over a fresh snapshot) for the broker to run;
    --wait follows it. Without a running broker, `metavmm operations run` runs the steps."""
    chosen = [x for x in (host, site, rebalance_site) if x]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --evacuate-host, --evacuate-site, --rebalance")
    kind = "evacuate-host" if host else "evacuate-site" if site else "rebalance"
    if wait and not execute:
        raise click.UsageError("--wait goes with --execute")
    if execute:
        from metavmm.cli.migrate import execute_migration

        execute_migration(settings, kind, host=host, site=site or rebalance_site, tolerance=tolerance,
                          max_moves=max_moves, wait=wait)
        return
    from metavmm.scheduler import service
    from metavmm.scheduler.schemas import MigrationOut

    plan = service.plan_migration(_snapshot(settings), kind, host=host, site=site or rebalance_site,
                                  tolerance=tolerance, max_moves=max_moves)
    out = MigrationOut.of(plan)
    if as_json:
        _print_json(out)
        return
    console.print(f"[bold]{out.summary}[/] (dry run: nothing was changed)", highlight=False, soft_wrap=True)
    table = Table(title="moves")
    for col in ("workload", "from", "to", "mode", "why", "seconds", "price"):
        table.add_column(col)
    for m in out.moves:
        table.add_row(m.workload, f"{m.source_site}/{m.source_host or '-'}",
                      f"{m.target_site}/{m.target_host or m.target_flavor or '-'}", m.mode, m.why_mode,
                      f"{m.seconds:.0f}", str(m.price))
    console.print(table)
    for name, why in out.unplaced.items():
        console.print(f"[red]{name}: no target[/] ({why})", highlight=False)


@schedule_group.command("replay")
@click.argument("trace", type=click.Path(exists=True, dir_okay=False))
@click.option("--policy", "policy_name", required=True, help="a policy name from the federation file")
@click.option("--start", type=click.DateTime(formats=["%Y-%m-%d"]), help="date of the trace's first second")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def replay(settings: Settings, trace: str, policy_name: str, start: Any, as_json: bool) -> None:
    """Run a burst policy over a recorded trace (JSON lines): cost, waiting, where everything went."""
    from metavmm.scheduler import service
    from metavmm.scheduler.burst import load_trace
    from metavmm.scheduler.schemas import ReplayOut

    pol = service.policy(settings.config, policy_name)
    records = load_trace(trace)
    start_date: date | None = start.date() if start else None
    out = ReplayOut.of(service.replay(_snapshot(settings), pol, records, start_date))
    if as_json:
        _print_json(out)
        return
    totals = Table(title=f"policy {out.policy} over {out.requests} requests")
    for col in ("public cost", "on-prem cost", "burst", "returned", "unplaced", "mean wait s", "max wait s",
                "peak on-prem use"):
        totals.add_column(col, justify="right")
    totals.add_row(f"{out.public_cost} {out.currency}", f"{out.on_prem_cost} {out.currency}", str(out.burst),
                   str(out.returned), str(out.unplaced), f"{out.mean_wait_s:.0f}", f"{out.max_wait_s:.0f}",
                   f"{out.peak_utilisation:.0%}")
    console.print(totals)
    where = Table(title="where everything went")
    where.add_column("destination")
    where.add_column("requests", justify="right")
    for dest, n in out.destinations.items():
        where.add_row(dest, str(n))
    console.print(where)
    if out.budget_used:
        budget = Table(title="budget used (project/month)")
        budget.add_column("project/month")
        budget.add_column(f"spent {out.currency}", justify="right")
        for key, spent in out.budget_used.items():
            budget.add_row(key, str(spent))
        console.print(budget)
    jobs = Table(title="requests, and which rule fired at each decision")
    for col in ("name", "project", "where", "wait s", "cost", "decisions (at s: rule: why)"):
        jobs.add_column(col)
    for j in out.jobs:
        decisions = "\n".join(f"{d.at_s:.0f}: {d.rule}: {d.detail}" for d in j.decisions)
        jobs.add_row(j.name, j.project, j.where, "-" if j.wait_s is None else f"{j.wait_s:.0f}", str(j.cost),
                     decisions)
    console.print(jobs)


def _register_migrate() -> None:
    from metavmm.cli.migrate import migrate_command

    schedule_group.add_command(migrate_command)


_register_migrate()
