"""A classroom on the local libvirt host (QEMU TCG): a 30-seat cluster of the tiny image in one request,
against 30 single creates in sequence, in the same run (issue 20).

Both sides go through the same services the REST API calls (the cluster service creates its seats
through the one workload service) with the operations engine running in this process, on the system
daemon (``--uri``), with disks in a fresh directory under /var/tmp. The image is the built-in
``metavmm/tiny`` (a boot sector that prints a marker on the serial console), replicated once; every VM
is a qcow2 overlay over that replica (a linked clone). "Running" is the end of the create operation
(the domain runs and, where the federation has a boot marker, its console showed it).

Reported: seconds until all 30 are running (sequence: each create waited for before the next; class:
one request, the seats created and started in parallel within the engine's ``--concurrency``), per
seat (median and slowest from request to running), and the disk use of the 30 overlays (allocated
blocks) beside the base image's. Everything made is deleted, and the script checks nothing is left.

    .venv/bin/python -m bench.classroom [--seats 30] [--concurrency 8] [--uri qemu:///system]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import libvirt
from sqlmodel import select

from metavmm.catalog import db
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import ImageReplica, Workload
from metavmm.foundation.config import parse_config
from metavmm.services.clusters import ClusterRequest, ClusterService
from metavmm.services.identity import operator_identity
from metavmm.services.marketplace.builtin import ensure_builtin_images
from metavmm.services.operations import store
from metavmm.services.operations.engine import Engine
from metavmm.services.placement import Placer
from metavmm.services.sync import sync_all
from metavmm.services.workloads.requests import CreateRequest
from metavmm.services.workloads.service import WorkloadService

IMAGE = "metavmm/tiny"


def federation(uri: str, storage: Path, work: Path, concurrency: int) -> str:
    return f"""
federation: {{sync_interval_s: 0, builtin_images: true}}
providers:
  - {{name: bench-lv, kind: libvirt, endpoint: "{uri}", domain_type: qemu, storage_dir: "{storage}",
     sites: [{{region: local}}]}}
operations: {{concurrency: {concurrency}, reconcile_interval_s: 0, retry_base_s: 0.2, work_dir: "{work}"}}
scheduler: {{cpu_allocation_ratio: 32}}
prices:
  - {{provider: bench-lv, region: local, currency: USD, effective_date: 2026-01-01, source: bench rates,
     items: [{{flavor: custom, unit: vcpu-hour, amount: 0.01}}, {{flavor: custom, unit: gib-hour, amount: 0.002}}]}}
