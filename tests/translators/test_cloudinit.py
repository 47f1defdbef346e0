"""The clone's cloud-init documents, its NoCloud seed ISO read back with xorriso, and the VMware
guestinfo built from the same documents."""

from __future__ import annotations

import base64
import email
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from metavmm.foundation.errors import ValidationError
from metavmm.translators.cloudinit import (
    GuestIdentity,
    documents,
    host_label,
    key_pair_name,
    sha512_crypt,
    vmware_guestinfo,
    with_password,
    write_seed_iso,
)

STATIC = GuestIdentity(instance_id="w1-web-abc123", hostname="web-abc123", mac="52:54:00:AA:bb:01",
                       address="10.20.0.7/24", gateway="10.20.0.1", dns=("10.20.0.2", "9.9.9.9"))


def iso_files(iso: Path, dest: Path) -> dict[str, str]:
    """Every file of ``iso``, extracted by xorriso (not by our code)."""
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(dest)], check=True,
                   capture_output=True)
    return {p.name: p.read_text() for p in dest.iterdir() if p.is_file()}


def iso_label(iso: Path) -> str:
    out = subprocess.run(["xorriso", "-indev", str(iso), "-pvd_info"], capture_output=True, text=True,
                         check=True).stdout
    return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Volume Id"))


async def test_seed_iso_carries_hostname_and_static_address(tmp_path: Path) -> None:
    iso = await write_seed_iso(STATIC, tmp_path / "seed.iso")
    assert iso_label(iso) == "cidata"
    files = iso_files(iso, tmp_path / "out")
    assert sorted(files) == ["meta-data", "network-config", "user-data"]
    assert yaml.safe_load(files["meta-data"]) == {"instance-id": "w1-web-abc123", "local-hostname": "web-abc123"}
    assert files["user-data"].startswith("#cloud-config\n")
    assert yaml.safe_load(files["user-data"])["hostname"] == "web-abc123"
    net = yaml.safe_load(files["network-config"])
    assert net == {"version": 2, "ethernets": {"primary": {
        "match": {"macaddress": "52:54:00:aa:bb:01"}, "addresses": ["10.20.0.7/24"],
        "routes": [{"to": "default", "via": "10.20.0.1"}], "nameservers": {"addresses": ["10.20.0.2", "9.9.9.9"]}}}}
    assert list(tmp_path.iterdir()) == [iso, tmp_path / "out"]  # no temporary left beside it


async def test_without_an_address_the_guest_uses_dhcp(tmp_path: Path) -> None:
    dhcp = GuestIdentity(instance_id="i-2", hostname="db-1", mac="52:54:00:00:00:02")
    files = iso_files(await write_seed_iso(dhcp, tmp_path / "seed.iso"), tmp_path / "out")
    assert sorted(files) == ["meta-data", "user-data"]  # no network-config: cloud-init's DHCP fallback
    meta = json.loads(base64.b64decode(vmware_guestinfo(dhcp)["guestinfo.metadata"]))
    assert meta == {"instance-id": "i-2", "local-hostname": "db-1"}


async def test_a_seat_with_a_class_interface_gets_both_by_their_macs(tmp_path: Path) -> None:
    """A class seat's seed: a network-config naming its own interface (DHCP) and its class interface (the
    broker's address, or DHCP without one), each by its MAC, lower case; no route on the class interface."""
    seat = GuestIdentity.from_extra({"hostname": "lab-01", "mac": "52:54:00:0A:00:01", "nics": [
        {"mac": "52:54:00:0B:00:01", "address": "10.20.0.10/24"}, {"mac": "52:54:00:0c:00:01", "address": None}]},
        instance_id="wl-seat", default_hostname="x")
    files = iso_files(await write_seed_iso(seat, tmp_path / "seed.iso"), tmp_path / "out")
    assert sorted(files) == ["meta-data", "network-config", "user-data"]
    assert yaml.safe_load(files["network-config"]) == {"version": 2, "ethernets": {
        "primary": {"match": {"macaddress": "52:54:00:0a:00:01"}, "dhcp4": True},
        "nic1": {"match": {"macaddress": "52:54:00:0b:00:01"}, "addresses": ["10.20.0.10/24"]},
        "nic2": {"match": {"macaddress": "52:54:00:0c:00:01"}, "dhcp4": True}}}
    meta = json.loads(base64.b64decode(vmware_guestinfo(seat)["guestinfo.metadata"]))
    assert meta["network"] == yaml.safe_load(files["network-config"])


