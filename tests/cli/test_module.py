"""``python -m metavmm.cli.main`` runs cli.py as ``__main__``: the command modules it registers must not
import it back (that loaded it twice and died on a circular import before any command ran)."""

from __future__ import annotations

import subprocess
import sys


def test_python_dash_m_cli_shows_the_commands_of_every_module() -> None:
    proc = subprocess.run([sys.executable, "-m", "metavmm.cli.main", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Usage: python -m metavmm.cli.main" in proc.stdout
    for command in ("serve", "operations", "prices", "schedule", "marketplace"):
        assert f"  {command} " in proc.stdout or f"  {command}\n" in proc.stdout, command


def test_python_dash_m_cli_runs_a_registered_subcommand() -> None:
    proc = subprocess.run([sys.executable, "-m", "metavmm.cli.main", "prices", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: python -m metavmm.cli.main prices" in proc.stdout
