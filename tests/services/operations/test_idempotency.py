"""An idempotency key names one request: the same request again gets the first operation, a different
request under the same key (another target host) is a conflict with a clear message, on the sim."""

from __future__ import annotations

import pytest

from bench import direct
from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import Conflict
from metavmm.services.operations import flows
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.executor import Executor
from metavmm.services.sync import sync_all

CONFIG = """
providers:
  - {kind: sim, name: sima, site_count: 1, hosts_per_site: 3}
operations: {retry_base_s: 0.01, reconcile_interval_s: 0}
"""


async def test_a_key_reused_for_another_live_migration_is_a_conflict(sqlite_sessions) -> None:
    config = parse_config(CONFIG)
    await sync_all(sqlite_sessions, config)
    engine = Engine(sqlite_sessions, config, "sqlite://")
    ex = Executor(sqlite_sessions, config)
    try:
        op = await direct.provision(engine, name="app", provider="sima", region="sim-000", image="img",
                                   host="sim-000-h00000")
        assert await ex.run(op.id)
        wid = op.target_id
        first = await flows.live_migrate(engine, wid, target_provider="sima", target_host="sim-000-h00001",
                                         idempotency_key="move-1")
        again = await flows.live_migrate(engine, wid, target_provider="sima", target_host="sim-000-h00001",
                                         idempotency_key="move-1")
        assert again.id == first.id
        with pytest.raises(Conflict, match=f"already used by operation {first.id}.*different request"):
            await flows.live_migrate(engine, wid, target_provider="sima", target_host="sim-000-h00002",
                                     idempotency_key="move-1")
        assert Conflict.http_status == 409
    finally:
        await ex.drivers.close()