@pytest.mark.parametrize(("extra", "message"), [
    ({"nics": [{"mac": "52:54:00:0b:00:01"}]}, "needs its own interface's MAC"),
    ({"mac": "52:54:00:0b:00:01", "nics": [{"mac": "52:54:00:0B:00:01"}]}, "distinct MACs"),
    ({"mac": "52:54:00:0a:00:01", "nics": [{"mac": "52:54:00:0b:00:01", "address": "10.0.0.300/24"}]},
     "interface address"),
    ({"mac": "52:54:00:0a:00:01", "nics": [{"mac": "nope"}]}, "interface MAC"),
    ({"mac": "52:54:00:0a:00:01", "nics": [{"address": "10.0.0.3/24"}]}, "each with its mac"),
    ({"mac": "52:54:00:0a:00:01", "nics": "52:54:00:0b:00:01"}, "a list of interfaces"),
])
def test_bad_further_interfaces_are_refused(extra: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GuestIdentity.from_extra({"hostname": "ok", **extra}, instance_id="i", default_hostname="x")


def test_vmware_guestinfo_holds_the_same_documents() -> None:
    info = vmware_guestinfo(STATIC)
    assert info["guestinfo.metadata.encoding"] == "base64" and info["guestinfo.hostname"] == "web-abc123"
    meta = json.loads(base64.b64decode(info["guestinfo.metadata"]))
    docs = documents(STATIC)
    assert {k: v for k, v in meta.items() if k != "network"} == yaml.safe_load(docs["meta-data"])
    assert meta["network"] == yaml.safe_load(docs["network-config"])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"hostname": "bad_name"}, "not a valid host name"),
    ({"hostname": "-lead"}, "not a valid host name"),
    ({"instance_id": "a/b"}, "instance id"),
    ({"mac": "52:54:00:zz:00:01"}, "MAC"),
    ({"address": "10.0.0.300/24"}, "clone address"),
    ({"address": "10.0.0.5/24", "gateway": "10.0.1.1"}, "not in the clone's network"),
    ({"dns": ("nine",)}, "clone address"),
])
def test_bad_identity_is_refused(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"instance_id": "i", "hostname": "ok"}
    with pytest.raises(ValidationError, match=message):
        GuestIdentity(**{**base, **kwargs})  # type: ignore[arg-type]


def test_host_label_makes_names_valid() -> None:
    assert host_label("My_VM.01") == "my-vm-01"
    assert host_label("___") == "vm"
    assert len(host_label("x" * 100)) == 63
    assert GuestIdentity(instance_id="i", hostname=host_label("Über Server!")).hostname == "ber-server"


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHh0ZXN0a2V5Zm9ydGhlYnJva2VyMDEyMzQ1Njc4OQ alice@example"
USER_DATA = "#!/bin/sh\r\necho 'context-marker' > /dev/console\n"


async def test_seed_carries_the_key_and_the_user_data_as_given(tmp_path: Path) -> None:
    """The client's user data reaches the seed byte for byte (no newline translation, no wrapping); the
    key is meta-data's public-keys, so the user data need not mention it."""
    plain = GuestIdentity(instance_id="wl-1", hostname="vm-1")
    iso = await write_seed_iso(plain, tmp_path / "seed.iso", user_data=USER_DATA, ssh_keys=(KEY,))
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(tmp_path / "out")],
                   check=True, capture_output=True)
    assert (tmp_path / "out" / "user-data").read_bytes() == USER_DATA.encode()
    meta = yaml.safe_load((tmp_path / "out" / "meta-data").read_text())
    assert meta == {"instance-id": "wl-1", "local-hostname": "vm-1", "public-keys": [KEY]}


