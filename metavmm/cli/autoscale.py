"""``metavmm autoscale create|list|show|set|evaluate|decisions|push|delete``: auto-scaling groups, through
the same autoscale service as ``/api/v1/autoscaling-groups``.

The commands act as the operator (an admin) of ``--project``, like ``metavmm cluster``. They only write
operations: a running broker (``metavmm serve``) runs them, and evaluates every group on its own too.
Rules are given as JSON (``--rule '{"name": "cpu-high", "type": "metric", "above": 70}'``, repeatable) or
a file holding a JSON list of them (``--rules-file``); docs/autoscaling.md describes them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.markup import escape
from rich.table import Table

from metavmm.cli.common import MetavmmGroup, Settings, console, pass_settings
from metavmm.foundation.errors import ValidationError
from metavmm.services.vocabulary import DEFAULT_PROJECT

T = TypeVar("T")


@click.group("autoscale", cls=MetavmmGroup)
def autoscale_group() -> None:
    """Auto-scaling groups: members added and removed by metric and schedule rules."""


def _service(settings: Settings, project: str | None, work: Callable[[Any, Any], Awaitable[T]]) -> T:
    """Run ``work(service, caller)`` with an autoscale service over this catalog, as the project's operator."""
    from metavmm.cli.operations import _run
    from metavmm.services.autoscale.service import AutoscaleService
    from metavmm.services.identity import operator_identity
    from metavmm.services.operations.engine import Engine
    from metavmm.services.placement import Placer
    from metavmm.services.workloads.service import WorkloadService

    async def go(sessions: Any) -> T:
        engine = Engine(sessions, settings.config, settings.database)
        await engine.start(run_steps=False)  # submit only: a broker runs the steps
        service = None
        try:
            async with sessions() as session:
                caller = await operator_identity(session, project)
                await session.commit()
            service = AutoscaleService(WorkloadService(sessions, settings.config, engine, Placer(settings.config)))
            return await work(service, caller)
        finally:
            if service is not None:
                await service.cpu.close()
            await engine.stop()

    return _run(settings, go)


def _project_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--project", default=DEFAULT_PROJECT, show_default=True, envvar="METAVMM_PROJECT",
                        help="the project that owns the group (and whose quota it counts against)")(fn)


def read_rules(rules: tuple[str, ...], rules_file: str | None) -> tuple[dict[str, Any], ...] | None:
    """The rules of ``--rule`` (JSON objects) and ``--rules-file`` (a JSON list); None when neither is given."""
    if not rules and rules_file is None:
        return None
    out: list[Any] = []
    try:
        for text in rules:
            out.append(json.loads(text))
        if rules_file is not None:
            listed = json.loads(Path(rules_file).read_text())
            if not isinstance(listed, list):
                raise ValidationError(f"{rules_file} must hold a JSON list of rules")
            out += listed
    except json.JSONDecodeError as exc:
        raise ValidationError(f"a rule is not valid JSON: {exc.msg} (column {exc.colno})") from None
    return tuple(out)


def _decision_line(d: Any) -> str:
    numbers = f" {d.metric}={d.value:g} vs {d.threshold:g}" if d.value is not None and d.threshold is not None else ""
    members = ", ".join(f"{m.get('name')}@{m.get('provider')}{' (burst)' if m.get('burst') else ''}"
                        for m in d.members)
    return (f"{d.at:%Y-%m-%d %H:%M:%S} #{d.id} {d.action} ({d.trigger}{' ' + d.rule if d.rule else ''}){numbers}: "
            f"desired {d.desired_before} -> {d.desired_after}" + (f" [{members}]" if members else "")
            + f" - {d.reason}")


