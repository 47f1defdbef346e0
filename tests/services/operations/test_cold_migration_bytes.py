"""Byte figures of a cold migration between two real libvirt daemons (QEMU TCG): the export, convert and
import steps keep, in the operation's own step rows, the bytes they moved of how many and the rate in
MiB/s, while they run (read from the catalog, as ``GET /operations/{id}`` and the CLI read it) and after.

The source is made slow for real: the VM's disk gets 24 MiB of data (qemu-io), and a ``qemu-img`` first on
PATH passes ``-r`` (qemu-img's own rate limit) to every conversion, so each data step lasts seconds."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import direct
from bench.libvirt_hosts import LibvirtHosts
from metavmm.catalog.models import Operation, OperationState
from metavmm.services.operations import flows, store
from metavmm.services.operations.engine import Engine
from tests.services.operations.conftest import run
from tests.services.operations.test_cli import cli
from tests.services.operations.test_libvirt_flows import engine, workload  # noqa: F401 (the fixture)

MIB = 2**20
DATA_MIB = 24
RATE = "8M"  # bytes per second qemu-img may write: 24 MiB of data take ~3 s per conversion


@pytest.fixture
def slow_qemu_img(qemu_img_shim: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``qemu-img convert`` rate-limited (``-r``), in front of the hosts' ownership shim."""
    shim = tmp_path / "slow-bin"
    shim.mkdir()
    nxt = shutil.which("qemu-img")  # the ownership shim the fixture put first
    (shim / "qemu-img").write_text(f'#!/bin/bash\nif [ "$1" = convert ]; then shift\n'
                                   f'  exec "{nxt}" convert -r {RATE} "$@"\nfi\nexec "{nxt}" "$@"\n')
    (shim / "qemu-img").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}:{os.environ['PATH']}")


async def stopped_with_data(ops: Engine, hosts: LibvirtHosts, name: str, write: str) -> tuple[str, Path]:
    """A 64 MiB VM at lv0, stopped, its disk given data by qemu-io (``write``: e.g. ``write -P 0x5a 4M 24M``):
    the workload id and the disk file (an overlay of the hosts' empty base image)."""
    before = hosts.disk_files(0)
    done = await run(ops, await direct.provision(ops, name=name, provider="lv0", region="host0",
                                                 image=str(hosts.base_image), ram_mib=64))
    assert done.state == OperationState.SUCCEEDED, done.error
    assert done.target_id is not None
    assert (await run(ops, await flows.power(ops, done.target_id, "stop"))).state == OperationState.SUCCEEDED
    (disk,) = [p for p in hosts.disk_files(0) - before if p.suffix == ".qcow2" and "seed" not in p.name]
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", write, str(disk)], check=True, capture_output=True)
    return done.target_id, disk


async def sample(ops: Engine, op_id: str, seen: list[dict[str, object]], stop: asyncio.Event) -> None:
    """Every step's transfer figures as the catalog holds them while the operation runs."""
    while not stop.is_set():
        op = await store.get(ops.sessions, op_id)
        seen.extend({"step": s["name"], "state": s["state"], **s["transfer"]} for s in op.steps if s.get("transfer"))
        await asyncio.sleep(0.1)


async def test_cold_migration_records_bytes_while_running_and_after(engine: Engine,  # noqa: F811 (the fixture)
                                                                    libvirt_hosts: LibvirtHosts,
                                                                    slow_qemu_img: None, tmp_path: Path) -> None:
    wid, disk = await stopped_with_data(engine, libvirt_hosts, "bytes-vm", f"write -P 0x5a 4M {DATA_MIB}M")
    # what the export must weigh: the same flattening, done here with the real tool (unthrottled)
    flat = tmp_path / "flat.qcow2"
    subprocess.run([shutil.which("qemu-img", path="/usr/bin"), "convert", "-f", "qcow2", "-O", "qcow2", str(disk),
                    str(flat)], check=True)

    op: Operation = await flows.cold_migrate(engine, wid, target_provider="lv1", disk_format="raw")
    assert [s["name"] for s in op.steps][1:4] == ["export", "convert", "import"]
    assert op.steps[1]["detail"].startswith("staged: lv1 (libvirt) imports from a file only")
    seen: list[dict[str, object]] = []
    stop = asyncio.Event()
    watcher = asyncio.create_task(sample(engine, op.id, seen, stop))
    try:
        done = await run(engine, op)
    finally:
        stop.set()
        await watcher
    assert done.state == OperationState.SUCCEEDED, done.error

    # while running: figures below the total, with a rate, for the throttled steps (lv1 takes the raw file by
    # moving it into its store: nothing to report until it is done)
    for name in ("export", "convert"):
        partial = [t for t in seen if t["step"] == name and t["state"] == "running"
                   and 0 < int(t["bytes"]) < int(t["total_bytes"])]  # type: ignore[call-overload]
        assert partial, f"no partial figure for {name}: {[t for t in seen if t['step'] == name]}"
        assert all(float(t["mib_per_s"]) > 0 for t in partial)  # type: ignore[arg-type]

    # after: each step moved the real size of what it wrote or read, at a rate in MiB/s
    steps = {s["name"]: s for s in done.steps}
    image_name = steps["import"]["args"]["name"]
    imported = libvirt_hosts.storage(1) / "images" / f"{image_name}.raw"
    assert imported.stat().st_size == 64 * MIB
    expect = {"export": flat.stat().st_size, "convert": 64 * MIB, "import": 64 * MIB}
    for name, size in expect.items():
        t = steps[name]["transfer"]
        assert (t["bytes"], t["total_bytes"], t["fraction"]) == (size, size, 1.0), (name, t)
        assert t["mib_per_s"] == round(t["bytes_per_s"] / MIB, 1) and t["mib_per_s"] > 0, (name, t)
        assert name == "import" or t["mib_per_s"] < 1000, (name, t)  # a copy's rate; a move has no speed limit
    # the converted raw was moved into lv1's store (the scratch directory is on the same file system): no copy
    assert "moved into the store: no copy" in " ".join(steps["import"]["log"]), steps["import"]
    assert expect["export"] > DATA_MIB * MIB  # the data written above went through the export
    # throttled at 8 MiB/s: the conversions' average rate shows it (the raw output's zeros are not limited)
    assert steps["export"]["transfer"]["mib_per_s"] < 16

    # `metavmm operations show` prints them in its data column
    code, out, _ = await asyncio.to_thread(cli, engine.database_url, "operations", "show", op.id)
    assert code == 0, out
    for name, size in expect.items():
        t = steps[name]["transfer"]
        shown = f"{size / MIB:.1f} of {size / MIB:.1f} MiB · {t['bytes_per_s'] / MIB:.1f} MiB/s"
        assert any(name in line and shown in line for line in out.splitlines()), (shown, out)

    _, at = await workload(engine, wid)
    assert at == "lv1"
    assert (await run(engine, await flows.delete(engine, wid))).state == OperationState.SUCCEEDED
