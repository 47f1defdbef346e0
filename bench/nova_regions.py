"""Real nova regions on this machine, for the OpenStack tests and benchmarks: one process per region
(scripts/nova_region.py, run with the nova virtualenv that scripts/nova-env.sh builds), each with its
compute hosts on the fake virt driver, and a clouds.yaml naming them, found by every OpenStack tool
through ``OS_CLIENT_CONFIG_FILE`` while the context is open.
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
NOVA_IMAGE = "155d900f-4e14-4e4c-a73d-069cbf4541e6"  # nova's GlanceFixture image1


class NovaUnavailable(RuntimeError):
    """A nova region did not start (its log says why)."""


@dataclass(frozen=True)
class NovaCloud:
    cloud: str
    clouds_yaml: Path
    regions: dict[str, int]  # region -> port
    hosts: tuple[str, ...]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nova_python() -> Path:
    """The nova virtualenv's Python, built on first use (idempotent, ~70 s with a warm pip cache)."""
    venv = Path(os.environ.get("METAVMM_NOVA_VENV", REPO / ".venv-nova"))
    subprocess.run([str(REPO / "scripts" / "nova-env.sh"), str(venv)], check=True)
    return venv / "bin" / "python"


def clouds_yaml(cloud: str, regions: dict[str, int]) -> str:
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
                      f"          image_endpoint_override: http://127.0.0.1:{port}/image"]
    return "\n".join(lines) + "\n"


@contextmanager
def nova_regions(logs: Path, regions: tuple[str, ...] = ("RegionOne", "RegionTwo"),
                 hosts: tuple[str, ...] = ("compute1", "compute2"), cloud: str = "metavmm-test",
                 start_timeout_s: float = 180) -> Iterator[NovaCloud]:
    """Start one nova per region, yield the cloud, stop them (nothing outlives it: nova's databases
    are in memory)."""
    python = nova_python()
    ports = {region: free_port() for region in regions}
    logs.mkdir(parents=True, exist_ok=True)
    procs = [subprocess.Popen([str(python), str(REPO / "scripts" / "nova_region.py"), "--port", str(port),
                               "--hosts", ",".join(hosts)], stdout=subprocess.PIPE, text=True,
                              stderr=(logs / f"{region}.log").open("w"))
             for region, port in ports.items()]
    old = os.environ.get("OS_CLIENT_CONFIG_FILE")
    try:
        for proc, region in zip(procs, ports, strict=True):
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], start_timeout_s)
            line = proc.stdout.readline() if ready else ""
            if not line.startswith("READY"):
                raise NovaUnavailable(f"nova {region} did not start within {start_timeout_s:.0f} s: "
                                      f"see {logs / (region + '.log')}")
        path = logs / "clouds.yaml"
        path.write_text(clouds_yaml(cloud, ports))
        os.environ["OS_CLIENT_CONFIG_FILE"] = str(path)
        yield NovaCloud(cloud, path, ports, hosts)
    finally:
        if old is None:
            os.environ.pop("OS_CLIENT_CONFIG_FILE", None)
        else:
            os.environ["OS_CLIENT_CONFIG_FILE"] = old
        stop_processes(procs, timeout_s=3)
