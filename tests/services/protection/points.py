"""Steps the DR tests to the clouds share: the federation (a sim provider beside the cloud), a sim VM of a new
project under a replication policy, where a workload runs now, and what its disk holds."""

from __future__ import annotations

import subprocess

from bench import direct
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import OperationState, Project, Provider, Workload
from metavmm.services.operations.engine import Engine
from metavmm.services.protection import dr
from tests.drivers.conftest import unique
from tests.services.operations.conftest import run


async def protected_sim_vm(engine: Engine, target: str, retention: int,
                           project_name: str = "alpha") -> tuple[str, dr.Replication]:
    """A VM at ``sima/r1`` in a new project (``project_name``), replicated to ``target`` on demand (no interval)."""
    async with session_scope(engine.sessions) as s:
        project = Project(name=project_name)
        s.add(project)
    made = await run(engine, await direct.provision(engine, name=unique("dr"), provider="sima", region="r1",
                                                   image="img", project_id=project.id))
    assert made.target_id is not None and made.state == OperationState.SUCCEEDED, made.error
    policy = await dr.set_replication(engine.sessions, engine.config, None, made.target_id, target=target,
                                      interval_s=None, retention=retention)
    return made.target_id, policy


async def placed(engine: Engine, wid: str) -> tuple[Workload, str]:
    """The workload's row and the name of the provider it runs at."""
    async with engine.sessions() as session:
        w = await session.get(Workload, wid)
        assert w is not None and w.provider_id is not None
        return w, (await session.get(Provider, w.provider_id)).name  # type: ignore[union-attr]


def sim_and(cloud_entry: str) -> str:
    """A federation of the sim provider ``sima`` (region r1) and one cloud (its provider entry, flow YAML)."""
    return ("federation: {sync_interval_s: 0}\noperations: {reconcile_interval_s: 0, retry_base_s: 0.01}\n"
            "providers:\n  - {kind: sim, name: sima, sites: [{region: r1}]}\n" + f"  - {cloud_entry}\n")


def holds_the_write(path: str) -> None:
    """The disk at ``path`` (a failback's disk at home) holds the cloud-side write (0x6b at 4 MiB) over the
    replicated data (0x5a at 1 MiB); a wrong pattern elsewhere is noticed, so the check can fail."""
    subprocess.run(["qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0x6b 4M 1M", "-c", "read -P 0x5a 1M 2M", path],
                   check=True, capture_output=True)
    bad = subprocess.run(["qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0x6b 8M 64k", path],
                         capture_output=True, text=True)
    assert "Pattern verification failed" in bad.stdout
