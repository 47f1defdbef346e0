"""HA restart from a DR recovery point on simulated providers (their disks are real small qcow2 files): the lost
workload boots its newest verified point at the replication target through the scheduler, the point's file
untouched; while it runs there (failed over) its replication can be pointed at a third site, and failback
then leads there. The same on real libvirt: test_ha_dr_libvirt.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

from bench import direct
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import OperationState, Protection, Provider, Workload
from metavmm.drivers.sim import SimDriver
from metavmm.services.identity import Identity, operator_identity
from metavmm.services.operations import store
from metavmm.services.operations.engine import Engine
from metavmm.services.placement import Placer
from metavmm.services.protection import dr
from metavmm.services.protection.ha import HaService, HaState
from metavmm.services.sync import sync_all
from tests.services.protection.conftest import engine_for, run

FEDERATION = """
federation: {sync_interval_s: 0}
operations: {reconcile_interval_s: 0, retry_base_s: 0.01}
ha: {lost_after_syncs: 2}
providers:
  - {kind: sim, name: sima, sites: [{region: r1}]}
  - {kind: sim, name: simb, sites: [{region: r2}]}
  - {kind: sim, name: simc, sites: [{region: r3}]}
"""


def sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


async def provisioned(engine: Engine) -> tuple[Identity, str]:
    """The operator, and a compute db1 it made at sima/r1 (with a small real disk)."""
    async with session_scope(engine.sessions) as s:
        caller = await operator_identity(s)
    done = await run(engine, await direct.provision(engine, name="db1", provider="sima", region="r1",
                                                   image="img", project_id=caller.project_id))
    assert done.target_id is not None and done.state == OperationState.SUCCEEDED
    return caller, done.target_id


async def test_restart_from_point_then_retarget_and_fail_back(tmp_path: Path) -> None:
    async with engine_for(FEDERATION, tmp_path) as engine:
        caller, wid = await provisioned(engine)
        ha = HaService(engine.sessions, engine.config, engine, Placer(engine.config))
        await ha.protect(caller, wid)
        await dr.set_replication(engine.sessions, engine.config, None, wid, target="simb", interval_s=None)
        assert (await run(engine, await dr.replicate(engine, None, wid))).state == OperationState.SUCCEEDED
        point, = await dr.recovery_points(engine.sessions, None, wid)
        before = sha256(point.location)

        SimDriver(engine.config.provider("sima")).ex_set_reachable(False)
        for _ in range(2):
            await sync_all(engine.sessions, engine.config)
        assert [f.state for f in (await ha.check()).findings] == [HaState.WAITING_FOR_FENCE]  # fencing as before
        _, report = await ha.confirm_fence(caller, wid)
        op = await run(engine, await store.get(engine.sessions, report.operations[0]))
        assert op.state == OperationState.SUCCEEDED, op.error
        assert (op.params["to"], op.params["origin"], op.params["point"]) == ("simb", "recovery-point", point.id)
        assert op.outputs["fenced"] == "confirmed" and op.outputs["rpo_s"] >= 0
        async with engine.sessions() as s:
            w = await s.get(Workload, wid)
            prot = await s.get(Protection, wid)
            at = (await s.get(Provider, w.provider_id)).name  # type: ignore[union-attr]
        assert (at, w.observed_state, prot.state) == ("simb", "running", HaState.PROTECTED)  # type: ignore[union-attr]
        vm = await SimDriver(engine.config.provider("simb")).get_vm(w.provider_resource_id or "")  # type: ignore[union-attr]
        assert vm.image == point.location  # booted from the point as an image (an overlay), not adopted
        assert sha256(point.location) == before
        view = await dr.get_replication(engine.sessions, None, wid)
        assert (view.state, view.replica_target) == ("failed-over", "sima/r1")

        # sima may never come back: replication can be pointed elsewhere while failed over ...
        moved = await dr.set_replication(engine.sessions, engine.config, None, wid, target="simc", interval_s=None)
        assert (moved.state, moved.replica_target) == ("failed-over", "simc/r3")
        # ... and failback then leads there (its final replication writes the first point at simc)
        back = await run(engine, await dr.failback(engine, None, wid))
        assert back.state == OperationState.SUCCEEDED, back.error
        async with engine.sessions() as s:
            w = await s.get(Workload, wid)
            at = (await s.get(Provider, w.provider_id)).name  # type: ignore[union-attr]
        assert at == "simc"
        assert not Path(point.location).exists()  # the point simb's copy ran on is released with it

