"""A vCenter simulator (govmomi's vcsim, built by scripts/vcsim.sh) on a free 127.0.0.1 port, for the
VMware driver's tests and benchmarks.

The simulator keeps each datastore in a temporary directory of this machine, so a test can check
what files the broker left there; it accepts one user name and password (given here, written to a
file so the federation file names the password by reference).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
USER, PASSWORD = "metavmm", "vcsim-secret"


class VcsimUnavailable(RuntimeError):
    """vcsim cannot be built here (Go or Debian's govmomi missing) or did not start."""


@dataclass(frozen=True)
class Vcsim:
    host: str
    port: int
    user: str
    password_file: Path
    pid: int | None = None
    control: Path | None = None

    def set_connected(self, host: str, connected: bool, timeout_s: float = 120, *, power_cycled: bool = False) -> None:
        """Show ``host`` (and its VMs) disconnected, as a vCenter shows a host it lost, or connected again
        (``power_cycled``: back from a power-off, its VMs powered off), while the simulator runs (its control
        file and SIGUSR1); returns once the simulator applied it."""
        assert self.pid is not None and self.control is not None
        verb = ("return" if power_cycled else "connect") if connected else "disconnect"
        line = f"{verb} {host}\n"
        done = self.control.with_name(self.control.name + ".done")
        done.unlink(missing_ok=True)
        self.control.write_text(line)
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout_s
        while not (done.exists() and done.read_text() == line):
            if time.monotonic() > deadline:
                raise VcsimUnavailable(f"vcsim did not apply {line.strip()!r} in {timeout_s:.0f} s")
            time.sleep(0.02)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def provider_yaml(self, name: str = "vc", *, country: str | None = None) -> str:
        """A provider entry of the federation file for this simulator (its one datacenter is DC0)."""
        site = f"\n    sites: [{{region: DC0, country: {country}}}]" if country else ""
        return (f"  - kind: vmware\n    name: {name}\n    endpoint: \"{self.endpoint}\"\n    user: {self.user}\n"
                f"    verify_tls: false\n    credentials: {{file: {self.password_file}}}{site}\n")

    def connect(self):  # type: ignore[no-untyped-def]
        """A pyvmomi ServiceInstance, for tests that look behind the driver's back."""
        from pyVim.connect import SmartConnect

        return SmartConnect(host=self.host, port=self.port, user=self.user, pwd=self.password_file.read_text(),
                            sslContext=ssl._create_unverified_context())


def build() -> Path:
    """The vcsim binary, built if its source changed (scripts/vcsim.sh)."""
    done = subprocess.run([str(REPO / "scripts" / "vcsim.sh")], capture_output=True, text=True)
    if done.returncode != 0:
        raise VcsimUnavailable(f"scripts/vcsim.sh failed: {done.stderr.strip()[-400:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PORT_ATTEMPTS = 3
"""A port found free may be taken by another process before vcsim binds it (an ephemeral port of a
connection, on a busy machine): vcsim then exits at once, and is started again on another port."""


@contextmanager
def vcsim(start_timeout_s: float = 120, *, disconnect: str | None = None) -> Iterator[Vcsim]:
    """A vcsim on a free port; ``disconnect`` names a host it shows disconnected (with its VMs), as a vCenter
    shows a host it lost (:meth:`Vcsim.set_connected` does it while the simulator runs)."""
    binary = build()
    secrets = Path(tempfile.mkdtemp(prefix="metavmm-vcsim-"))
    password_file = secrets / "password"
    password_file.write_text(PASSWORD)
    password_file.chmod(0o600)
    log = (secrets / "vcsim.log").open("w")
    control = secrets / "control"
    for attempt in range(PORT_ATTEMPTS):
        port = _free_port()
        extra = ["-disconnect", disconnect] if disconnect else []
        proc = subprocess.Popen([str(binary), "-listen", f"127.0.0.1:{port}", "-username", USER, "-password",
                                 PASSWORD, "-control", str(control), *extra],
                                stdout=subprocess.PIPE, stderr=log, text=True)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], start_timeout_s)
        line = proc.stdout.readline() if ready else ""
        if line or not ready or attempt == PORT_ATTEMPTS - 1:  # READY (or whatever it said), or slow: no retry
            break
        proc.wait()  # its output ended before READY: it exited (the free port was taken meanwhile, most likely)
    try:
        if not line.startswith("READY"):
            raise VcsimUnavailable(f"vcsim did not start in {start_timeout_s:.0f} s: see {secrets / 'vcsim.log'}")
        yield Vcsim("127.0.0.1", port, USER, password_file, proc.pid, control)
    finally:
        proc.terminate()  # vcsim removes its datastore directories on SIGTERM
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for f in secrets.iterdir():
            f.unlink()
        secrets.rmdir()
