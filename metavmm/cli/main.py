"""The ``metavmm`` command line: the main group, which every command-group module joins.

Every command reads the federation file (``--config``, $METAVMM_CONFIG, or config/default.yaml) and
the database (``--database``, $METAVMM_DATABASE_URL, the file's ``database:``, or the embedded SQLite
default). Errors of metavmm's own kind are printed as one clear line and exit 1, never a traceback.
"""

from __future__ import annotations

import importlib
import logging

import click

from metavmm.cli.common import MetavmmGroup, Settings

COMMANDS: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    # name: (module, attribute, modules that add subcommands to it, the short help `metavmm --help` shows)
    "serve": ("metavmm.cli.serve", "serve", (),
              "Run the broker (OCCI at /, REST at /api/v1, /healthz, /readyz) until SIGTERM or Ctrl-C."),
    "db": ("metavmm.cli.db", "db_group", (), "Database schema."),
    "config": ("metavmm.cli.config", "config_group", (), "The federation file."),
    "catalog": ("metavmm.cli.catalog", "catalog_group", (), "The resource catalog."),
    "operations": ("metavmm.cli.operations", "operations_group", ("metavmm.cli.flows",),
                   "Operations: the broker's durable changes (provision, act, migrate, ...)."),
    "prices": ("metavmm.cli.prices", "prices_group", (),
               "Price catalog: import price files, compare a shape across providers and regions."),
    "schedule": ("metavmm.cli.schedule", "schedule_group", (),
                 "Placement, batch placement, migration plans and burst replays (dry runs); migrations that run."),
    "image": ("metavmm.cli.images", "image_group", (),
              "Disk images: inspect untrusted files, convert between formats."),
    "ovf": ("metavmm.cli.images", "ovf_group", (),
            "OVF/OVA packages: export disks as a package, import (verify, inspect, convert) one."),
    "marketplace": ("metavmm.cli.marketplace", "marketplace", (),
                    "Images published once by a school, launched at any site."),
    "school": ("metavmm.cli.schools", "school_group", (), "Schools: groups of projects that share school images."),
    "publisher": ("metavmm.cli.schools", "publisher_group", (),
                  "Publisher namespaces: which project publishes under which name."),
    "token": ("metavmm.cli.identity", "token_group", (), "API tokens for scripts and OCCI clients."),
    "project": ("metavmm.cli.identity", "project_group", (), "Projects."),
    "user": ("metavmm.cli.identity", "user_group", (), "Users, their memberships and client certificates."),
    "cluster": ("metavmm.cli.cluster", "cluster_group", (),
                "Virtual clusters: a class of identical computes created, scaled and deleted at once."),
    "ha": ("metavmm.cli.ha", "ha_group", (), "HA restart: computes restarted elsewhere when their host is lost."),
    "autoscale": ("metavmm.cli.autoscale", "autoscale_group", (),
                  "Auto-scaling groups: members added and removed by metric and schedule rules."),
    "dr": ("metavmm.cli.dr", "dr_group", (),
           "Disaster recovery: replicate workloads to another site, fail over and back."),
    "rebalance": ("metavmm.cli.rebalance", "rebalance_group", (),
                  "Automatic live migration on host load, and host maintenance."),
}
"""Every command group, imported only when it runs: `metavmm --help` and a command's start load no
database, scheduler or SDK code they do not use (tests/cli/test_main.py checks the short help against
the commands themselves)."""


class LazyGroup(MetavmmGroup):
    """The main group: command modules are imported on first use, their short help is known here."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attr, extra, _ = COMMANDS[cmd_name]
        for name in extra:
            importlib.import_module(name)
        command: click.Command = getattr(importlib.import_module(module), attr)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][3]) for name in self.list_commands(ctx)])


@click.group(cls=LazyGroup)
@click.option("--config", "config_path", envvar="METAVMM_CONFIG", type=click.Path(dir_okay=False),
              help="federation file (default: config/default.yaml)")
@click.option("--database", envvar="METAVMM_DATABASE_URL", help="sqlite:///PATH or postgresql://...")
@click.option("-v", "--verbose", count=True, help="more logging (-v info, -vv debug)")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", envvar="METAVMM_LOG_FORMAT",
              show_default=True, help="text for people, json (one object a line) for log collectors")
@click.version_option(package_name="metavmm")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, database: str | None, verbose: int, log_format: str) -> None:
    """metavmm: one federation over OpenStack, libvirt/KVM, vCenter, AWS, GCP and Azure."""
    from metavmm.foundation.logs import configure

    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    configure(level, log_format)
    ctx.obj = Settings(config_path, database)



if __name__ == "__main__":
    main()
