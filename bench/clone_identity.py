"""What a clone's identity costs a cold migration: building the cloud-init seed ISO, and drawing an
address from a clone network, side by side for a small nearly-full network and a large sparse one.

* seed ISO: ``write_seed_iso`` (xorriso) with a static address, per build;
* draw: ``addresses.draw`` on a SQLite catalog where N present workloads already hold addresses
  (their ``spec["ip"]``), for a /22 with 1,000 of its 1,022 host addresses taken (enumerated) and a
  /16 with the same 1,000 taken (sampled).

Usage: python -m bench.clone_identity [--rounds 20]   (needs xorriso; a few seconds)
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import statistics
import tempfile
import time
from pathlib import Path

from metavmm.catalog import db
from metavmm.catalog.models import Workload
from metavmm.foundation.config import CloneNetwork
from metavmm.services.operations import addresses
from metavmm.translators.cloudinit import GuestIdentity, write_seed_iso

TAKEN = 1000


def _ms(samples: list[float]) -> str:
    return f"median {statistics.median(samples) * 1000:7.2f} ms  max {max(samples) * 1000:7.2f} ms"


async def seed_times(rounds: int, work: Path) -> list[float]:
    identity = GuestIdentity(instance_id="bench-1", hostname="bench-abc123", mac="52:54:00:12:34:56",
                             address="10.20.0.7/24", gateway="10.20.0.1", dns=("10.20.0.2",))
    out = []
    for i in range(rounds):
        started = time.perf_counter()
        await write_seed_iso(identity, work / f"seed-{i}.iso")
        out.append(time.perf_counter() - started)
    return out


async def draw_times(rounds: int, work: Path, cidr: str) -> list[float]:
    url = f"sqlite:///{work / cidr.replace('/', '_')}.db"
    await db.upgrade_async(url)
    engine = db.make_engine(url)
    sessions = db.make_sessionmaker(engine)
    net = CloneNetwork(cidr=ipaddress.IPv4Network("10.40.0.0/22" if cidr == "/22" else "10.40.0.0/16"))
    async with sessions() as session:
        hosts = net.cidr.hosts()
        for i in range(TAKEN):
            session.add(Workload(kind="compute", name=f"w{i}", spec={"ip": str(next(hosts))}))
        await session.commit()
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        await addresses.draw(sessions, net, where="bench")
        out.append(time.perf_counter() - started)
    await engine.dispose()
    return out


async def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="metavmm-bench-ci-") as tmp:
        work = Path(tmp)
        print(f"seed ISO (xorriso), {rounds} builds:            {_ms(await seed_times(rounds, work))}")
        for cidr in ("/22", "/16"):
            times = await draw_times(rounds, work, cidr)
            print(f"address draw, {cidr} with {TAKEN} taken, {rounds} draws: {_ms(times)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    asyncio.run(main(parser.parse_args().rounds))