def _print(view: Any, as_json: bool = False) -> None:
    g = view.group
    members = [{"serial": m.serial, "name": m.workload.name, "workload_id": m.workload.id,
                "state": m.workload.observed_state, "site": m.site, "provider": m.provider,
                "price_per_hour": m.price_per_hour, "burst": m.burst} for m in view.members]
    if as_json:
        console.print_json(json.dumps({
            "id": g.id, "name": g.name, "min_size": g.min_size, "max_size": g.max_size, "desired": g.desired,
            "base_desired": g.base_desired, "rules": g.rules, "enabled": g.enabled, "running": view.running,
            "members": members, "last_decision": _decision_line(view.last_decision) if view.last_decision else None}))
        return
    console.print(f"group {escape(g.name)} ({g.id}): {len(view.members)} members ({view.running} running), desired "
                  f"{g.desired} in {g.min_size}..{g.max_size}" + ("" if g.enabled else ", not evaluated (disabled)"),
                  highlight=False)
    for rule in g.rules:
        console.print(f"  rule {escape(json.dumps(rule))}", highlight=False)
    table = Table("serial", "name", "state", "provider", "site", "price/h", "burst")
    for m in members:
        table.add_row(str(m["serial"]), escape(m["name"]), m["state"], str(m["provider"]), str(m["site"]),
                      str(m["price_per_hour"] or "-"), "yes" if m["burst"] else "")
    console.print(table)
    if view.last_decision is not None:
        console.print(f"  last decision: {escape(_decision_line(view.last_decision))}", highlight=False)


