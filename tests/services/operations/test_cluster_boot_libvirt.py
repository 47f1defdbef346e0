"""A class of real guests on the system libvirt daemon (qemu:///system, TCG): two seats of a Debian 12 guest
with cloud-init (scripts/build-debian-guest.sh cloud, built by the fixture and cached under /var/tmp) boot
on their overlays, take their addresses on the class network from the network-config of their NoCloud
seed (static, on the interface with the seat's MAC), and cloud-init runs each seat's own user data from
the seed. The class interface is in the domain the daemon defines (the seat's MAC on the class network)
and no interface is hot-plugged after it, so cloud-init finds it at its first stage. The proof comes from
inside the guests: each seat's user data writes a line to its serial
console, read through ``GET /workloads/{id}/console``, naming the host name cloud-init set, the class
network's address and MAC the guest holds and the systemd-networkd file that configured it (cloud-init's,
with that address), the SSH key cloud-init installed and the password hash it set; a lease the network
holds for a seat is its reservation's, and the host logs in over SSH at
each seat's reserved address with that seat's key. Then the class is deleted and nothing is left: no
domain, no overlay, console log or seed ISO, no network.

The test prints the seconds from the class's request to each seat's line (both seats boot at once)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import libvirt
import pytest
from sqlmodel import select

from metavmm.api import keys
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Image, ImageReplica, Provider, Site
from metavmm.translators.cloudinit import sha512_crypt
from tests.services.operations.conftest import all_domains
from tests.services.operations.test_cluster_network_libvirt import (
    class_interfaces,
    networks,
    settled,
    spy_on_domains,
)
from tests.services.operations.test_libvirt_resources import API, PROVIDER, URI, client, done
from tests.subnets import free_subnets

__all__ = ["client"]  # the REST client on a real libvirt provider, and its cleanup

REPO = Path(__file__).resolve().parents[3]
BOOT_TIMEOUT_S = 1200  # two Debian guests booting at once under TCG on two shared cores
MARKER = re.compile(r"metavmm-seat owner=(\S+) host=(\S+) ip=(\S+) mac=(\S+) key=(\S+) pw=(\S+) up=(\S+) "
                    r"cfg=(\S+) static=(\S+)")

SEAT_USER_DATA = """#cloud-config
runcmd:
  - |
    for i in $(seq 120); do
      a=$(ip -4 -o addr show scope global | awk '$4 !~ /^10[.]0[.]2[.]/ {{print $2, $4; exit}}')
      [ -n "$a" ] && break; sleep 1
    done
    set -- $a
    key=$(awk '{{print $3}}' /home/debian/.ssh/authorized_keys | paste -sd, -)
    pw=$(getent shadow debian | cut -d: -f2 | tr -d '\\n' | sha256sum | cut -c1-16)
    mac=$(cat /sys/class/net/$1/address)
    up=$(cut -d' ' -f1 /proc/uptime)
    f=$(networkctl status "$1" 2>/dev/null | awk '/Network File:/ {{print $3}}')
    static=$(grep -s '^Address=' "${{f:-/dev/null}}" | head -n1 | cut -d= -f2)
    echo "metavmm-seat owner={owner} host=$(hostname) ip=$2 mac=$mac key=$key pw=$pw up=$up" \
      "cfg=$(basename "${{f:-none}}") static=${{static:-none}}" >/dev/ttyS0
"""
"""A seat's own user data (a roster line's): once the guest holds an address outside QEMU's user network
(the class network's), one line on the serial console with what cloud-init made of the seat."""


@pytest.fixture(scope="session")
def cloud_guest() -> Path:
    """A bootable Debian 12 disk with cloud-init, built by the suite's own script (cached under /var/tmp)."""
    started = time.monotonic()
    res = subprocess.run([str(REPO / "scripts" / "build-debian-guest.sh"), "cloud"], capture_output=True, text=True)
    if res.returncode:
        pytest.fail(f"building the cloud-init guest failed: {res.stderr[-2000:]}")
    print(f"cloud-init guest ready in {time.monotonic() - started:.0f} s")
    return Path(res.stdout.strip().splitlines()[-1])


async def register(app: Any, disk: Path) -> str:
    """An image whose replica at the test's libvirt site is ``disk`` (raw, read in place: every seat's
    overlay is backed by it)."""
    async with session_scope(app[keys.SESSIONS]) as s:
        image = Image(name="debian12-cloud", visibility="public", publisher="tests", format="raw", os="linux")
        s.add(image)
        await s.flush()
        site = (await s.exec(select(Site).join(Provider).where(Provider.name == PROVIDER))).one()
        s.add(ImageReplica(image_id=image.id, site_id=site.id or 0, format="raw", provider_image_id=str(disk)))
        return image.id


def ssh_key(tmp_path: Path, owner: str) -> tuple[Path, str]:
    """A fresh ed25519 key pair for ``owner``: the private key's path and the public key's line."""
    path = tmp_path / f"id-{owner}"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{owner}@class", "-f", str(path)],
                   check=True)
    return path, path.with_suffix(".pub").read_text().strip()


