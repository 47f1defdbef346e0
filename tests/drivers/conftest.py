"""Real services for the driver tests, started once per session.

- ``system_libvirt``: the system daemon (qemu:///system) that ``make test`` starts with scripts/libvirtd.sh.
- ``session_daemons``: two libvirt session daemons run as an unprivileged user, each with its own
  HOME and XDG directories and host UUID: two "hosts" for live migration (see shared/backends.md).
- ``moto``: moto's EC2 server on 127.0.0.1 with AMI and instance-type validation on.
- ``nova_cloud``: two real nova processes (scripts/nova_region.py in the nova venv) as two regions of
  one cloud, and a clouds.yaml for them in OS_CLIENT_CONFIG_FILE.
- ``vcsim``: govmomi's vCenter simulator (one datacenter, a cluster of 3 hosts and a standalone host).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.nova_regions import NOVA_IMAGE, NovaCloud, NovaUnavailable, free_port, nova_regions  # noqa: F401 (re-exported)
from bench.vcsim import Vcsim, VcsimUnavailable
from bench.vcsim import vcsim as vcsim_server

REPO = Path(__file__).resolve().parents[2]
MIGRATION_USER = "metavmm-mig"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def world_readable_dir(prefix: str) -> Path:
    """A directory the system daemon's qemu user can reach (pytest's tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    path.chmod(0o755)
    return path


def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True).stdout


# --- libvirt ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def system_libvirt() -> str:
    uri = "qemu:///system"
    if subprocess.run(["virsh", "-c", uri, "version"], capture_output=True).returncode != 0:
        pytest.fail("the system libvirt daemon is not answering: run scripts/libvirtd.sh (make test does)")
    return uri


@pytest.fixture(scope="session")
def libvirt_storage() -> Iterator[Path]:
    path = world_readable_dir("metavmm-libvirt-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class SessionHost:
    uri: str
    storage_dir: Path


def _ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
        return pwd.getpwnam(name)


@pytest.fixture(scope="session")
def session_daemons() -> Iterator[tuple[SessionHost, SessionHost]]:
    """Two libvirt session daemons of one unprivileged user: two hosts on one machine."""
    if os.getuid() != 0:
        pytest.fail("the live migration test creates a user and starts daemons as it: run it as root")
    user = _ensure_user(MIGRATION_USER)
    root = world_readable_dir("metavmm-hosts-")
    hosts, daemons = [], []
    for name in ("a", "b"):
        base = root / name
        dirs = {k: base / k for k in ("home", "run", "config", "cache", "data", "storage")}
        for d in dirs.values():
            d.mkdir(parents=True)
        (dirs["config"] / "libvirt").mkdir()
        (dirs["config"] / "libvirt" / "libvirtd.conf").write_text(f'host_uuid = "{uuid.uuid4()}"\n')
        for path in [base, *base.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)
        dirs["run"].chmod(0o700)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(dirs["home"]),
               "XDG_RUNTIME_DIR": str(dirs["run"]), "XDG_CONFIG_HOME": str(dirs["config"]),
               "XDG_CACHE_HOME": str(dirs["cache"]), "XDG_DATA_HOME": str(dirs["data"])}
        daemons.append(subprocess.Popen(["runuser", "-u", MIGRATION_USER, "--", "env", "-i",
                                         *(f"{k}={v}" for k, v in env.items()), "libvirtd"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        socket_path = dirs["run"] / "libvirt" / "libvirt-sock"
        hosts.append(SessionHost(f"qemu+unix:///session?socket={socket_path}", dirs["storage"]))
    try:
        for host in hosts:
            deadline = time.monotonic() + 60
            while subprocess.run(["virsh", "-c", host.uri, "version"], capture_output=True).returncode != 0:
                if time.monotonic() > deadline:
                    pytest.fail(f"libvirt session daemon at {host.uri} did not start in 60 s")
                time.sleep(0.3)
        yield hosts[0], hosts[1]
    finally:
        for host in hosts:
            _destroy_all_domains(host.uri)
        for proc in daemons:
            proc.send_signal(signal.SIGTERM)  # runuser passes it on to libvirtd
        for proc in daemons:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(root, ignore_errors=True)


def _destroy_all_domains(uri: str) -> None:
    """Session daemons leave their qemu processes running when they exit: stop every domain first."""
    import libvirt

    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return
    try:
        for dom in conn.listAllDomains():
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    finally:
        conn.close()


# --- AWS: moto ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MotoServer:
    endpoint: str
    credentials_file: Path

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST"),
                               timeout=10).read()


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    port = free_port()
    env = {**os.environ, "MOTO_ENABLE_AMI_VALIDATION": "true", "MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION": "true"}
    server = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    creds = tmp_path_factory.mktemp("aws") / "credentials"
    creds.write_text("[default]\naws_access_key_id = AKIATESTMETAVMM\naws_secret_access_key = test-secret\n")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("moto_server did not start (is moto[server,ec2] installed? run make test)")
                time.sleep(0.1)
        yield MotoServer(endpoint, creds)
    finally:
        # moto keeps everything in memory, so there is nothing to clean up; a graceful stop would wait for every
        # keep-alive connection the tests' boto3 clients still hold (its threaded server joins them)
        proc.kill()
        proc.wait(timeout=10)


# --- OpenStack: two nova regions ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def nova_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NovaCloud]:
    try:
        with nova_regions(tmp_path_factory.mktemp("nova")) as cloud:
            yield cloud
    except NovaUnavailable as exc:
        pytest.fail(str(exc))


# --- VMware: vcsim ---------------------------------------------------------------------------------


def started_vcsim() -> Iterator[Vcsim]:
    """govmomi's vCenter simulator (scripts/vcsim.sh builds it) on a free port; see bench/vcsim.py. A fixture
    body: the session's shared one below, or a test's own (one that loses a host)."""
    try:
        with vcsim_server() as server:
            yield server
    except VcsimUnavailable as exc:
        pytest.fail(str(exc))


vcsim = pytest.fixture(scope="session", name="vcsim")(started_vcsim)


def ssh_public_key(comment: str = "tester@metavmm") -> str:
    """A fresh, valid OpenSSH ed25519 public key line (nova and moto parse what they import)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    raw = Ed25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                 serialization.PublicFormat.OpenSSH)
    return f"{raw.decode()} {comment}"