@autoscale_group.command("create")
@click.argument("name")
@click.option("--min", "min_size", type=click.IntRange(0, 200), default=1, show_default=True)
@click.option("--max", "max_size", type=click.IntRange(1, 200), default=1, show_default=True)
@click.option("--desired", type=click.IntRange(0, 200), help="default: --min")
@click.option("--image", help="a marketplace image the project may launch (id, name or publisher/name)")
@click.option("--flavor")
@click.option("--vcpus", type=click.IntRange(1, 1024))
@click.option("--ram-mib", type=click.IntRange(1))
@click.option("--disk-gib", type=click.IntRange(0), default=0, show_default=True)
@click.option("--network", "network_id", help="a network workload the members join")
@click.option("--user-data", "user_data_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--rule", "rules", multiple=True, help="a rule as a JSON object (repeatable)")
@click.option("--rules-file", type=click.Path(exists=True, dir_okay=False), help="a JSON list of rules")
@click.option("--cooldown-out", type=click.IntRange(0, 86400), default=60, show_default=True)
@click.option("--cooldown-in", type=click.IntRange(0, 86400), default=300, show_default=True)
@click.option("--scale-in-order", type=click.Choice(["cost", "newest", "oldest"]), default="cost",
              show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_project_option
@pass_settings
def create_cmd(settings: Settings, name: str, min_size: int, max_size: int, desired: int | None, image: str | None,
               flavor: str | None, vcpus: int | None, ram_mib: int | None, disk_gib: int, network_id: str | None,
               user_data_file: str | None, rules: tuple[str, ...], rules_file: str | None, cooldown_out: int,
               cooldown_in: int, scale_in_order: str, as_json: bool, project: str) -> None:
    """Create group NAME; it grows to its desired count at once, as POST /api/v1/autoscaling-groups does."""
    from metavmm.services.autoscale.service import GroupRequest

    req = GroupRequest(name=name, min_size=min_size, max_size=max_size, desired=desired, image=image, flavor=flavor,
                       vcpus=vcpus, ram_mib=ram_mib, disk_gib=disk_gib, network_id=network_id,
                       user_data=Path(user_data_file).read_text() if user_data_file else None,
                       rules=read_rules(rules, rules_file) or (), cooldown_out_s=cooldown_out,
                       cooldown_in_s=cooldown_in, scale_in_order=scale_in_order)
    _print(_service(settings, project, lambda s, caller: s.create(caller, req)), as_json)


@autoscale_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@_project_option
@pass_settings
def list_cmd(settings: Settings, as_json: bool, project: str) -> None:
    """The project's groups: members, desired, bounds."""
    async def mine(s: Any, caller: Any) -> list[Any]:
        return [v for v in await s.list_groups(caller) if v.group.project_id == caller.project_id]

    views = _service(settings, project, mine)
    if as_json:
        console.print_json(json.dumps([{"id": v.group.id, "name": v.group.name, "members": len(v.members),
                                        "desired": v.group.desired} for v in views]))
        return
    table = Table("name", "id", "members", "desired", "min..max")
    for v in views:
        g = v.group
        table.add_row(g.name, g.id, f"{v.running}/{len(v.members)}", str(g.desired), f"{g.min_size}..{g.max_size}")
    console.print(table)


@autoscale_group.command("show")
@click.argument("group")
@click.option("--json", "as_json", is_flag=True)
@_project_option
@pass_settings
def show_cmd(settings: Settings, group: str, as_json: bool, project: str) -> None:
    """GROUP (a name or an id): members, where they run, their price, the last decision."""
    _print(_service(settings, project, lambda s, caller: s.get(caller, group)), as_json)


@autoscale_group.command("set")
@click.argument("group")
@click.option("--min", "min_size", type=click.IntRange(0, 200))
@click.option("--max", "max_size", type=click.IntRange(1, 200))
@click.option("--desired", type=click.IntRange(0, 200), help="scale to this count now")
@click.option("--rule", "rules", multiple=True, help="replace the rules: a JSON object each (repeatable)")
@click.option("--rules-file", type=click.Path(exists=True, dir_okay=False))
@click.option("--cooldown-out", type=click.IntRange(0, 86400))
@click.option("--cooldown-in", type=click.IntRange(0, 86400))
@click.option("--scale-in-order", type=click.Choice(["cost", "newest", "oldest"]))
@click.option("--enable/--disable", "enabled", default=None, help="whether the broker's loop evaluates the group")
@click.option("--json", "as_json", is_flag=True)
@_project_option
@pass_settings
def set_cmd(settings: Settings, group: str, min_size: int | None, max_size: int | None, desired: int | None,
            rules: tuple[str, ...], rules_file: str | None, cooldown_out: int | None, cooldown_in: int | None,
            scale_in_order: str | None, enabled: bool | None, as_json: bool, project: str) -> None:
    """Change GROUP's bounds, desired count, rules or cooldowns; it is evaluated at once."""
    new_rules = read_rules(rules, rules_file)
    _print(_service(settings, project, lambda s, caller: s.update(
        caller, group, min_size=min_size, max_size=max_size, desired=desired, rules=new_rules,
        cooldown_out_s=cooldown_out, cooldown_in_s=cooldown_in, scale_in_order=scale_in_order,
        enabled=enabled)), as_json)


@autoscale_group.command("evaluate")
@click.argument("group")
@_project_option
@pass_settings
def evaluate_cmd(settings: Settings, group: str, project: str) -> None:
    """Evaluate GROUP's rules now and act; prints the decision."""
    decision = _service(settings, project, lambda s, caller: s.evaluate(caller, group))
    console.print(escape(_decision_line(decision)) if decision is not None else
                  "nothing to decide: the group is where its rules want it", highlight=False)


@autoscale_group.command("decisions")
@click.argument("group")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_project_option
@pass_settings
def decisions_cmd(settings: Settings, group: str, limit: int, as_json: bool, project: str) -> None:
    """GROUP's scaling decisions, newest first, with their rule and numbers."""
    rows = _service(settings, project, lambda s, caller: s.decisions(caller, group, limit=limit))
    if as_json:
        console.print_json(json.dumps([{**d.model_dump(mode="json")} for d in rows]))
        return
    for d in rows:
        console.print(escape(_decision_line(d)), highlight=False)


@autoscale_group.command("push")
@click.argument("group")
@click.argument("metric")
@click.argument("value", type=float)
@_project_option
@pass_settings
def push_cmd(settings: Settings, group: str, metric: str, value: float, project: str) -> None:
    """Record VALUE of METRIC for GROUP's rules (kept 10 minutes)."""
    _service(settings, project, lambda s, caller: s.push_metric(caller, group, metric, value))
    console.print(f"{escape(metric)} = {value:g} recorded for {escape(group)}", highlight=False)


@autoscale_group.command("delete")
@click.argument("group")
@_project_option
@pass_settings
def delete_cmd(settings: Settings, group: str, project: str) -> None:
    """Delete every member of GROUP, then the group; prints the operations."""
    ops = _service(settings, project, lambda s, caller: s.delete(caller, group))
    console.print(f"group {escape(group)}: {len(ops)} delete operations submitted", highlight=False)
    for op in ops:
        console.print(f"  operation {op.id} ({op.kind} of {op.target_id})", highlight=False)