async def marker(client: Any, workload_id: str, since: float) -> tuple[tuple[str, ...], float]:
    """The seat's line on its serial console (through the REST console), and the seconds since ``since``."""
    text = ""
    while time.monotonic() - since < BOOT_TIMEOUT_S:
        body = await (await client.get(f"{API}/workloads/{workload_id}/console")).json()
        text = body.get("output") or ""
        found = MARKER.search(text)
        if found:
            return found.groups(), time.monotonic() - since
        await asyncio.sleep(3)
    raise AssertionError(f"seat {workload_id} never wrote its line; console tail:\n{text[-3000:]}")


def leases(network: str) -> set[tuple[str, str]]:
    """(mac, ip) of the network's current DHCP leases (dnsmasq's, as libvirt reports them)."""
    conn = libvirt.open(URI)
    try:
        return {(lease["mac"], lease["ipaddr"]) for lease in conn.networkLookupByName(network).DHCPLeases()}
    finally:
        conn.close()


def ssh_hostname(key: Path, ip: str) -> str:
    """``hostname`` run over SSH at ``ip`` as the image's default user, with ``key``."""
    res = subprocess.run(["ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                          "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=30", f"debian@{ip}",
                          "hostname"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


@pytest.mark.timeout(BOOT_TIMEOUT_S + 1500)  # and the guest's build on a fresh machine (9 to 13 min)
async def test_seats_boot_take_their_reserved_addresses_and_run_their_own_user_data(
        client: Any, cloud_guest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    defined, plugged = spy_on_domains(monkeypatch)
    image_id = await register(client.app, cloud_guest)
    owners = ("ada", "bob")
    pairs = {o: ssh_key(tmp_path, o) for o in owners}
    hashes = {o: sha512_crypt(f"{o}-lesson") for o in owners}
    (subnet,) = free_subnets(1)  # a range no bridge of this machine holds
    roster = [{"owner": o, "ssh_key": pairs[o][1], "password_hash": hashes[o],
               "user_data": SEAT_USER_DATA.format(owner=o)} for o in owners]
    started = time.monotonic()
    resp = await client.post(f"{API}/clusters", json={
        "name": "boot", "seats": 2, "image_id": image_id, "vcpus": 1, "ram_mib": 512, "cidr": f"{subnet}.0/24",
        "roster": roster})
    assert resp.status == 202, await resp.text()
    lab = await settled(client, await resp.json())
    seats = lab["seats"]
    assert [(s["hostname"], s["address"]) for s in seats] == [("boot-01", f"{subnet}.10/24"),
                                                              ("boot-02", f"{subnet}.11/24")]

    # the class interface is the domain's from its definition (cloud-init sees it at first boot), never hot-plugged
    at_create = dict(class_interfaces(xml) for xml in defined)
    assert {f"mv-{s['workload_id']}": [(f"mv-{lab['network_id']}", s["mac"])] for s in seats} == at_create
    assert not [x for x in plugged if "<interface" in x], plugged
    found = await asyncio.gather(*(marker(client, s["workload_id"], started) for s in seats))
    for owner, seat, ((said_owner, host, ip, mac, key, pw, up, cfg, static), seconds) in zip(
            owners, seats, found, strict=True):
        print(f"{seat['hostname']}: cloud-init's line {seconds:.0f} s after the class was asked for, "
              f"{float(up):.0f} s after the guest's kernel started; class interface: {cfg}, static {static}")
        assert said_owner == owner  # the seat ran its own roster line's user data, not the other's
        assert host == seat["hostname"]  # cloud-init set the seat's host name
        assert (ip, mac) == (seat["address"], seat["mac"])  # the seat's address, on the seat's MAC
        # set by the seed's network-config: the file systemd-networkd applied to the class interface is the one
        # cloud-init rendered for it (found by its MAC), with the seat's address, static
        assert cfg != "none" and static == seat["address"], (cfg, static)
        assert key == f"{owner}@class"  # its own key (and only it) for the image's default user
        assert pw == hashlib.sha256(hashes[owner].encode()).hexdigest()[:16]  # its own password hash
    network = f"mv-{lab['network_id']}"
    held = {(s["mac"], s["address"].split("/")[0]) for s in seats}
    # the address is static now (no DHCP needed on the class interface); a lease a seat took anyway (the
    # image asks DHCP on every interface too) is its reservation's
    assert {lease for lease in leases(network) if lease[0] in {m for m, _ in held}} <= held
    for owner, seat in zip(owners, seats, strict=True):  # the host reaches each seat at its address, by its key
        assert await asyncio.to_thread(ssh_hostname, pairs[owner][0], seat["address"].split("/")[0]) == \
            seat["hostname"]

    storage = Path(str(client.app[keys.CONFIG].providers[0].storage_dir)) / "disks"
    assert len(list(storage.glob("*-seed.iso"))) == 2
    resp = await client.delete(f"{API}/clusters/{lab['id']}")
    for op in await resp.json():
        await done(client, op["id"])
    assert not {f"mv-{s['workload_id']}" for s in seats} & set(all_domains(URI).values())
    assert network not in networks()
    assert sorted(p.name for p in storage.iterdir()) == []  # no overlay, console log or seed ISO left
