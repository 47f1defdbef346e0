"""Disk conversion through metavmm against plain ``qemu-img convert``, on the same 1 GiB image.

    .venv/bin/python -m bench.convert [--size-mib 1024] [--repeat 2] [--dir /var/tmp]

The image is half data, half holes (like a real guest disk): 512 MiB of incompressible bytes in 4 MiB
runs, alternating with 4 MiB holes. For each conversion the table shows plain qemu-img, metavmm's
full path (untrusted-input inspection, explicit formats, progress parsing, ``qemu-img check`` of the
output, SHA-256 of source and output), and metavmm without the checksums, best of ``--repeat`` interleaved runs,
with the ratio to plain qemu-img and the throughput the scheduler's cost table should use.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from metavmm.foundation.records import DiskRef
from metavmm.translators.costs import MIB, conversion_edge
from metavmm.translators.disk import DiskTarget, convert

CASES = [("qcow2", "raw"), ("raw", "qcow2"), ("raw", "vmdk"), ("raw", "vmdk:streamOptimized"), ("raw", "vpc"),
         ("qcow2", "vhdx"), ("raw", "vdi")]


def make_image(path: Path, size_mib: int) -> None:
    run = 4 * MIB
    with open(path, "wb") as f:
        f.truncate(size_mib * MIB)
        for offset in range(0, size_mib * MIB, 2 * run):
            f.seek(offset)
            f.write(os.urandom(run))


def plain(src: Path, src_fmt: str, dst: Path, target: DiskTarget) -> float:
    started = time.perf_counter()
    subprocess.run(["qemu-img", "convert", "-f", src_fmt, "-O", target.format.value, *target.options(), str(src),
                    str(dst)], check=True)
    return time.perf_counter() - started


def through_metavmm(src: Path, src_fmt: str, dst: Path, target: DiskTarget, checksum: bool) -> float:
    started = time.perf_counter()
    asyncio.run(convert(DiskRef(str(src), src_fmt), target, dst, checksum=checksum, progress=lambda _p: None))
    return time.perf_counter() - started


def interleaved(runs: list[Callable[[], float]], repeat: int, dst: Path) -> list[float]:
    """Best time of each run, taking turns (plain, metavmm, metavmm without hashes, plain, ...) so that page
    cache and a busy neighbour affect every contender alike."""
    best = [float("inf")] * len(runs)
    for _ in range(repeat):
        for i, run in enumerate(runs):
            dst.unlink(missing_ok=True)
            best[i] = min(best[i], run())
    dst.unlink(missing_ok=True)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="metavmm-bench-", dir=args.dir))
    try:
        raw = work / "src.raw"
        make_image(raw, args.size_mib)
        qcow2 = work / "src.qcow2"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True)
        sources = {"raw": raw, "qcow2": qcow2}
        size = args.size_mib * MIB
        print(f"{args.size_mib} MiB image (half data, half holes), best of {args.repeat}, qemu-img "
              f"{subprocess.run(['qemu-img', '--version'], capture_output=True, text=True).stdout.split()[2]}")
        header = (f"{'conversion':<28}{'qemu-img s':>11}{'metavmm s':>11}{'ratio':>7}{'no-sha s':>10}{'ratio':>7}"
                  f"{'MiB/s':>8}{'table s':>9}")
        print(header)
        print("-" * len(header))
        for src_fmt, target_name in CASES:
            target = DiskTarget.parse(target_name)
            src, dst = sources[src_fmt], work / f"out.{target.format.value}"
            t_plain, t_full, t_fast = interleaved([
                partial(plain, src, src_fmt, dst, target),
                partial(through_metavmm, src, src_fmt, dst, target, True),
                partial(through_metavmm, src, src_fmt, dst, target, False)], args.repeat, dst)
            estimate = conversion_edge(src_fmt, target.format.value).seconds(size)
            print(f"{src_fmt + ' -> ' + str(target):<28}{t_plain:>11.2f}{t_full:>11.2f}{t_full / t_plain:>7.2f}"
                  f"{t_fast:>10.2f}{t_fast / t_plain:>7.2f}{args.size_mib / t_fast:>8.0f}{estimate:>9.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
