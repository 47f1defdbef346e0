"""Live migration through the broker against plain ``virsh migrate`` on the same domain, side by side.

Two libvirt session daemons on this machine play two hosts (bench/libvirt_hosts.py). One small TCG
domain (64 MiB, a qcow2 overlay on a 64 MiB base) is provisioned through the broker, then moved back
and forth ``--rounds`` times: through the broker (an operation of three steps: migrate, verify at the
target, record in the catalog; timed from submit to "succeeded") and with plain
``virsh migrate --live --persistent --undefinesource --copy-storage-all`` between the same daemons
(timed twice: the ``virsh migrate`` command alone, and with the preparation it needs for the disk to
land in the target's storage: dumpxml, pre-creating the target disk, removing the source disk). The
federation declares the link between the daemons (``--link-mib-s``), which the plan weighs memory
against: the 64 MiB domain crosses it in well under a second, so its plan is pre-copy without a step.

Then a domain of ``--dirty-mib`` (1 GiB) whose boot sector rewrites all its memory without pause
(bench/dirty_guest.py) moves ``--dirty-rounds`` times through the broker (lv0 -> lv1: the plan
measures its dirty rate and chooses auto-converge or post-copy, see metavmm/scheduler/live_mode.py)
and back with plain ``virsh migrate`` given the same mode flags the broker's plan chose
(``--auto-converge --auto-converge-initial N``, or ``--postcopy --postcopy-after-precopy``); each row
says the memory sent and the pause, from the finished job at the target.

Usage: python -m bench.live_migration [--rounds 3] [--dirty-rounds 2]   (root and libvirtd; ~4 minutes)
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
from typing import Any

from sqlmodel import select

from bench import direct
from bench.dirty_guest import until_dirtying, write_disk
from bench.engine_harness import median_row, serving_engine, until_succeeded
from bench.libvirt_hosts import LibvirtHosts, two_hosts
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Provider, Workload
from metavmm.drivers.registry import create_driver
from metavmm.foundation.config import parse_config
from metavmm.services.operations import flows
from metavmm.services.operations.engine import Engine
from metavmm.services.sync import sync_all


def _virsh(uri: str, *args: str) -> str:
    done = subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"virsh {args[0]} at {uri} failed: {done.stderr.strip()}")
    return done.stdout


def virsh_migrate(hosts: LibvirtHosts, name: str, src: int, dst: int, *flags: str) -> tuple[float, float]:
    """(seconds of `virsh migrate` alone, seconds including the disk preparation), with ``flags`` added
    to the plain ones (``--auto-converge``, ``--postcopy``...)."""
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
               "--xml", f.name, "--persistent-xml", f.name, *flags, name, dst_uri)
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


def completed_job(uri: str, name: str) -> dict[str, str]:
    """``virsh domjobinfo --completed`` of the migration that just ended, read at its target."""
    out = _virsh(uri, "domjobinfo", "--completed", "--keep-completed", name)
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()) if v}


def virsh_flags(outputs: dict[str, Any]) -> list[str]:
    """The ``virsh migrate`` options of the mode the broker's plan chose (same flags, side by side)."""
    mode = outputs.get("live_mode")
    if mode == "auto-converge":
        initial = outputs.get("auto_converge_initial")
        return ["--auto-converge", *(["--auto-converge-initial", str(initial)] if initial is not None else [])]
    if mode == "postcopy":
        return ["--postcopy", "--postcopy-after-precopy"]
    return []


async def _provision(engine: Engine, name: str, image: Path, ram_mib: int) -> tuple[str, str]:
    """(workload id, provider VM id) of a new VM on lv0."""
    op = await direct.provision(engine, name=name, provider="lv0", region="host0", image=str(image),
                                ram_mib=ram_mib)
    done = await until_succeeded(engine, op.id)
    assert done.target_id is not None
    return done.target_id, done.outputs["vm_id"]


