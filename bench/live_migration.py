"""Live migration through the broker against plain ``virsh migrate`` on the same domain, side by side.

Two libvirt session daemons on this machine play two hosts (bench/libvirt_hosts.py). One small TCG
domain (64 MiB, a qcow2 overlay on a 64 MiB base) is provisioned through the broker, then moved back
and forth ``--rounds`` times: through the broker (an operation of three steps: migrate, verify at the
target, record in the catalog; timed from submit to "succeeded") and with plain
``virsh migrate --live --persistent --undefinesource --copy-storage-all`` between the same daemons
(timed twice: the ``virsh migrate`` command alone, and with the preparation it needs for the disk to
land in the target's storage: dumpxml, pre-creating the target disk, removing the source disk).

Usage: python -m bench.live_migration [--rounds 3]   (needs root and libvirtd; ~1 minute)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from sqlmodel import select

from bench import direct
from bench.engine_harness import median_row, serving_engine, until_succeeded
from bench.libvirt_hosts import LibvirtHosts, two_hosts
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Provider, Workload
from metavmm.foundation.config import parse_config
from metavmm.services.operations import flows
from metavmm.services.operations.engine import Engine
from metavmm.services.sync import sync_all


def _virsh(uri: str, *args: str) -> str:
    done = subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"virsh {args[0]} at {uri} failed: {done.stderr.strip()}")
    return done.stdout


def virsh_migrate(hosts: LibvirtHosts, name: str, src: int, dst: int) -> tuple[float, float]:
    """(seconds of `virsh migrate` alone, seconds including the disk preparation)."""
    t0 = time.perf_counter()
    src_uri, dst_uri = hosts.uris[src], hosts.uris[dst]
    xml = _virsh(src_uri, "dumpxml", "--migratable", name)
    old = next(line.split("'")[1] for line in xml.splitlines() if "<source file=" in line)
    new = str(hosts.storage(dst) / "disks" / Path(old).name)
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", old], check=True,
                                     capture_output=True, text=True).stdout)
    Path(new).parent.mkdir(parents=True, exist_ok=True)
    backing = ["-F", info["backing-filename-format"], "-b", info["backing-filename"]] \
        if "backing-filename" in info else []  # an overlay keeps its base; a standalone disk is copied whole
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *backing, new, str(info["virtual-size"])], check=True)
    with tempfile.NamedTemporaryFile("w", suffix=".xml") as f:
        f.write(xml.replace(old, new))
        f.flush()
        t1 = time.perf_counter()
        _virsh(src_uri, "migrate", "--live", "--persistent", "--undefinesource", "--copy-storage-all",
               "--xml", f.name, "--persistent-xml", f.name, name, dst_uri)
        t2 = time.perf_counter()
    Path(old).unlink()
    return t2 - t1, time.perf_counter() - t0


async def _set_placement(engine: Engine, wid: str, provider: str) -> None:
    """virsh moved the VM behind the broker's back: put the catalog where the VM is (bench bookkeeping)."""
    async with session_scope(engine.sessions) as session:
        prov = (await session.exec(select(Provider).where(Provider.name == provider))).one()
        w = await session.get(Workload, wid)
        assert w is not None
        w.provider_id = prov.id
        session.add(w)


async def run(rounds: int) -> None:
    with two_hosts() as hosts, tempfile.TemporaryDirectory() as tmp:
        os.environ["PATH"] = f"{hosts.shim_dir}:{os.environ['PATH']}"
        work = hosts.root / "work"
        work.mkdir()
        config = parse_config(hosts.federation_yaml(work))
        async with serving_engine(config, f"sqlite:///{tmp}/catalog.db") as engine:
            await sync_all(engine.sessions, config)
            op = await direct.provision(engine, name="bench-vm", provider="lv0", region="host0",
                                        image=str(hosts.base_image), ram_mib=64)
            await until_succeeded(engine, op.id)
            wid = op.target_id
            assert wid is not None
            broker_s: list[float] = []
            virsh_s: list[float] = []
            virsh_total_s: list[float] = []
            for _ in range(rounds):
                for dst in (1, 0):
                    t0 = time.perf_counter()
                    op = await flows.live_migrate(engine, wid, target_provider=f"lv{dst}")
                    await until_succeeded(engine, op.id)
                    broker_s.append(time.perf_counter() - t0)
                for src, dst in ((0, 1), (1, 0)):
                    alone, total = await asyncio.to_thread(virsh_migrate, hosts, "bench-vm", src, dst)
                    virsh_s.append(alone)
                    virsh_total_s.append(total)
                await _set_placement(engine, wid, "lv0")

    row = median_row
    print("live migration of one 64 MiB TCG domain between two libvirt daemons (NBD disk copy), median:")
    print(row("through the broker (submit -> succeeded)", broker_s))
    print(row("virsh migrate alone", virsh_s))
    print(row("virsh migrate + disk preparation", virsh_total_s))
    overhead = statistics.median(broker_s) - statistics.median(virsh_s)
    print(f"broker overhead over virsh migrate alone: {overhead:+.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="round trips per method (2 migrations each)")
    asyncio.run(run(parser.parse_args().rounds))


if __name__ == "__main__":
    main()
