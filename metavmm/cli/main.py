"""The ``metavmm`` command line: the main group, which every command-group module joins.

Every command reads the federation file (``--config``, $METAVMM_CONFIG, or config/default.yaml) and
the database (``--database``, $METAVMM_DATABASE_URL, the file's ``database:``, or the embedded SQLite
default). Errors of metavmm's own kind are printed as one clear line and exit 1, never a traceback.
"""

from __future__ import annotations

import logging

import click

from metavmm.cli.common import MetavmmGroup, Settings


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


def _register() -> None:
    """Every command group, one module each; they import only :mod:`metavmm.cli.common`, never this module."""
    from metavmm.cli import (
        catalog,
        config,
        db,
        flows,
        identity,
        images,
        marketplace,
        operations,
        prices,
        schedule,
        serve,
    )

    for command in (serve.serve, db.db_group, config.config_group, catalog.catalog_group,
                    operations.operations_group, prices.prices_group, schedule.schedule_group, images.image_group,
                    images.ovf_group, marketplace.marketplace):
        main.add_command(command)
    identity.register(main)
    del flows  # its commands hang under `operations` (provision, act, resize, migrate, delete)


_register()

if __name__ == "__main__":
    main()
