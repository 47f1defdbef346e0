"""Real nova regions on this machine, for the OpenStack tests and benchmarks: per region one nova process
(scripts/nova_region.py, run with the nova virtualenv that scripts/nova-env.sh builds) with its compute
hosts on the fake virt driver, and one real glance-api (scripts/glance_api.py, glance's own virtualenv
from scripts/glance-env.sh; SQLite and a file store under the logs directory) as its image service; and a
clouds.yaml naming them, found by every OpenStack tool through ``OS_CLIENT_CONFIG_FILE`` while the
context is open.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.engine_harness import stop_processes

REPO = Path(__file__).resolve().parents[1]
NOVA_PROJECT = "6f70656e737461636b20342065766572"
NOVA_IMAGE = "155d900f-4e14-4e4c-a73d-069cbf4541e6"  # seeded into every region's glance at start


class NovaUnavailable(RuntimeError):
    """A nova region did not start (its log says why)."""


@dataclass(frozen=True)
class NovaCloud:
    cloud: str
    clouds_yaml: Path
    regions: dict[str, int]  # region -> nova's port
    hosts: tuple[str, ...]
    glance: dict[str, int]  # region -> glance's port


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nova_python() -> Path:
    """The nova virtualenv's Python, built on first use (idempotent, ~70 s with a warm pip cache)."""
    venv = Path(os.environ.get("METAVMM_NOVA_VENV", REPO / ".venv-nova"))
    subprocess.run([str(REPO / "scripts" / "nova-env.sh"), str(venv)], check=True)
    return venv / "bin" / "python"


def glance_python() -> Path:
    """The glance virtualenv's Python, built on first use (idempotent, ~60 s with a warm pip cache)."""
    venv = Path(os.environ.get("METAVMM_GLANCE_VENV", REPO / ".venv-glance"))
    subprocess.run([str(REPO / "scripts" / "glance-env.sh"), str(venv)], check=True)
    return venv / "bin" / "python"


def clouds_yaml(cloud: str, regions: dict[str, int], glance: dict[str, int]) -> str:
    """The cloud as its admin, and ``<cloud>-member`` as a plain project member of the same regions."""
    first = next(iter(regions.values()))
    lines = ["clouds:"]
    for name, token in ((cloud, f"admin:{NOVA_PROJECT}:admin,member,reader"),
                        (f"{cloud}-member", f"someone:{NOVA_PROJECT}:member,reader")):
        lines += [f"  {name}:", "    auth_type: admin_token", "    auth:",
                  f"      endpoint: http://127.0.0.1:{first}/v2.1", f'      token: "{token}"',
                  '    compute_api_version: "2.96"', "    regions:"]
        for region, port in regions.items():
            lines += [f"      - name: {region}", "        values:",
                      f"          compute_endpoint_override: http://127.0.0.1:{port}/v2.1",
                      f"          image_endpoint_override: http://127.0.0.1:{glance[region]}"]
    return "\n".join(lines) + "\n"


@contextmanager
def nova_regions(logs: Path, regions: tuple[str, ...] = ("RegionOne", "RegionTwo"),
                 hosts: tuple[str, ...] = ("compute1", "compute2"), cloud: str = "metavmm-test",
                 start_timeout_s: float = 180) -> Iterator[NovaCloud]:
    """Start one glance and one nova per region, yield the cloud, stop them (nothing outlives it: nova's
    databases are in memory, glance's are under ``logs``)."""
    python, gpython = nova_python(), glance_python()
    ports = {region: free_port() for region in regions}
    gports = {region: free_port() for region in regions}
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[str]] = []
    old = os.environ.get("OS_CLIENT_CONFIG_FILE")
    try:
        # all at once (each takes seconds to start); nova asks glance for images only once it serves
        waits = []
        for region, port in gports.items():
            log = logs / f"glance-{region}.log"
            procs.append(subprocess.Popen(
                [str(gpython), str(REPO / "scripts" / "glance_api.py"), "--port", str(port),
                 "--state", str(logs / f"glance-{region}"), "--seed-image", NOVA_IMAGE],
                stdout=subprocess.PIPE, text=True, stderr=log.open("w")))
            waits.append((procs[-1], f"glance {region}", log))
        for region, port in ports.items():
            log = logs / f"{region}.log"
            procs.append(subprocess.Popen(
                [str(python), str(REPO / "scripts" / "nova_region.py"), "--port", str(port), "--hosts",
                 ",".join(hosts), "--glance", f"http://127.0.0.1:{gports[region]}"],
                stdout=subprocess.PIPE, text=True, stderr=log.open("w")))
            waits.append((procs[-1], f"nova {region}", log))
        for proc, what, log in waits:
            _wait_ready(proc, what, log, start_timeout_s)
        path = logs / "clouds.yaml"
        path.write_text(clouds_yaml(cloud, ports, gports))
        os.environ["OS_CLIENT_CONFIG_FILE"] = str(path)
        yield NovaCloud(cloud, path, ports, hosts, gports)
    finally:
        if old is None:
            os.environ.pop("OS_CLIENT_CONFIG_FILE", None)
        else:
            os.environ["OS_CLIENT_CONFIG_FILE"] = old
        stop_processes(procs, timeout_s=3)


def _wait_ready(proc: subprocess.Popen[str], what: str, log: Path, timeout_s: float) -> None:
    """Wait for the ``READY <port>`` line a region's server prints once it answers."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("READY"):
        raise NovaUnavailable(f"{what} did not start within {timeout_s:.0f} s: see {log}")
