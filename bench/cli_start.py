"""How long a ``metavmm`` command takes to start: ``metavmm --help``, ``metavmm <group> --help`` for every
group of :data:`metavmm.cli.main.COMMANDS` and ``metavmm config check``, against ``python -c pass`` on
the same interpreter, min and median of N runs, side by side. ``--commands`` adds
``metavmm <group> <cmd> --help`` for every subcommand (one row per command).

The machine is shared, so the load average is printed with the table, and each run's CPU time (user +
system of the child) beside its wall time: the CPU time moves much less with the load. ``--against
DIR`` times another checkout (say /work/main, before a change) in the same runs, interleaved run by
run, so both sides see the same load.

    python -m bench.cli_start [--runs 10] [--commands] [--only operations,schedule] [--against /work/main]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 0.3


def timed_once(argv: list[str], repo: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``argv`` with ``repo``'s metavmm first on the path."""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, cwd=repo, env=env, capture_output=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def subcommands(group: str) -> list[str]:
    """The subcommands of one group, read in this process (the timed runs are fresh processes)."""
    from metavmm.cli.main import main

    command = main.get_command(click.Context(main), group)
    if not isinstance(command, click.Group):
        return []
    return sorted(command.list_commands(click.Context(command)))


def cases(commands: bool, only: set[str]) -> dict[str, list[str]]:
    from metavmm.cli.main import COMMANDS

    metavmm = [sys.executable, "-m", "metavmm"]
    out = {"python -c pass": [sys.executable, "-c", "pass"], "metavmm --help": [*metavmm, "--help"]}
    for group in sorted(COMMANDS):
        if only and group not in only:
            continue
        out[f"metavmm {group} --help"] = [*metavmm, group, "--help"]
        if commands:
            for name in subcommands(group):
                out[f"metavmm {group} {name} --help"] = [*metavmm, group, name, "--help"]
    if not only:
        out["metavmm config check"] = [*metavmm, "config", "check"]
    return out


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--commands", action="store_true", help="also every `metavmm <group> <cmd> --help`")
    parser.add_argument("--only", default="", help="comma-separated groups (default: all)")
    parser.add_argument("--against", type=Path, help="another checkout, timed in the same runs (before)")
    args = parser.parse_args()
    only = {name for name in args.only.split(",") if name}
    sides = {"": REPO} if args.against is None else {"before ": args.against.resolve(), "": REPO}
    table = cases(args.commands, only)
    width = max(len(name) for name in table) + 2
    print(f"{args.runs} runs each; load average before: {_load()}")
    header = f"{'command':<{width}}"
    for label in sides:
        header += f" {label + 'min s':>13} {label + 'median s':>16} {label + 'cpu min s':>16}"
    print(header + "  (after: this checkout)" * bool(args.against))
    slow = []
    for name, argv in table.items():
        runs: dict[str, list[tuple[float, float]]] = {label: [] for label in sides}
        for _ in range(args.runs):
            for label, repo in sides.items():  # interleaved: both sides see the same load
                runs[label].append(timed_once(argv, repo))
        line = f"{name:<{width}}"
        for label in sides:
            walls = [wall for wall, _ in runs[label]]
            line += f" {min(walls):13.3f} {statistics.median(walls):16.3f} {min(c for _, c in runs[label]):16.3f}"
        low = min(wall for wall, _ in runs[""])
        if name not in ("python -c pass", "metavmm config check") and low > TARGET_S:
            slow.append(name)
            line += f"  > {TARGET_S} s"
        print(line, flush=True)
    print(f"load average after: {_load()}")
    print(f"this checkout over {TARGET_S} s (min of {args.runs}): {', '.join(slow) if slow else 'none'}")


if __name__ == "__main__":
    main()
