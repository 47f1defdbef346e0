"""Disk conversion through metavmm against plain ``qemu-img convert``, on the same 1 GiB image.

    .venv/bin/python -m bench.convert [--size-mib 1024] [--repeat 3] [--dir /var/tmp] [--fixed-rounds N]

The image is half data, half holes (like a real guest disk): 512 MiB of incompressible bytes in 4 MiB
runs, alternating with 4 MiB holes. For each conversion the table shows plain qemu-img, metavmm's
full path (untrusted-input inspection, explicit formats, progress parsing, ``qemu-img check`` of the
output, SHA-256 of source and output), and metavmm without the checksums, ``--repeat`` interleaved rounds,
with the ratio to plain qemu-img (of the minimums, and of the medians), metavmm when the source's digest
is already known ('known': only the output is hashed), the time one SHA-256 pass over source and output
takes alone (the work checksums add, however well it overlaps), the floor of any checksummed path as a
ratio to qemu-img (qemu-img, then one hashing pass over its output, or the source's hash alone if longer:
each digest is one sequential chain, and the output's can start only once the output exists), the MiB the output
allocates (holes stay holes) and the throughput the scheduler's cost table should use. The CPU columns
(minimum CPU seconds of the broker process and its tools, plain qemu-img's and metavmm's with checksums)
show the work each does, which a busy neighbour on a shared machine does not change the way it changes
wall times.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from metavmm.foundation.records import DiskRef
from metavmm.translators.costs import MIB, conversion_edge
from metavmm.translators.digest import sha256_file
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


def through_metavmm(src: Path, src_fmt: str, dst: Path, target: DiskTarget, checksum: bool,
                    known: str | None = None) -> float:
    """metavmm's whole path; ``known``: the source's digest is already known (the catalog's), so only the
    output is hashed."""
    started = time.perf_counter()
    asyncio.run(convert(DiskRef(str(src), src_fmt), target, dst, checksum=checksum, progress=lambda _p: None,
                        source_sha256=known))
    return time.perf_counter() - started


def cpu_seconds() -> float:
    """CPU time (user and system) of this process's threads and of the tools it waited for."""
    return sum(getattr(resource.getrusage(who), field) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for field in ("ru_utime", "ru_stime"))


def interleaved(runs: list[Callable[[], float]], repeat: int, dst: Path
                ) -> tuple[list[list[float]], list[list[float]], int]:
    """All times and CPU times of each run, taking turns (plain, metavmm, metavmm without hashes, plain, ...)
    so that page cache and a busy neighbour affect every contender alike; and the bytes the last output
    allocates."""
    times: list[list[float]] = [[] for _ in runs]
    cpu: list[list[float]] = [[] for _ in runs]
    allocated = 0
    for _ in range(repeat):
        for i, run in enumerate(runs):
            dst.unlink(missing_ok=True)
            before = cpu_seconds()
            times[i].append(run())
            cpu[i].append(cpu_seconds() - before)
            allocated = dst.stat().st_blocks * 512
    dst.unlink(missing_ok=True)
    return times, cpu, allocated


def hashing_alone(path: Path) -> float:
    """One SHA-256 pass over ``path`` (holes unread): the work a checksum adds, whatever overlaps it."""
    started = time.perf_counter()
    sha256_file(path)
    return time.perf_counter() - started


def fixed_costs(work: Path, rounds: int) -> None:
    """The fixed cost of metavmm's path without checksums (its extra qemu-img runs: inspection, checks, measure):
    a 4 MiB image with 1 MiB of data converted by plain qemu-img and by metavmm in turns; medians of the
    differences."""
    raw, qcow2 = work / "small.raw", work / "small.qcow2"
    with open(raw, "wb") as f:
        f.truncate(4 * MIB)
        f.write(os.urandom(MIB))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    sources, dst = {"raw": raw, "qcow2": qcow2}, work / "small.out"
    for src_fmt, target_name in CASES:
        if "streamOptimized" in target_name:
            continue
        target = DiskTarget.parse(target_name)
        (t_plain, t_fast), _cpu, _allocated = interleaved([
            partial(plain, sources[src_fmt], src_fmt, dst, target),
            partial(through_metavmm, sources[src_fmt], src_fmt, dst, target, False)], rounds, dst)
        extra = statistics.median(f - p for f, p in zip(t_fast, t_plain, strict=True))
        name = f"{src_fmt} -> {target_name}"
        print(f"{name:<28} plain {statistics.median(t_plain) * 1000:6.1f} ms, metavmm without checksums "
              f"{statistics.median(t_fast) * 1000:6.1f} ms, fixed cost {extra * 1000:6.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default="/var/tmp")
    parser.add_argument("--fixed-rounds", type=int, default=0,
                        help="only measure the fixed cost per conversion on a 4 MiB image, this many rounds")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="metavmm-bench-", dir=args.dir))
    try:
        if args.fixed_rounds:
            fixed_costs(work, args.fixed_rounds)
            return
        raw = work / "src.raw"
        make_image(raw, args.size_mib)
        qcow2 = work / "src.qcow2"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True)
        sources = {"raw": raw, "qcow2": qcow2}
        digests = {fmt: sha256_file(path) for fmt, path in sources.items()}
        size = args.size_mib * MIB
        print(f"{args.size_mib} MiB image (half data, half holes), {args.repeat} interleaved rounds: ratios of the "
              f"minimums and of the medians ('med'); load average {os.getloadavg()[0]:.1f}; qemu-img "
              f"{subprocess.run(['qemu-img', '--version'], capture_output=True, text=True).stdout.split()[2]}")
        header = (f"{'conversion':<28}{'qemu-img s':>11}{'metavmm s':>10}{'ratio':>7}{'med':>6}{'no-sha s':>9}"
                  f"{'ratio':>7}{'med':>6}{'known s':>8}{'ratio':>7}{'med':>6}{'sha alone':>10}{'floor':>6}"
                  f"{'written MiB':>12}{'MiB/s':>7}{'table s':>8}{'CPU s':>7}{'CPU s':>7}{'ratio':>6}")
        print(header)
        print("-" * len(header))
        for src_fmt, target_name in CASES:
            target = DiskTarget.parse(target_name)
            src, dst = sources[src_fmt], work / f"out.{target.format.value}"
            (t_plain, t_full, t_fast, t_known), (c_plain, c_full, _c_fast, _c_known), allocated = interleaved([
                partial(plain, src, src_fmt, dst, target),
                partial(through_metavmm, src, src_fmt, dst, target, True),
                partial(through_metavmm, src, src_fmt, dst, target, False),
                partial(through_metavmm, src, src_fmt, dst, target, True, digests[src_fmt])], args.repeat, dst)
            plain(src, src_fmt, dst, target)
            src_sha, out_sha = hashing_alone(src), hashing_alone(dst)
            dst.unlink()
            estimate = conversion_edge(src_fmt, target.format.value).seconds(size)
            p, f, n, k = min(t_plain), min(t_full), min(t_fast), min(t_known)
            # No checksummed path can beat qemu-img followed by one pass over its output (that hash can only
            # start once the output is complete), nor the source's hash alone (one sequential chain).
            floor = max(p + out_sha, src_sha)
            med = statistics.median
            name = f"{src_fmt} -> {target}"
            print(f"{name:<28}{p:>11.2f}{f:>10.2f}{f / p:>7.2f}{med(t_full) / med(t_plain):>6.2f}"
                  f"{n:>9.2f}{n / p:>7.2f}{med(t_fast) / med(t_plain):>6.2f}"
                  f"{k:>8.2f}{k / p:>7.2f}{med(t_known) / med(t_plain):>6.2f}{src_sha + out_sha:>10.2f}"
                  f"{floor / p:>6.2f}{allocated / MIB:>12.0f}"
                  f"{args.size_mib / n:>7.0f}{estimate:>8.2f}{min(c_plain):>7.2f}{min(c_full):>7.2f}"
                  f"{min(c_full) / min(c_plain):>6.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
