"""Inventory sync throughput: a simulated provider of N hosts reconciled into the catalog.

Measures the first sync (inserts) and a second sync (updates of the same rows) on SQLite, and on
PostgreSQL when --postgres URL is given. Usage: python -m bench.sync_sim [--hosts 10000] [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from metavmm.catalog import db
from metavmm.foundation.config import parse_config
from metavmm.services.sync import sync_all


async def run(url: str, hosts: int, sites: int) -> tuple[float, float]:
    cfg = parse_config(f"providers:\n  - {{name: bench, kind: sim, site_count: {sites}, "
                       f"hosts_per_site: {hosts // sites}}}\n")
    await db.upgrade_async(url)
    engine = db.make_engine(url)
    maker = db.make_sessionmaker(engine)
    try:
        t0 = time.perf_counter()
        (first,) = await sync_all(maker, cfg)
        t1 = time.perf_counter()
        (second,) = await sync_all(maker, cfg)
        t2 = time.perf_counter()
        assert first.error is None and second.error is None, (first.error, second.error)
        assert first.counts and first.counts.hosts == hosts
        return t1 - t0, t2 - t1
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--postgres", help="postgresql://... of an empty database")
    args = parser.parse_args()
    targets = {"sqlite": f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"}
    if args.postgres:
        targets["postgresql"] = args.postgres
    print(f"{'database':<12}{'hosts':>8}{'first sync s':>15}{'resync s':>12}{'hosts/s (first)':>18}")
    for name, url in targets.items():
        first, again = asyncio.run(run(url, args.hosts, args.sites))
        print(f"{name:<12}{args.hosts:>8}{first:>15.2f}{again:>12.2f}{args.hosts / first:>18.0f}")


if __name__ == "__main__":
    main()
