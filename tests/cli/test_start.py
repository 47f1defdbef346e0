"""Every ``metavmm <group> --help`` and ``metavmm <group> <cmd> --help`` works and loads no heavy package.

A command's help is only its click declaration, so its module must not import SQLAlchemy, pydantic, the
scheduler, the engine or an SDK at module level: those load inside the command when it runs (issue
16 item 15; bench.cli_start measures the time). Each group runs in a fresh interpreter, as the
``metavmm`` command does, and reports what it imported; nothing here is timed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from metavmm.cli.main import COMMANDS

REPO = Path(__file__).resolve().parents[2]
Runs = dict[str, list[dict[str, Any]]]  # group: [{"args": [...], "code": exit status, "heavy": [...]}]

HEAVY = ("sqlalchemy", "sqlmodel", "alembic", "pydantic", "yaml", "networkx", "numpy", "scipy", "aiohttp",
         "libvirt", "boto3", "botocore", "openstack", "pyVmomi", "cryptography", "procrastinate", "lxml",
         "metavmm.catalog.models", "metavmm.scheduler", "metavmm.drivers", "metavmm.api", "metavmm.translators",
         "metavmm.services")
"""Packages (and metavmm layers) a command's help must not import."""
LIGHT = ("metavmm.services", "metavmm.services.vocabulary")
"""The modules of those layers a help may import: the services' package and the words options offer."""

HEAVY_ALLOWED: dict[str, dict[str, str]] = {
    "image convert": {"metavmm.translators": "--to's help lists the disk translator's output formats (it loads no "
                                              "SDK, no lxml)"},
}
"""What a group's or a command's help may load, and why: only what a lazy import cannot avoid (a group
listed whole, say ``"cluster"``, would be one whose module cannot be light)."""


PROBE = """
import json, sys
import click
from metavmm.cli.main import main

heavy, light = json.loads(sys.argv[2])
group = sys.argv[1]
runs = []

def help_of(*args):
    before = set(sys.modules)
    try:
        main([*args, "--help"])
        code = 0
    except SystemExit as exc:
        code = exc.code
    new = set(sys.modules) - before - set(light)  # what this help loaded (the first loads the group's module)
    loaded = sorted(h for h in heavy if any(m == h or m.startswith(h + ".") for m in new))
    runs.append({"args": list(args), "code": code, "heavy": loaded})

help_of(group)
command = main.get_command(click.Context(main), group)
if isinstance(command, click.Group):
    for name in command.list_commands(click.Context(command)):
        help_of(group, name)
print(json.dumps(runs))
"""


@pytest.fixture(scope="module")
def helps() -> Runs:
    """Every group's --help, then each of its commands', in one fresh interpreter per group (run side by side)."""
    procs = {group: subprocess.Popen([sys.executable, "-c", PROBE, group, json.dumps([HEAVY, LIGHT])], cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for group in COMMANDS}
    out = {}
    for group, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{group}: {stderr[-2000:]}"
        out[group] = json.loads(stdout.strip().splitlines()[-1])
    return out


@pytest.mark.parametrize("group", sorted(COMMANDS))
def test_group_and_command_help_exit_0(helps: Runs, group: str) -> None:
    runs = helps[group]
    assert runs[0]["args"] == [group]
    failed = [" ".join(r["args"]) for r in runs if r["code"] != 0]
    assert not failed, failed


@pytest.mark.parametrize("group", sorted(COMMANDS))
def test_help_loads_no_heavy_package(helps: Runs, group: str) -> None:
    loaded = {}
    for run in helps[group]:
        path = " ".join(run["args"])
        extra = set(run["heavy"]) - set(HEAVY_ALLOWED.get(path, ()))
        if extra:
            loaded[path] = sorted(extra)
    assert not loaded, f"--help imported {loaded}: move these imports into the commands"


def test_probe_sees_a_heavy_import() -> None:
    """The check can fail: a module that imports SQLAlchemy at the top is caught."""
    probe = PROBE.replace('main([*args, "--help"])', 'import sqlalchemy; main([*args, "--help"])')
    assert probe != PROBE
    out = subprocess.run([sys.executable, "-c", probe, "db", json.dumps([HEAVY, LIGHT])], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    runs = json.loads(out.strip().splitlines()[-1])
    assert runs[0]["code"] == 0 and "sqlalchemy" in runs[0]["heavy"]
