"""How long a ``metavmm`` command takes to start: ``metavmm --help`` and ``metavmm config check`` against
``python -c pass`` on the same interpreter, min and median of N runs, side by side.

    python -m bench.cli_start [--runs 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(argv: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, cwd=REPO, capture_output=True, check=False)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "metavmm --help": [sys.executable, "-m", "metavmm", "--help"],
        "metavmm operations --help": [sys.executable, "-m", "metavmm", "operations", "--help"],
        "metavmm config check": [sys.executable, "-m", "metavmm", "config", "check"],
    }
    base = None
    print(f"{'command':<28} {'min s':>7} {'median s':>9} {'min - python':>13}")
    for name, argv in cases.items():
        times = timed(argv, args.runs)
        low = min(times)
        base = low if base is None else base
        print(f"{name:<28} {low:7.3f} {statistics.median(times):9.3f} {low - base:13.3f}")


if __name__ == "__main__":
    main()