def test_key_alone_keeps_the_default_user_data() -> None:
    docs = documents(GuestIdentity(instance_id="wl-2", hostname="vm-2"), ssh_keys=(KEY,))
    assert yaml.safe_load(docs["user-data"])["hostname"] == "vm-2"
    assert yaml.safe_load(docs["meta-data"])["public-keys"] == [KEY]


def test_key_pair_name_ignores_the_comment() -> None:
    other_comment = KEY.rsplit(" ", 1)[0] + " bob@elsewhere"
    assert key_pair_name(KEY) == key_pair_name(other_comment) != key_pair_name(KEY.replace("IHh0", "IHh1"))
    assert key_pair_name(KEY).startswith("metavmm-") and len(key_pair_name(KEY)) <= 255


def test_vmware_guestinfo_carries_the_key_and_the_user_data() -> None:
    info = vmware_guestinfo(GuestIdentity(instance_id="wl-3", hostname="vm-3"), user_data=USER_DATA, ssh_keys=(KEY,))
    assert base64.b64decode(info["guestinfo.userdata"]) == USER_DATA.encode()
    assert info["guestinfo.userdata.encoding"] == "base64"
    assert json.loads(base64.b64decode(info["guestinfo.metadata"]))["public-keys"] == [KEY]
    assert "guestinfo.userdata" not in vmware_guestinfo(GuestIdentity(instance_id="wl-3", hostname="vm-3"))


def test_sha512_crypt_matches_the_specification_and_openssl() -> None:
    # the first test vector of Drepper's "Unix crypt using SHA-256 and SHA-512"
    assert sha512_crypt("Hello world!", "saltstring") == (
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1")
    for password, salt in (("secret", "abcdefgh"), ("x" * 100, "Q"), ("é pässwörd", "./09AZaz")):
        made = subprocess.run(["openssl", "passwd", "-6", "-salt", salt, password], capture_output=True, text=True,
                              check=True).stdout.strip()
        assert sha512_crypt(password, salt) == made, password
    one, two = sha512_crypt("same"), sha512_crypt("same")
    assert one != two and one.startswith("$6$") and len(one.split("$")[2]) == 16  # a random salt each time
    with pytest.raises(ValidationError, match="salt"):
        sha512_crypt("x", "bad$salt")


def test_a_password_hash_goes_into_the_user_data_beside_the_clients() -> None:
    hashed = sha512_crypt("class-pass", "abc")
    alone = yaml.safe_load(with_password(None, "lab-01", hashed))
    assert alone == {"preserve_hostname": False, "hostname": "lab-01", "password": hashed,
                     "chpasswd": {"expire": False}, "ssh_pwauth": True}
    for given, subtype in (("#cloud-config\npackages: [htop]\n", "cloud-config"), ("#!/bin/sh\necho hi\n",
                                                                                  "x-shellscript")):
        parts = [p for p in email.message_from_string(with_password(given, "lab-01", hashed)).walk()
                 if not p.is_multipart()]
        assert [p.get_content_subtype() for p in parts] == ["cloud-config", subtype]
        assert parts[0].get_payload(decode=True).decode().count(hashed) == 1
        assert parts[1].get_payload(decode=True).decode() == given
    with pytest.raises(ValidationError, match="#cloud-config or a #! script"):
        with_password("#include http://example.org/x", "lab-01", hashed)
    with pytest.raises(ValidationError, match="SHA-512 crypt"):
        with_password(None, "lab-01", "plaintext")
