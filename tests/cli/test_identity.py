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
