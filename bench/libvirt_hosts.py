"""Two libvirt hosts on one machine, for migration tests and benchmarks: two *session* daemons of one
unprivileged user, each with its own HOME, XDG directories and host UUID (see backends.md), reached
by root through their sockets. Each can make networks (isolated bridges with DHCP) and plug its guests
into them: see ``_START`` and scripts/libvirt-session-net.sh.

The broker (root) creates disk files; a small ``qemu-img`` shim, put first on PATH by the caller,
hands files created under the daemons' root to their user, as a deployment would by running the
broker as the daemon's user (or as the system daemon does with dynamic_ownership).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class HostsUnavailable(RuntimeError):
    """This machine cannot run two session daemons (not root, or libvirtd missing)."""


@dataclass(frozen=True)
class LibvirtHosts:
    root: Path
    user: str
    uris: tuple[str, str]
    base_image: Path
    shim_dir: Path

    def storage(self, i: int) -> Path:
        return self.root / f"host{i}" / "storage"

    def disk_files(self, i: int) -> set[Path]:
        """The disk files on host ``i`` now. The hosts are shared by a test session, so a test that
        checks it left nothing behind compares with this set taken before it started, not with empty."""
        disks = self.storage(i) / "disks"
        return set(disks.iterdir()) if disks.exists() else set()

    def federation_yaml(self, work_dir: Path, lease_s: float = 2, link_mib_per_s: float | None = None) -> str:
        """The two daemons as providers lv0 and lv1; ``link_mib_per_s`` declares the rate between them (the
        scheduler's ``wan_mib_per_s``, which live migration plans read), else the default."""
        scheduler = f"scheduler: {{wan_mib_per_s: {link_mib_per_s}}}\n" if link_mib_per_s else ""
        providers = "".join(
            f"  - kind: libvirt\n    name: lv{i}\n    endpoint: \"{uri}\"\n    domain_type: qemu\n"
            f"    storage_dir: {self.storage(i)}\n    sites: [{{region: host{i}}}]\n"
            for i, uri in enumerate(self.uris))
        return (f"federation: {{sync_interval_s: 0}}\n{scheduler}"
                f"operations:\n  lease_s: {lease_s}\n  retry_base_s: 0.2\n"
                f"  reconcile_interval_s: 0\n  work_dir: {work_dir}\nproviders:\n{providers}")


_NET_CAPS = "+net_admin,+net_raw,+net_bind_service"
_START = f"""set -e
mount -t tmpfs -o mode=1777 metavmm-lv-run /run
mount --bind "$1" /var/lib/libvirt/dnsmasq
user=$2; shift 2
exec setpriv --reuid="$user" --regid="$(id -g "$user")" --init-groups --inh-caps={_NET_CAPS} \\
  --ambient-caps={_NET_CAPS} -- env "$@" libvirtd --timeout 0
"""
"""How a session daemon starts (as root, then as its user): in a mount namespace of its own, where /run is
an empty tmpfs and /var/lib/libvirt/dnsmasq its host's directory, since libvirt's DHCP lease helper writes
its lock (/run/leaseshelper.pid) and lease status files at those fixed places; with the capabilities a
network needs (a bridge, its firewall rules, dnsmasq on port 67). Without them a session daemon defines a
network but cannot start it ("error creating bridge interface: Operation not permitted")."""


def _daemon(root: Path, user: str, i: int) -> tuple[subprocess.Popen[bytes], str]:
    home = root / f"host{i}"
    env_dirs = {name: home / sub for name, sub in (("XDG_RUNTIME_DIR", "run"), ("XDG_CONFIG_HOME", "config"),
                                                    ("XDG_CACHE_HOME", "cache"), ("XDG_DATA_HOME", "data"))}
    for d in (home, *env_dirs.values(), env_dirs["XDG_CONFIG_HOME"] / "libvirt", home / "storage"):
        d.mkdir(parents=True, exist_ok=True)
    (env_dirs["XDG_CONFIG_HOME"] / "libvirt" / "libvirtd.conf").write_text(f'host_uuid = "{uuid.uuid4()}"\n')
    env_dirs["XDG_RUNTIME_DIR"].chmod(0o700)
    (home / "dnsmasq").mkdir(exist_ok=True)
    subprocess.run(["chown", "-R", user, str(home)], check=True)
    env = {"HOME": str(home), "PATH": os.environ["PATH"], **{k: str(v) for k, v in env_dirs.items()}}
    with open(home / "libvirtd.log", "wb") as log:
        proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _START,
                                 "start", str(home / "dnsmasq"), user, *(f"{k}={v}" for k, v in env.items())],
                                stdout=subprocess.DEVNULL, stderr=log)
    sock = env_dirs["XDG_RUNTIME_DIR"] / "libvirt" / "libvirt-sock"
    return proc, f"qemu+unix:///session?socket={sock}"


@contextmanager
def two_hosts(start_timeout_s: float = 90) -> Iterator[LibvirtHosts]:
    if os.getuid() != 0 or not shutil.which("libvirtd"):
        raise HostsUnavailable("two libvirt session daemons need root (to switch user) and libvirtd installed")
    user = subprocess.run([str(REPO / "scripts" / "libvirt-session-user.sh")], check=True, capture_output=True,
                          text=True).stdout.strip()
    subprocess.run([str(REPO / "scripts" / "libvirt-session-net.sh")], check=True)
    root = Path(tempfile.mkdtemp(prefix="metavmm-lv-"))
    root.chmod(0o755)
    procs, uris = [], []
    try:
        for i in range(2):
            proc, uri = _daemon(root, user, i)
            procs.append(proc)
            uris.append(uri)
        shim_dir = root / "bin"
        shim_dir.mkdir()
        real = shutil.which("qemu-img")
        (shim_dir / "qemu-img").write_text(
            f'#!/bin/bash\n"{real}" "$@" || exit $?\n'
            f'for a in "$@"; do case "$a" in "{root}"/*) [ -f "$a" ] && chown {user} "$a";; esac; done\nexit 0\n')
        (shim_dir / "qemu-img").chmod(0o755)
        base = root / "base.qcow2"
        subprocess.run([str(real), "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
        base.chmod(0o644)
        deadline = time.monotonic() + start_timeout_s
        for uri in uris:
            while subprocess.run(["virsh", "-c", uri, "version"], capture_output=True).returncode != 0:
                if time.monotonic() > deadline:
                    raise HostsUnavailable(f"libvirt session daemon at {uri} did not start: "
                                           f"see {root}/host*/libvirtd.log")
                time.sleep(0.3)
        yield LibvirtHosts(root, user, (uris[0], uris[1]), base, shim_dir)
    finally:
        for uri in uris:
            out = subprocess.run(["virsh", "-c", uri, "list", "--all", "--name"], capture_output=True, text=True)
            for name in out.stdout.split():
                subprocess.run(["virsh", "-c", uri, "destroy", name], capture_output=True)
                subprocess.run(["virsh", "-c", uri, "undefine", name], capture_output=True)
            out = subprocess.run(["virsh", "-c", uri, "net-list", "--all", "--name"], capture_output=True, text=True)
            for name in out.stdout.split():  # a started network's bridge outlives its daemon
                subprocess.run(["virsh", "-c", uri, "net-destroy", name], capture_output=True)
                subprocess.run(["virsh", "-c", uri, "net-undefine", name], capture_output=True)
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(root, ignore_errors=True)
