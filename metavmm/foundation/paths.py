"""Where metavmm keeps its files on this machine: one root, so a test or an operator moves all of them at once."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """Where the embedded default keeps its database: $METAVMM_STATE_DIR or ~/.local/share/metavmm."""
    env = os.environ.get("METAVMM_STATE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "metavmm"


def make_dirs(path: Path, mode: int) -> None:
    """Create ``path`` and its missing parents with exactly ``mode``, whatever the umask (``mkdir``'s mode
    is masked by it: a umask of 077 would make QEMU's 0711 directories 0700, a umask of 277 a 0700 store
    unwritable); directories that already exist are left as they are."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=mode, exist_ok=True)
        directory.chmod(mode)


def private_dir(path: Path) -> Path:
    """``path`` as a directory only this user may enter (0700), created with its missing parents, and
    tightened when it exists looser (a store an earlier version created 0755); ``path`` itself."""
    make_dirs(path, 0o700)
    if path.stat().st_mode & 0o777 != 0o700:
        path.chmod(0o700)
    return path


def private_file(path: Path) -> None:
    """A new file at ``path`` readable and writable by this user only (0600, whatever the umask), its
    missing parent directories created 0700; an existing file, and existing directories, are left as
    they are (they are the operator's)."""
    make_dirs(path.parent, 0o700)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        path.chmod(0o600)