async def run(rounds: int, dirty_rounds: int, link_mib_s: float, dirty_mib: int) -> None:
    with two_hosts() as hosts, tempfile.TemporaryDirectory() as tmp:
        os.environ["PATH"] = f"{hosts.shim_dir}:{os.environ['PATH']}"
        work = hosts.root / "work"
        work.mkdir()
        config = parse_config(hosts.federation_yaml(work, link_mib_per_s=link_mib_s))
        dirty_image = write_disk(hosts.root / "dirty.raw", dirty_mib)
        dirty_image.chmod(0o644)
        async with serving_engine(config, f"sqlite:///{tmp}/catalog.db") as engine:
            await sync_all(engine.sessions, config)
            wid, _ = await _provision(engine, "bench-vm", hosts.base_image, 64)
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
            await until_succeeded(engine, (await flows.delete(engine, wid)).id)  # its memory for the big one

            # the dirtying guest: through the broker lv0 -> lv1 (the plan measures and chooses), then plain
            # virsh back lv1 -> lv0 with the flags the broker's plan chose
            dirty_wid, vm_id = await _provision(engine, "bench-dirty", dirty_image, dirty_mib)
            lv0 = create_driver(config.provider("lv0"))
            try:
                await until_dirtying(lv0, vm_id)
            finally:
                await lv0.close()
            dirty: list[tuple[float, dict[str, Any], dict[str, Any], float, dict[str, str], list[str]]] = []
            for _ in range(dirty_rounds):
                t0 = time.perf_counter()
                op = await flows.live_migrate(engine, dirty_wid, target_provider="lv1")
                done = await until_succeeded(engine, op.id)
                took = time.perf_counter() - t0
                transfer = next(s for s in done.steps if s["action"] == "vm.live_migrate").get("transfer") or {}
                flags = virsh_flags(done.outputs)
                alone, _ = await asyncio.to_thread(virsh_migrate, hosts, "bench-dirty", 1, 0, *flags)
                dirty.append((took, done.outputs, transfer, alone, completed_job(hosts.uris[0], "bench-dirty"), flags))
                await _set_placement(engine, dirty_wid, "lv0")

    row = median_row
    print("live migration of one 64 MiB TCG domain between two libvirt daemons (NBD disk copy), median:")
    print(row("through the broker (submit -> succeeded)", broker_s))
    print(row("virsh migrate alone", virsh_s))
    print(row("virsh migrate + disk preparation", virsh_total_s))
    overhead = statistics.median(broker_s) - statistics.median(virsh_s)
    print(f"broker overhead over virsh migrate alone: {overhead:+.2f} s; "
          f"ratio {statistics.median(broker_s) / statistics.median(virsh_s):.2f}")
    print(f"\nlive migration of a {dirty_mib} MiB TCG domain rewriting all its memory (bench/dirty_guest.py), "
          f"link declared {link_mib_s:g} MiB/s:")
    for took, outputs, transfer, alone, job, flags in dirty:
        sent = (transfer.get("memory_bytes") or 0) / 2**30
        print(f"  broker {took:6.2f} s ({outputs.get('live_mode')}, {sent:.1f} GiB sent, downtime "
              f"{transfer.get('downtime_ms')} ms; dirty rate measured {outputs['live_inputs']['dirty_mib_per_s']:g}"
              f" MiB/s)" if "live_inputs" in outputs else f"  broker {took:6.2f} s ({outputs.get('live_mode')})")
        print(f"  virsh migrate {' '.join(flags) or '(no mode flags)'}: {alone:6.2f} s "
              f"({job.get('Memory processed')} sent, downtime {job.get('Total downtime')}); "
              f"ratio {took / alone:.2f}")
        print(f"  why: {outputs.get('why_live_mode')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="round trips per method (2 migrations each)")
    parser.add_argument("--dirty-rounds", type=int, default=2,
                        help="moves of the dirtying domain per method (one broker, one virsh each)")
    parser.add_argument("--dirty-mib", type=int, default=1024, help="RAM of the dirtying domain, all of it rewritten")
    parser.add_argument("--link-mib-s", type=float, default=400.0,
                        help="the link rate the federation declares between the two daemons (what the plan "
                             "weighs the dirty rate against); libvirt moved memory at 240-460 MiB/s here")
    args = parser.parse_args()
    asyncio.run(run(args.rounds, args.dirty_rounds, args.link_mib_s, args.dirty_mib))


if __name__ == "__main__":
    main()