"""


async def ended(sessions: Any, ids: list[str], started: float) -> dict[str, float]:
    """Seconds from ``started`` until each operation ended (polled every 50 ms); every one must succeed."""
    done: dict[str, float] = {}
    while len(done) < len(ids):
        for op_id in ids:
            if op_id in done:
                continue
            op = await store.get(sessions, op_id)
            if op.state in store.TERMINAL:
                if op.state != "succeeded":
                    raise SystemExit(f"operation {op.id} ({op.kind}) {op.state}: {op.error}")
                done[op_id] = time.perf_counter() - started
        await asyncio.sleep(0.05)
    return done


async def step_means(sessions: Any, ids: list[str]) -> dict[str, float]:
    """Mean seconds of each step of these operations (where a class's time goes), and their wait to start."""
    spans: dict[str, list[float]] = {}
    for op_id in ids:
        op = await store.get(sessions, op_id)
        first = min(s["started_at"] for s in op.steps if s.get("started_at"))
        spans.setdefault("(queued)", []).append((_ts(first) - op.created_at.replace(tzinfo=None)).total_seconds())
        for s in op.steps:
            if s.get("started_at") and s.get("finished_at"):
                spans.setdefault(s["name"], []).append((_ts(s["finished_at"]) - _ts(s["started_at"])).total_seconds())
    return {k: round(statistics.mean(v), 2) for k, v in spans.items()}


def _ts(text: str) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(text).replace(tzinfo=None)


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


async def run(seats: int, concurrency: int, uri: str) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="metavmm-classroom-", dir="/var/tmp"))
    storage, work = root / "storage", root / "work"
    storage.mkdir()
    work.mkdir()
    for d in (root, storage):
        d.chmod(0o755)  # the system daemon's QEMU (another user) must reach the disks
    config = parse_config(federation(uri, storage, work, concurrency))
    url = f"sqlite:///{root / 'catalog.db'}"
    await db.upgrade_async(url)
    sql = db.make_engine(url)
    sessions = db.make_sessionmaker(sql)
    engine = Engine(sessions, config, url)
    out: dict[str, Any] = {"seats": seats, "concurrency": concurrency, "uri": uri}
    try:
        assert [r.error for r in await sync_all(sessions, config)] == [None]
        await ensure_builtin_images(sessions, config)
        async with session_scope(sessions) as s:
            caller = await operator_identity(s)
        workloads = WorkloadService(sessions, config, engine, Placer(config))
        clusters = ClusterService(workloads)
        await engine.start(run_steps=True, poll_s=0.05)

        # 30 single creates, each waited for before the next (what a teacher does by hand today)
        started = time.perf_counter()
        singles = []
        for i in range(seats):
            done = await workloads.create(caller, CreateRequest(name=f"single-{i + 1:02d}", vcpus=1, ram_mib=64,
                                                                image=IMAGE))
            singles.append(done.workload.id)
            await ended(sessions, [done.operation.id], time.perf_counter())
        out["sequence_s"] = round(time.perf_counter() - started, 2)
        out["sequence_per_seat_s"] = round(out["sequence_s"] / seats, 2)
        await ended(sessions, [(await workloads.delete(caller, wid)).id for wid in singles], time.perf_counter())

        # one class of 30 seats in one request
        started = time.perf_counter()
        view = await clusters.create(caller, ClusterRequest(name="classroom", seats=seats, vcpus=1, ram_mib=64,
                                                            image=IMAGE, cidr=None))
        request_s = time.perf_counter() - started
        times = await ended(sessions, [op.id for op in view.operations], started)
        out["class_s"] = round(max(times.values()), 2)
        out["class_request_s"] = round(request_s, 2)
        per = sorted(times.values())
        out["class_seat_median_s"] = round(statistics.median(per), 2)
        out["class_seat_max_s"] = round(per[-1], 2)
        out["class_step_mean_s"] = await step_means(sessions, [op.id for op in view.operations])
        view = await clusters.get(caller, view.cluster.id)
        out["class_running"] = view.running
        out["placement"] = view.cluster.template["placement"]["summary"]
        disks = sorted((storage / "disks").glob("*.qcow2"))
        async with sessions() as s:
            base = Path((await s.exec(select(ImageReplica.provider_image_id))).one())
        out["overlays"] = len(disks)
        out["overlay_bytes_total"] = sum(allocated(d) for d in disks)
        out["overlay_kib_each"] = round(out["overlay_bytes_total"] / max(len(disks), 1) / 1024, 1)
        out["base_image_bytes"] = allocated(base)
        out["full_copies_bytes"] = allocated(base) * seats
        await ended(sessions, [op.id for op in await clusters.delete(caller, view.cluster.id)], time.perf_counter())
        out["left_domains"] = _ours(uri, await _workload_ids(sessions))
        out["left_overlays"] = len(list((storage / "disks").glob("*.qcow2")))
    finally:
        await engine.stop()
        await _cleanup(uri, await _workload_ids(sessions))
        await sql.dispose()
        shutil.rmtree(root, ignore_errors=True)
    return out


async def _workload_ids(sessions: Any) -> set[str]:
    async with sessions() as s:
        return set((await s.exec(select(Workload.id))).all())


def _ours(uri: str, ids: set[str]) -> int:
    conn = libvirt.open(uri)
    try:
        return sum(1 for d in conn.listAllDomains() if d.name().startswith("mv-") and d.name()[3:] in ids)
    finally:
        conn.close()


async def _cleanup(uri: str, ids: set[str]) -> None:
    """Whatever a failed run left of this run's domains (never another's: the daemon is shared)."""
    conn = libvirt.open(uri)
    try:
        for dom in conn.listAllDomains():
            if dom.name().startswith("mv-") and dom.name()[3:] in ids:
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seats", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=8, help="the engine's operations.concurrency")
    parser.add_argument("--uri", default="qemu:///system")
    args = parser.parse_args()
    result = asyncio.run(run(args.seats, args.concurrency, args.uri))
    print(json.dumps(result, indent=2))
    s = result
    print(f"\n{s['seats']} seats of {IMAGE} on {s['uri']} (TCG), engine concurrency {s['concurrency']}")
    print(f"  {s['seats']} single creates in sequence: {s['sequence_s']:.1f} s ({s['sequence_per_seat_s']:.2f} s each)")
    print(f"  one class in one request:      {s['class_s']:.1f} s to all running (request {s['class_request_s']:.2f} s;"
          f" per seat median {s['class_seat_median_s']:.1f} s, slowest {s['class_seat_max_s']:.1f} s)")
    print(f"  overlays: {s['overlays']} x {s['overlay_kib_each']} KiB allocated = {s['overlay_bytes_total']} B over "
          f"one base of {s['base_image_bytes']} B (full copies: {s['full_copies_bytes']} B)")
    print(f"  left behind: {s['left_domains']} domains, {s['left_overlays']} overlays")


if __name__ == "__main__":
    main()
