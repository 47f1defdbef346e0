"""`metavmm ha`: the same HA service as REST and OCCI, as the operator."""

from __future__ import annotations

import asyncio
from pathlib import Path

from click.testing import CliRunner

from metavmm.catalog import db
from metavmm.catalog.models import Workload
from metavmm.cli.main import main
from metavmm.services.identity import operator_identity


async def test_protect_status_fence_check_unprotect(sqlite_url: str, tmp_path: Path) -> None:
    config = tmp_path / "federation.yaml"
    config.write_text("providers:\n  - {kind: sim, name: clisim, site_count: 1, hosts_per_site: 1}\n")
    await db.upgrade_async(sqlite_url)
    engine = db.make_engine(sqlite_url)
    try:
        async with db.make_sessionmaker(engine)() as session:
            caller = await operator_identity(session)
            row = Workload(kind="compute", name="db", project_id=caller.project_id, observed_state="running")
            session.add(row)
            await session.commit()
            wid = row.id
    finally:
        await engine.dispose()

    def ha(*args: str):  # type: ignore[no-untyped-def]
        return asyncio.to_thread(CliRunner().invoke, main, ["--config", str(config), "--database", sqlite_url,
                                                            "ha", *args])

    done = await ha("protect", wid)
    assert done.exit_code == 0 and "protected" in done.output, done.output
    listed = await ha("status")
    assert wid in listed.output and "protected" in listed.output
    refused = await ha("fence", wid)
    assert refused.exit_code != 0 and "--confirm" in refused.output
    nothing = await ha("fence", wid, "--confirm")
    assert nothing.exit_code == 1 and "nothing waits for a fence" in nothing.output
    checked = await ha("check")
    assert checked.exit_code == 0 and "no protected workload has lost its host" in checked.output
    assert (await ha("unprotect", wid)).exit_code == 0
    gone = await ha("status", wid)
    assert gone.exit_code == 1 and "not marked" in gone.output
