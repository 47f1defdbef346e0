"""OpenStack live migration through the broker against the plain openstacksdk call, on the same server.

One real nova region (bench/nova_regions.py: nova-api, conductor, scheduler, placement and two
nova-compute services on the fake virt driver) holds one m1.tiny server, provisioned through the
broker. It is moved compute1 -> compute2 -> compute1 ``--rounds`` times by each method:

- through the broker: ``flows.live_migrate`` submitted to an engine whose in-process executor serves
  it (steps: migrate and wait at nova, verify the server runs at the target, record it in the
  catalog); timed from submit to the operation row saying "succeeded";
- plain openstacksdk: ``compute.live_migrate_server(server, host=..., block_migration="auto")``, then
  ``get_server`` until the server is ACTIVE on the target host with no task state, polled every
  0.3 s (the driver's interval) and every 0.1 s.

The emulated nova finishes a migration sooner when it is polled more often (its in-process services
make progress while it answers requests), so the plain call is timed at both intervals.

Usage: python -m bench.openstack_live_migration [--rounds 5]   (starts its own nova: ~1 minute)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import openstack

from bench import direct
from bench.engine_harness import median_row, serving_engine, until_succeeded
from bench.nova_regions import NOVA_IMAGE, nova_regions
from metavmm.catalog.models import Workload
from metavmm.foundation.config import parse_config
from metavmm.services.operations import flows
from metavmm.services.operations.engine import Engine
from metavmm.services.sync import sync_all


def sdk_migrate(conn: Any, server_id: str, host: str, poll_s: float, timeout_s: float = 120) -> float:
    """Seconds from the live-migration call until nova reports the server ACTIVE on ``host``, settled."""
    t0 = time.perf_counter()
    conn.compute.live_migrate_server(server_id, host=host, block_migration="auto")
    deadline = t0 + timeout_s
    while time.perf_counter() < deadline:
        server = conn.compute.get_server(server_id)
        if server.status == "ACTIVE" and server.compute_host == host and not server.task_state:
            return time.perf_counter() - t0
        if server.status == "ERROR":
            raise RuntimeError(f"live migration of {server_id} to {host} failed: {server.fault}")
        time.sleep(poll_s)
    raise TimeoutError(f"live migration of {server_id} to {host} did not finish in {timeout_s:.0f} s")


async def run(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, nova_regions(Path(tmp) / "nova", regions=("RegionOne",)) as cloud:
        config = parse_config(f"providers:\n  - {{kind: openstack, name: os1, cloud: {cloud.cloud}}}\n")
        conn = openstack.connect(cloud=cloud.cloud, region_name="RegionOne")
        try:
            async with serving_engine(config, f"sqlite:///{tmp}/catalog.db") as engine:
                broker_s, migrate_step_s, sdk_s = await _measure(engine, conn, rounds)
        finally:
            conn.close()

    print("live migration of one m1.tiny server between two nova-compute hosts (fake virt driver), median:")
    print(median_row("through the broker (submit -> succeeded)", broker_s, 52))
    print(median_row("  of which the migrate step (driver call + wait)", migrate_step_s, 52))
    for poll_s, times in sdk_s.items():
        print(median_row(f"plain openstacksdk, polled every {poll_s} s", times, 52))
    overhead = statistics.median(broker_s) - statistics.median(sdk_s[0.3])
    print(f"broker overhead over the plain call at the same poll interval: {overhead:+.2f} s")


async def _measure(engine: Engine, conn: Any, rounds: int) -> tuple[list[float], list[float], dict[float, list[float]]]:
    await sync_all(engine.sessions, engine.config)
    op = await direct.provision(engine, name="bench-os", provider="os1", region="RegionOne", image=NOVA_IMAGE,
                                flavor="m1.tiny", host="compute1")
    await until_succeeded(engine, op.id)
    wid = op.target_id
    assert wid is not None
    async with engine.sessions() as session:
        workload = await session.get(Workload, wid)
        assert workload is not None and workload.provider_resource_id
    server_id = workload.provider_resource_id.split("/")[1]
    broker_s: list[float] = []
    migrate_step_s: list[float] = []
    sdk_s: dict[float, list[float]] = {0.3: [], 0.1: []}
    for _ in range(rounds):
        for host in ("compute2", "compute1"):
            t0 = time.perf_counter()
            op = await flows.live_migrate(engine, wid, target_provider="os1", target_host=host)
            done = await until_succeeded(engine, op.id)
            broker_s.append(time.perf_counter() - t0)
            migrate_step_s.append(_span(done.steps[0]))
        for poll_s, times in sdk_s.items():
            for host in ("compute2", "compute1"):
                times.append(await asyncio.to_thread(sdk_migrate, conn, server_id, host, poll_s))
    await until_succeeded(engine, (await flows.delete(engine, wid)).id)
    return broker_s, migrate_step_s, sdk_s


def _span(step: dict[str, Any]) -> float:
    """Seconds a step ran (its row keeps ISO timestamps)."""
    return (datetime.fromisoformat(step["finished_at"]) - datetime.fromisoformat(step["started_at"])).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="round trips per method (2 migrations each)")
    asyncio.run(run(parser.parse_args().rounds))


if __name__ == "__main__":
    main()
