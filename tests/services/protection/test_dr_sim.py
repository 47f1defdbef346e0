"""Disaster recovery on two simulated providers: the policy, incremental points and retention, the loop's due
replications, an unplanned failover and the failback, through the operations engine. The sim VMs' disks are real
small qcow2 files, so every point is built, compared and hashed by the real qemu-img path."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlmodel import select

from bench import direct
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import (
    LinkSample,
    Operation,
    OperationState,
    Project,
    Protection,
    Provider,
    Workload,
    utcnow,
)
from metavmm.drivers.sim import SimDriver
from metavmm.foundation.errors import Conflict, NotFound, ValidationError
from metavmm.services.operations import flows
from metavmm.services.operations.engine import Engine
from metavmm.services.protection import dr, dr_loop, dr_store
from metavmm.services.sync import sync_all
from tests.services.protection.conftest import engine_for, run

FEDERATION = """
federation: {sync_interval_s: 0}
operations: {reconcile_interval_s: 0, retry_base_s: 0.01}
providers:
  - {kind: sim, name: sima, sites: [{region: r1}]}
  - {kind: sim, name: simb, sites: [{region: r2}]}
"""


def qemu_io(path: Path, command: str) -> str:
    return subprocess.run(["qemu-io", "-c", command, str(path)], check=True, capture_output=True, text=True).stdout


async def _placed(engine: Engine, wid: str) -> tuple[Workload, str]:
    async with engine.sessions() as session:
        w = await session.get(Workload, wid)
        assert w is not None and w.provider_id is not None
        return w, (await session.get(Provider, w.provider_id)).name  # type: ignore[union-attr]


def _disk(engine: Engine, provider: str, vm_id: str) -> Path:
    return SimDriver(engine.config.provider(provider)).ex_disk_path(vm_id)


async def test_replicate_retain_fail_over_and_back(tmp_path: Path) -> None:
    async with engine_for(FEDERATION, tmp_path) as engine:
        async with session_scope(engine.sessions) as s:
            project = Project(name="alpha")
            s.add(project)
        done = await run(engine, await direct.provision(engine, name="db1", provider="sima", region="r1",
                                                       image="img", project_id=project.id))
        wid = done.target_id
        assert wid is not None and done.state == OperationState.SUCCEEDED

        with pytest.raises(ValidationError, match="not a provider"):
            await dr.set_replication(engine.sessions, engine.config, None, wid, target="nowhere", interval_s=60)
        with pytest.raises(ValidationError, match="already runs at sima/r1"):
            await dr.set_replication(engine.sessions, engine.config, None, wid, target="sima", interval_s=60)
        with pytest.raises(ValidationError, match="retention"):
            await dr.set_replication(engine.sessions, engine.config, None, wid, target="simb", interval_s=60,
                                     retention=0)
        with pytest.raises(NotFound):
            await dr.get_replication(engine.sessions, None, wid)
        policy = await dr.set_replication(engine.sessions, engine.config, None, wid, target="simb", interval_s=60,
                                          retention=2)
        assert (policy.replica_target, policy.replica_retention, policy.state) == ("simb/r2", 2, "protected")
        assert "failover to" in (policy.message or "")  # the migration planner was asked

        assert await dr.due(engine.sessions) == [wid]  # never replicated: due at once
        written = REGISTRY.get_sample_value("metavmm_data_bytes_total", {"what": "dr_replicate"}) or 0.0
        first, = await dr_loop.replicate_due(engine)
        assert (await run(engine, first)).state == OperationState.SUCCEEDED
        point, = await dr.recovery_points(engine.sessions, None, wid)
        assert REGISTRY.get_sample_value("metavmm_data_bytes_total", {"what": "dr_replicate"}) == \
            written + point.size_bytes
        async with engine.sessions() as session:  # the point's transfer, sima -> simb, is a measured link rate
            (sample,) = (await session.exec(select(LinkSample))).all()
        assert (sample.source, sample.target, sample.kind, sample.bytes) == \
            ("sima", "simb", "dr_replicate", point.size_bytes)
        assert sample.seconds > 0 and abs(sample.seconds - point.details["seconds"]) < 0.001  # the point's own figure
        assert await dr.due(engine.sessions) == []
        assert await dr.due(engine.sessions, utcnow() + timedelta(seconds=61)) == [wid]
        async with session_scope(engine.sessions) as s:  # an attempt that failed (the DR site was down) ...
            s.add(Operation(kind=dr.REPLICATE, target_id=wid, state=OperationState.FAILED,
                            created_at=utcnow() + timedelta(seconds=30)))
        assert await dr.due(engine.sessions, utcnow() + timedelta(seconds=61)) == []  # ... waits its interval
        assert await dr.due(engine.sessions, utcnow() + timedelta(seconds=91)) == [wid]

        w, _ = await _placed(engine, wid)
        disk = _disk(engine, "sima", w.provider_resource_id or "")
        qemu_io(disk, "write -P 0x5a 1M 1M")
        second = await run(engine, await dr.replicate(engine, None, wid))
        assert second.state == OperationState.SUCCEEDED, second.error
        points = await dr.recovery_points(engine.sessions, None, wid)
        assert [p.base_id for p in points] == [None, points[0].id]  # full, then the changes over it
        assert points[1].size_bytes < 2 << 20 and points[1].details["incremental"]
        assert all(len(p.sha256 or "") == 64 and Path(p.location).is_file() for p in points)

        for _ in range(2):  # the third is full (the chain reached the retention), the fourth builds on it
            assert (await run(engine, await dr.replicate(engine, None, wid))).state == OperationState.SUCCEEDED
        kept = await dr.recovery_points(engine.sessions, None, wid)
        assert [p.base_id for p in kept] == [None, kept[0].id]  # p1 and p2 removed: no kept point needs them
        assert not Path(points[0].location).exists() and not Path(points[1].location).exists()

        async with engine.sessions() as s:  # what an HA restart of a lost disk would boot (helper ha plugs it in)
            found = await dr_store.restart_point(s, (await _placed(engine, wid))[0], "simb/r2")
        assert found is not None and found[0] == "simb" and found[1].id == kept[-1].id
        w, _ = await _placed(engine, wid)  # the production site loses the VM; the next sync sees it gone
        await SimDriver(engine.config.provider("sima")).delete_vm(w.provider_resource_id or "")
        await sync_all(engine.sessions, engine.config)
        assert (await _placed(engine, wid))[0].observed_state == "lost"
        with pytest.raises(NotFound):  # a planned failover needs the source
            await dr.failover(engine, None, wid)
        with pytest.raises(Conflict, match="confirm that the source is fenced"):
            await dr.failover(engine, None, wid, planned=False)
        op = await dr.failover(engine, None, wid, planned=False, confirm_source_dead=True)
        with pytest.raises(Conflict, match="still running"):
            await dr.replicate(engine, None, wid)
        over = await run(engine, op)
        assert over.state == OperationState.SUCCEEDED, over.error
        w2, at = await _placed(engine, wid)
        assert at == "simb" and w2.name == "db1" and w2.observed_state == "running"
        booted = [p for p in await dr.recovery_points(engine.sessions, None, wid) if p.state == "in-use"]
        assert booted and booted[-1].details["failover"]["rpo_s"] >= 0 and booted[-1].details["failover"]["rto_s"] > 0
        replica_disk = _disk(engine, "simb", w2.provider_resource_id or "")
        async with SimDriver(engine.config.provider("simb")).ex_disk_view(w2.provider_resource_id or "") as view:
            assert "Pattern verification failed" not in qemu_io(Path(view.path), "read -P 0x5a 1M 1M")
        assert replica_disk.exists()
        view = await dr.get_replication(engine.sessions, None, wid)
        assert (view.state, view.replica_target) == ("failed-over", "sima/r1")
        async with engine.sessions() as s:
            row = await s.get(Protection, wid)
        assert row is not None and row.state == "protected"  # Protection.state is HA restart's: DR leaves it
        with pytest.raises(Conflict, match="already runs failed over"):
            await dr.failover(engine, None, wid)

        qemu_io(replica_disk, "write -P 0x77 4M 1M")  # written at the DR site, then replicated home
        home = await run(engine, await dr.replicate(engine, None, wid))
        assert home.state == OperationState.SUCCEEDED and home.params["to"] == "sima/r1", home.error
        # the DR site is lost in turn: an unplanned failback boots the point replicated home (planned: REST test)
        back = await run(engine, await dr.failback(engine, None, wid, planned=False, confirm_source_dead=True))
        assert back.state == OperationState.SUCCEEDED, back.error
        w3, at = await _placed(engine, wid)
        assert at == "sima" and w3.id == wid
        async with SimDriver(engine.config.provider("sima")).ex_disk_view(w3.provider_resource_id or "") as view:
            out = qemu_io(Path(view.path), "read -P 0x77 4M 1M") + qemu_io(Path(view.path), "read -P 0x5a 1M 1M")
        assert "Pattern verification failed" not in out
        view = await dr.get_replication(engine.sessions, None, wid)
        assert (view.state, view.replica_target) == ("protected", "simb/r2") and "failback" in (view.message or "")

        files = [Path(p.location) for p in await dr.recovery_points(engine.sessions, None, wid)]
        assert files and all(f.exists() for f in files)
        gone = await run(engine, await flows.delete(engine, wid))  # its points go with its VM
        assert gone.state == OperationState.SUCCEEDED, gone.error
        assert not any(f.exists() for f in files) and await dr.recovery_points(engine.sessions, None, wid) == []
        async with engine.sessions() as s:
            assert await s.get(Protection, wid) is None
