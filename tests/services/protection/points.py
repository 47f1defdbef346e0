"""Steps the DR tests to the clouds share: a sim VM of a new project under a replication policy, and where
a workload runs now."""

from __future__ import annotations

from bench import direct
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import OperationState, Project, Provider, Workload
from metavmm.services.operations.engine import Engine
from metavmm.services.protection import dr
from tests.drivers.conftest import unique
from tests.services.operations.conftest import run


async def protected_sim_vm(engine: Engine, target: str, retention: int) -> tuple[str, dr.Replication]:
    """A VM at ``sima/r1`` in project alpha, replicated to ``target`` on demand (no interval)."""
    async with session_scope(engine.sessions) as s:
        project = Project(name="alpha")
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
