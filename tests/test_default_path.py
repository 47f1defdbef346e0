"""The default path as a newcomer walks it: README "Your first two VMs", run as written.

The real `metavmm serve` process on config/default.yaml and the real system libvirt daemon
(qemu:///system), with nothing changed but the state directory (the database and the libvirt disks
live there). It waits until the broker has published its built-in image, then runs the README's
blocks with bash: a token from the CLI, one compute created through OCCI and one through REST, their
state until OCCI says active and REST running, and their deletion. Everything is checked over HTTP,
plus the daemon itself: both domains ran and printed the boot marker of metavmm/tiny on their serial
consoles, and after deletion no domain, disk or console log is left.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from metavmm.drivers.libvirt import METADATA_NS
from metavmm.services.marketplace.builtin import TINY
from tests.cli.test_serve import SERVING

REPO = Path(__file__).resolve().parents[1]
README_BLOCK = re.compile(r"<!-- default-path: (\w+)[^>]*-->\s*```sh\n(.*?)```", re.S)
URI = "qemu:///system"
DEADLINE_S = 180


def readme_blocks(port: int) -> dict[str, str]:
    """The README's marked shell blocks, aimed at this test's port and run by this test's interpreter (the
    same program as ``.venv/bin/metavmm`` after ``make``, whichever checkout pytest imports)."""
    cli = f"{sys.executable} -m metavmm"
    blocks = {name: body.replace("http://127.0.0.1:8080", f"http://127.0.0.1:{port}").replace(".venv/bin/metavmm", cli)
              for name, body in README_BLOCK.findall((REPO / "README.md").read_text())}
    assert set(blocks) == {"create", "state", "delete"}, "README.md lost a default-path block"
    return blocks


def bash(script: str, env: dict[str, str]) -> str:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"the README's commands failed:\n{script}\n{done.stderr}"
    return done.stdout


def until(what: str, probe: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {DEADLINE_S} s")
        time.sleep(0.5)


def http(url: str, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """The broker's state directory: the libvirt disks live in it, so the daemon's QEMU must reach it."""
    path = Path(tempfile.mkdtemp(prefix="metavmm-default-path-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def broker(state_dir: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """`metavmm serve` on the default federation; yields its port and the environment its CLI needs."""
    if subprocess.run(["virsh", "-c", URI, "version"], capture_output=True).returncode != 0:
        pytest.fail("the system libvirt daemon is not answering: run scripts/libvirtd.sh (make test does)")
    env = {**os.environ, "METAVMM_STATE_DIR": str(state_dir)}
    log = (state_dir / "serve.log").open("w")
    # port 0: the broker binds a free port itself and says which (a port probed free here could be taken
    # by another process before the broker bound it)
    proc = subprocess.Popen([sys.executable, "-m", "metavmm", "serve", "--port", "0"], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        said = until("the broker listens", lambda: _exited(proc, state_dir)
                     or SERVING.search((state_dir / "serve.log").read_text(errors="replace")))
        port = int(said.group(1))
        until("the broker answers", lambda: _exited(proc, state_dir)
              or http(f"http://127.0.0.1:{port}/readyz")[0] == 200)
        yield port, env
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    output = (state_dir / "serve.log").read_text()
    assert proc.returncode == 0 and "Traceback" not in output, output


def _exited(proc: subprocess.Popen[str], state_dir: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"metavmm serve exited:\n{(state_dir / 'serve.log').read_text()}")
    return False


def _domains(ids: set[str]) -> dict[str, tuple[str, list[str], str]]:
    """Workload id -> (libvirt state name, disk files, console log) of the domains the broker made for ``ids``."""
    conn = libvirt.open(URI)
    try:
        out = {}
        for dom in conn.listAllDomains():
            try:
                owner = ET.fromstring(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS)).text
                if owner not in ids:
                    continue
                doc = ET.fromstring(dom.XMLDesc())
                running = dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
            except libvirt.libvirtError:  # no metadata (not the broker's), or undefined meanwhile
                continue
            disks = [s.get("file", "") for s in doc.findall("devices/disk/source")]
            console = doc.find("devices/serial/log")
            out[owner] = ("running" if running else "not running", disks,
                          console.get("file", "") if console is not None else "")
        return out
    finally:
        conn.close()


def _remove_domains(ids: set[str]) -> None:
    conn = libvirt.open(URI)
    try:
        for dom in conn.listAllDomains():
            try:
                owner = ET.fromstring(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS)).text
            except libvirt.libvirtError:
                continue
            if owner in ids:
                try:
                    if dom.isActive():
                        dom.destroy()
                    dom.undefine()
                except libvirt.libvirtError as exc:  # the broker's own delete got there first: gone is the aim
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                        raise
    finally:
        conn.close()


def test_readme_creates_two_vms_on_local_libvirt_and_deletes_them(broker: tuple[int, dict[str, str]],
                                                                  state_dir: Path) -> None:
    port, env = broker
    base = f"http://127.0.0.1:{port}"
    blocks = readme_blocks(port)
    watcher = bash(f"{sys.executable} -m metavmm token create --project ops --role reader | tail -1", env).strip()
    until("the built-in image has its replica at the local host", lambda: "local-libvirt/local" in http(
        f"{base}/api/v1/marketplace/images/{TINY.image_id}", watcher)[1])

    created = bash(blocks["create"] + '\nprintf "%s\\n" "$TOKEN" "$OCCI" "$REST"\n', env).splitlines()
    token, occi, rest = created[-3:]
    assert occi.startswith(f"{base}/compute/"), created
    occi_id = occi.rsplit("/", 1)[1]
    ids = {occi_id, rest}
    vars_env = {**env, "TOKEN": token, "OCCI": occi, "REST": rest}
    # the OCCI request named no os_tpl: the federation's default image, as REST's named one
    specs = [json.loads(http(f"{base}/api/v1/workloads/{wid}", token)[1])["spec"] for wid in (occi_id, rest)]
    assert [spec["image_id"] for spec in specs] == [TINY.image_id, TINY.image_id], specs
    try:
        state = until("OCCI says active and REST says running", lambda: (
            out := bash(blocks["state"], vars_env),
            'occi.compute.state="active"' in out and re.search(r'"observed_state": *"running"', out)
                and out)[-1])
        assert state.count("\n") == 2, state  # one line each, as the README shows

        domains = _domains(ids)
        assert set(domains) == ids and all(d[0] == "running" for d in domains.values()), domains
        storage = state_dir / "libvirt" / "local-libvirt"  # the default storage_dir under a moved state dir
        for _state, disks, console in domains.values():
            assert disks and all(Path(d).parent == storage / "disks" for d in disks)
            until(f"{TINY.marker} on {console}", lambda c=console: TINY.marker in Path(c).read_text())

        bash(blocks["delete"], vars_env)
        until("the OCCI compute is gone", lambda: http(occi, token)[0] == 404)
        until("the REST workload is deleted", lambda: json.loads(http(f"{base}/api/v1/workloads/{rest}", token)[1])
              .get("observed_state") == "deleted")
        until("both domains are undefined", lambda: _domains(ids) == {})
        left = [p for _s, disks, console in domains.values() for p in (*disks, console) if Path(p).exists()]
        assert left == [], f"left behind: {left}"
        assert list((storage / "disks").iterdir()) == []
    finally:
        _remove_domains(ids)  # whatever a failure left
