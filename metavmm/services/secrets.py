"""Cloud credentials given to the broker, encrypted at rest with Fernet (AES-128-CBC + HMAC-SHA256).

The key comes from $METAVMM_SECRET_KEY (a Fernet key) or from ``secret.key`` in the state directory,
created on first use with mode 0600. A database dump alone therefore reveals no credential. Decrypted
values exist only in memory, in :class:`Secret` wrappers whose ``repr`` hides them, so a stray log
line or traceback cannot print them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.models import ProviderSecret, utcnow
from metavmm.foundation.errors import ConfigError
from metavmm.foundation.paths import state_dir

KEY_ENV = "METAVMM_SECRET_KEY"


class Secret(str):
    """A string that does not show itself in repr (and so not in tracebacks or debug logs)."""

    def __repr__(self) -> str:
        return "Secret('***')"


def load_key(path: Path | None = None) -> bytes:
    """The broker's Fernet key: from the environment, else the key file (created if missing)."""
    env = os.environ.get(KEY_ENV)
    source = f"${KEY_ENV}"
    if env:
        key = env.encode()
    else:
        path = path or state_dir() / "secret.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(Fernet.generate_key())
        key = path.read_bytes().strip()
        source = str(path)
    try:
        Fernet(key)
    except ValueError:
        raise ConfigError(f"the broker's secret key ({source}) is not a Fernet key") from None
    return key


class SecretBox:
    """Encrypts and decrypts credential maps with the broker's key."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    def __repr__(self) -> str:
        return "SecretBox(***)"

    def seal(self, values: dict[str, str]) -> str:
        return self._fernet.encrypt(json.dumps(values, sort_keys=True).encode()).decode()

    def open(self, ciphertext: str) -> dict[str, Secret]:
        try:
            data = json.loads(self._fernet.decrypt(ciphertext.encode()))
        except InvalidToken:
            raise ConfigError("stored credentials cannot be decrypted: the broker's secret key changed") from None
        return {k: Secret(v) for k, v in data.items()}


async def store_provider_credentials(session: AsyncSession, box: SecretBox, provider_id: int,
                                     values: dict[str, str]) -> None:
    row = await session.get(ProviderSecret, provider_id)
    if row is None:
        row = ProviderSecret(provider_id=provider_id, ciphertext=box.seal(values))
    else:
        row.ciphertext = box.seal(values)
        row.updated_at = utcnow()
    session.add(row)


async def provider_credentials(session: AsyncSession, box: SecretBox, provider_id: int) -> dict[str, Secret] | None:
    """The decrypted credentials of a provider created through the API (for its driver), or None."""
    row = await session.get(ProviderSecret, provider_id)
    return box.open(row.ciphertext) if row else None
