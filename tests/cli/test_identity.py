"""`metavmm token create` for the first admin, and the broker's secret key for credentials at rest."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet

from metavmm.catalog import db
from metavmm.cli.main import main
from metavmm.foundation.errors import ConfigError
from metavmm.services.identity import identity_from_token
from metavmm.services.secrets import SecretBox, load_key


async def test_token_create_mints_a_working_token(sqlite_url: str) -> None:
    runner = CliRunner()
    result = await _invoke(runner, ["--database", sqlite_url, "token", "create", "--project", "ops", "--role", "admin"])
    assert result.exit_code == 0, result.output
    secret = result.output.strip().splitlines()[-1]
    assert secret.startswith("mvm_")
    listed = await _invoke(runner, ["--database", sqlite_url, "token", "list"])
    assert "ops-admin" in listed.output and secret not in listed.output
    engine = db.make_engine(sqlite_url)
    try:
        async with db.make_sessionmaker(engine)() as session:
            identity = await identity_from_token(session, secret)
            assert identity is not None and identity.role == "admin" and identity.project == "ops"
            assert await identity_from_token(session, secret[:-1] + "x") is None
    finally:
        await engine.dispose()
    bad = await _invoke(runner, ["--database", sqlite_url, "token", "create", "--project", "p", "--role", "root"])
    assert bad.exit_code != 0 and "root" in bad.output


async def _invoke(runner: CliRunner, args: list[str]):  # type: ignore[no-untyped-def]
    import asyncio

    return await asyncio.to_thread(runner.invoke, main, args)


def test_secret_key_file_is_private_and_stable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METAVMM_SECRET_KEY", raising=False)
    path = tmp_path / "k" / "secret.key"
    key = load_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path) == key
    box = SecretBox(key)
    sealed = box.seal({"password": "hunter2"})
    assert "hunter2" not in sealed and box.open(sealed)["password"] == "hunter2"
    with pytest.raises(ConfigError, match="secret key changed"):
        SecretBox(Fernet.generate_key()).open(sealed)
    monkeypatch.setenv("METAVMM_SECRET_KEY", "not-a-key")
    with pytest.raises(ConfigError, match="not a Fernet key"):
        load_key(path)


async def test_project_costs_reads_the_spend_ledger(sqlite_url: str) -> None:
    """``metavmm project costs`` shows each workload's hours and cost in the month, a deleted one included."""
    import json
    from datetime import UTC, datetime, timedelta
    from decimal import Decimal

    from metavmm.catalog.models import Project, Workload

    await db.upgrade_async(sqlite_url)
    engine = db.make_engine(sqlite_url)
    now = datetime.now(UTC)
    ran = max(now - timedelta(minutes=30), now.replace(day=1, hour=0, minute=0, second=0, microsecond=0))
    try:
        async with db.session_scope(db.make_sessionmaker(engine)) as s:
            project = Project(name="lab")
            s.add(project)
            await s.flush()
            w = Workload(project_id=project.id, kind="compute", name="gpu-run", observed_state="running",
                         updated_at=ran, spec={"placement": {"provider": "cloud", "price_per_hour": "4",
                                                             "cost_per_hour": {"amount": "4", "currency": "NTD"}}})
            s.add(w)
            await s.flush()
            await s.delete(w)
    finally:
        await engine.dispose()
    runner = CliRunner()
    shown = await _invoke(runner, ["--database", sqlite_url, "project", "costs", "lab"])
    assert shown.exit_code == 0, shown.output
    assert "gpu-run" in shown.output and "NTD" in shown.output and "total " in shown.output
    listed = await _invoke(runner, ["--database", sqlite_url, "project", "costs", "lab", "--json"])
    as_json = json.loads(listed.output)
    (line,) = as_json["workloads"]
    assert (line["workload_name"], line["running"], line["currency"]) == ("gpu-run", False, "NTD")
    hours = (now - ran).total_seconds() / 3600  # from the start until the delete (a moment after now)
    assert hours <= float(line["hours"]) < hours + 0.01 and Decimal(line["amount"]) == Decimal(line["hours"]) * 4
    assert as_json["period"] == now.strftime("%Y-%m") and as_json["totals"][0]["amount"] == line["amount"]
    missing = await _invoke(runner, ["--database", sqlite_url, "project", "costs", "nobody"])
    bad = await _invoke(runner, ["--database", sqlite_url, "project", "costs", "lab", "--period", "2026-13"])
    assert missing.exit_code != 0 and "no project nobody" in missing.output
    assert bad.exit_code != 0 and "YYYY-MM" in bad.output
