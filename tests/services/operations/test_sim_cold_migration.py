"""A cold migration between two SIMULATED providers runs every real step above the driver (the sim's export
is a small sparse raw disk: qemu-img converts it, the checksums are taken, the target imports it), and a
move no driver can make is refused before anything stops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlmodel import func, select

from bench import direct
from metavmm.catalog.models import LinkSample, Operation, OperationState
from metavmm.drivers.registry import create_driver
from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import Conflict
from metavmm.foundation.records import VmState
from metavmm.services.operations import flows
from metavmm.services.operations.engine import Engine
from metavmm.services.sync import sync_all

CONFIG = """
providers:
  - {kind: sim, name: sima, site_count: 1, hosts_per_site: 1}
  - {kind: sim, name: simb, site_count: 1, hosts_per_site: 1}
  - {kind: occi, name: partner, endpoint: "http://127.0.0.1:9/", credentials: {env: NO_SUCH_TOKEN}}
operations: {retry_base_s: 0.01, reconcile_interval_s: 0, work_dir: %s}
"""


async def test_sim_to_sim_cold_migration_runs_every_step(sqlite_sessions: Any, tmp_path: Path) -> None:
    config = parse_config(CONFIG % (tmp_path / "work"))
    await sync_all(sqlite_sessions, config, only={"sima", "simb"})
    engine = Engine(sqlite_sessions, config, "sqlite://")
    made = await direct.run(sqlite_sessions, config, await direct.provision(engine, name="mover", provider="sima",
                                                                     region="sim-000", image="img"))
    wid = made.target_id
    assert made.state == OperationState.SUCCEEDED and wid

    done = await direct.run(sqlite_sessions, config, await flows.cold_migrate(engine, wid, target_provider="simb",
                                                                        disk_format="qcow2"))
    assert done.state == OperationState.SUCCEEDED, done.error
    assert [s["state"] for s in done.steps] == ["done"] * len(done.steps)
    target = [vm for vm in await create_driver(config.provider("simb")).list_vms() if vm.workload_id == wid]
    assert len(target) == 1 and target[0].state == VmState.RUNNING
    assert [vm for vm in await create_driver(config.provider("sima")).list_vms() if vm.workload_id == wid] == []
    imported = (done.outputs or {}).get("target_image")
    assert imported and imported.startswith("sim-img-")  # the converted qcow2 went through the sim's import
    assert not (tmp_path / "work" / done.id).exists()  # scratch space cleaned
    # the disk's transfer, sima -> simb, measured: the export's seconds and the upload's, the bytes it sent
    async with sqlite_sessions() as session:
        (sample,) = (await session.exec(select(LinkSample))).all()
    assert (sample.source, sample.target, sample.kind) == ("sima", "simb", "cold_migrate")
    (imported_step,) = [s for s in done.steps if s["name"] == "import"]
    assert sample.bytes == imported_step["transfer"]["bytes"] > 0
    assert sample.seconds >= (done.outputs or {})["export_s"] > 0


async def test_a_failed_transfer_records_no_rate(sqlite_sessions: Any, tmp_path: Path) -> None:
    """The target stops answering before the disk reaches it: the import fails (retried, then rolled back,
    the source restored) and no link sample is written, although the export had run."""
    config = parse_config(CONFIG % (tmp_path / "work"))
    await sync_all(sqlite_sessions, config, only={"sima", "simb"})
    engine = Engine(sqlite_sessions, config, "sqlite://")
    made = await direct.run(sqlite_sessions, config, await direct.provision(engine, name="stuck", provider="sima",
                                                                     region="sim-000", image="img"))
    simb = create_driver(config.provider("simb"))
    simb.ex_set_reachable(False)  # type: ignore[attr-defined]
    try:
        done = await direct.run(sqlite_sessions, config, await flows.cold_migrate(
            engine, made.target_id or "", target_provider="simb", disk_format="qcow2"))
    finally:
        simb.ex_set_reachable(True)  # type: ignore[attr-defined]
    assert done.state == OperationState.ROLLED_BACK, done.state
    steps = {s["name"]: s for s in done.steps}
    assert steps["export"]["state"] == "compensated" and steps["export"]["transfer"]["bytes"] > 0
    assert "simulated outage" in (steps["import"]["error"] or "")
    async with sqlite_sessions() as session:
        assert (await session.exec(select(LinkSample))).all() == []
    (vm,) = [vm for vm in await create_driver(config.provider("sima")).list_vms() if vm.workload_id == made.target_id]
    assert vm.state == VmState.RUNNING


async def test_a_move_to_a_partner_occi_site_is_refused_before_anything_stops(sqlite_sessions: Any,
                                                                            tmp_path: Path) -> None:
    config = parse_config(CONFIG % (tmp_path / "work"))
    await sync_all(sqlite_sessions, config, only={"sima", "simb"})
    engine = Engine(sqlite_sessions, config, "sqlite://")
    made = await direct.run(sqlite_sessions, config, await direct.provision(engine, name="stay", provider="sima",
                                                                     region="sim-000", image="img"))
    async with sqlite_sessions() as session:
        before = (await session.exec(select(func.count()).select_from(Operation))).one()
    with pytest.raises(Conflict, match=r"partner \(occi\) cannot import a disk image \(OCCI 1.2 has no image"):
        await flows.cold_migrate(engine, made.target_id or "", target_provider="partner")
    async with sqlite_sessions() as session:
        assert (await session.exec(select(func.count()).select_from(Operation))).one() == before
    (vm,) = [vm for vm in await create_driver(config.provider("sima")).list_vms() if vm.workload_id == made.target_id]
    assert vm.state == VmState.RUNNING
