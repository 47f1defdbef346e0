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
