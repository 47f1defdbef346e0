"""The pump's own cost (``translators.diskstream.pump``): what it adds to carrying an HTTP body into a sink.

``--size-mib`` of a body from memory in 256 KiB pieces (what aiohttp hands over from a loopback socket), a
hasher that only counts and a sink that reads one byte of each piece, so nothing but the pump is measured:
gathering the pieces into CHUNKs, handing them to the worker thread and back. This tree's pump and git
REF's (``--against``, loaded beside it) take turns, ``--repeat`` rounds; min and median of wall and CPU
seconds (this process, both threads) are printed.
Usage: python -m bench.pump [--size-mib 512] [--repeat 7] [--against main]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from bench.replication import pump_at
from metavmm.translators import diskstream

MIB = 2**20
PIECE = 256 * 1024


class Counted:
    """A hasher that only counts (the pump reads ``size`` and calls ``update``)."""

    size = 0

    def update(self, chunk: Any) -> None:
        self.size += len(chunk)


class Touched:
    """A sink that reads one byte of each piece, in the worker thread, as a lent piece."""

    keeps_pieces = False

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        chunk[0]

    def finish(self) -> None:
        pass


async def body(size_mib: int) -> AsyncIterator[bytes]:
    data = bytes(range(256)) * (MIB // 256)
    pieces = [data[i:i + PIECE] for i in range(0, MIB, PIECE)]
    for _ in range(size_mib):
        for piece in pieces:
            yield piece


def cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


async def run(size_mib: int, repeat: int, against: str) -> None:
    pumps: dict[str, Callable[..., Any]] = {"this tree": diskstream.pump, against: pump_at(against)}
    got: dict[str, list[tuple[float, float]]] = {name: [] for name in pumps}
    for _ in range(repeat):
        for name, pump in pumps.items():
            used, started = cpu(), time.perf_counter()
            await pump(body(size_mib), Touched(), Counted())
            got[name].append((time.perf_counter() - started, cpu() - used))
    print(f"{size_mib} MiB in {PIECE // 1024} KiB pieces, {repeat} rounds taking turns")
    print(f"{'pump':12} {'wall min':>9} {'wall med':>9} {'CPU min':>8} {'CPU med':>8}")
    for name, rows in got.items():
        walls, cpus = [r[0] for r in rows], [r[1] for r in rows]
        print(f"{name:12} {min(walls):9.3f} {statistics.median(walls):9.3f} {min(cpus):8.3f} "
              f"{statistics.median(cpus):8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--against", default="main", metavar="REF")
    args = parser.parse_args()
    asyncio.run(run(args.size_mib, args.repeat, args.against))


if __name__ == "__main__":
    main()
