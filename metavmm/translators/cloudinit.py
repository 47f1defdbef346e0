"""A VM's identity (hostname, MAC, static address) and its contextualization (an SSH public key, the
client's user data) as the cloud-init documents every target reads.

One place builds the documents (:func:`documents`); each driver only chooses the transport:
libvirt attaches a NoCloud seed, a small ISO 9660 image labelled ``cidata`` holding ``meta-data``,
``user-data`` and ``network-config`` (:func:`write_seed_iso`, built with xorriso); VMware puts the
same meta-data, with the network config under its ``network`` key, into ``guestinfo.metadata`` (and
the user data into ``guestinfo.userdata``), as cloud-init's VMware datasource reads it
(:func:`vmware_guestinfo`).

The client's user data goes to the guest byte for byte as ``user-data`` (cloud-init reads a
``#cloud-config`` document, a script, or a MIME multipart); the SSH key goes into meta-data as
``public-keys``, which cloud-init installs for the image's default user, so the user data need not
mention it. Clouds with their own key registry (OpenStack, AWS) import the key as a key pair named by
its digest (:func:`key_pair_name`), so one key makes one pair however many VMs use it.

Without an address the clone gets no network-config and cloud-init falls back to DHCP on its first
interface, which is what a target without a configured clone network gives. A guest with more interfaces
(``nics``: a class seat's interface on its class network, plugged by the broker with a MAC it chose) gets
a network-config for all of them, each matched by its MAC: its own interface (whose MAC the broker chose
too) by DHCP, or its static address, and each further one with the address the broker assigned it, or
by DHCP. A network-config replaces cloud-init's fallback, so the first interface must be in it.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any

import yaml

from metavmm.foundation.errors import ValidationError
from metavmm.translators.tools import Limits, find_tool, run_tool

SEED_LABEL = "cidata"  # the volume label NoCloud looks for
_HOSTNAME = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_MAC = re.compile(r"^(?:[0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")


def host_label(name: str) -> str:
    """``name`` made a valid host name (lower case, letters, digits and inner hyphens, at most 63)."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].strip("-") or "vm"


@dataclass(frozen=True, slots=True)
class GuestNic:
    """A further interface of the guest, found by its ``mac``; ``address`` (``10.20.0.10/24``) is set on it
    statically, None means DHCP. It gets no route or name server: the guest's own interface has those."""

    mac: str
    address: str | None = None

    def __post_init__(self) -> None:
        if not _MAC.fullmatch(self.mac):
            raise ValidationError(f"interface MAC {self.mac!r} is not six colon-separated hex bytes")
        try:
            if self.address:
                ipaddress.ip_interface(self.address)
        except ValueError as exc:
            raise ValidationError(f"interface address: {exc}") from None


@dataclass(frozen=True, slots=True)
class GuestIdentity:
    """What makes a clone itself. ``address`` is an interface (``10.20.0.5/24``); None means DHCP.
    ``nics``: further interfaces, each configured by its MAC (a network-config then names ``mac`` too)."""

    instance_id: str
    hostname: str
    mac: str | None = None
    address: str | None = None
    gateway: str | None = None
    dns: tuple[str, ...] = field(default_factory=tuple)
    nics: tuple[GuestNic, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.nics and self.mac is None:
            raise ValidationError("a guest with further interfaces needs its own interface's MAC: a network-config "
                                  "replaces cloud-init's fallback, and must find the first interface too")
        macs = [m.lower() for m in (self.mac, *(n.mac for n in self.nics)) if m]
        if len(set(macs)) != len(macs):
            raise ValidationError(f"the guest's interfaces need distinct MACs, not {', '.join(macs)}")
        if not _HOSTNAME.fullmatch(self.hostname):
            raise ValidationError(f"hostname {self.hostname!r} is not a valid host name (RFC 1123 label)")
        if not self.instance_id or "/" in self.instance_id:
            raise ValidationError(f"instance id {self.instance_id!r} must be non-empty and have no '/'")
        if self.mac is not None and not _MAC.fullmatch(self.mac):
            raise ValidationError(f"MAC {self.mac!r} is not six colon-separated hex bytes")
        try:
            iface = ipaddress.ip_interface(self.address) if self.address else None
            gateway = ipaddress.ip_address(self.gateway) if self.gateway else None
            for server in self.dns:
                ipaddress.ip_address(server)
        except ValueError as exc:
            raise ValidationError(f"clone address: {exc}") from None
        if gateway is not None and (iface is None or gateway not in iface.network):
            raise ValidationError(f"gateway {gateway} is not in the clone's network {iface.network if iface else '-'}")

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any], *, instance_id: str, default_hostname: str) -> GuestIdentity:
        """The identity a flow put into ``VmSpec.extra`` (keys ``hostname``, ``mac``, ``address``,
        ``gateway``, ``dns``, ``instance_id``, and ``nics``: a list of ``{"mac": ..., "address": ...}``)."""
        nics = extra.get("nics") or ()
        if not isinstance(nics, list | tuple) or not all(isinstance(n, Mapping) and n.get("mac") for n in nics):
            raise ValidationError("nics must be a list of interfaces, each with its mac (and an address or none)")
        return cls(instance_id=str(extra.get("instance_id") or instance_id),
                   hostname=str(extra.get("hostname") or host_label(default_hostname)),
                   mac=str(extra["mac"]) if extra.get("mac") else None,
                   address=str(extra["address"]) if extra.get("address") else None,
                   gateway=str(extra["gateway"]) if extra.get("gateway") else None,
                   dns=tuple(str(s) for s in extra.get("dns") or ()),
                   nics=tuple(GuestNic(str(n["mac"]), str(n["address"]) if n.get("address") else None)
                              for n in nics))


_CRYPT64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SHA512_ORDER = ((0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26), (6, 27, 48),
                 (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13),
                 (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19), (62, 20, 41))
SHA512_CRYPT = re.compile(r"^\$6\$[./0-9A-Za-z]{1,16}\$[./0-9A-Za-z]{86}$")
"""A SHA-512 crypt hash with the default 5000 rounds, as ``mkpasswd -m sha-512`` and ``openssl passwd -6`` write it."""


def sha512_crypt(password: str, salt: str | None = None) -> str:
    """``password`` as a SHA-512 crypt hash (``$6$salt$...``, Drepper's "Unix crypt using SHA-256 and
    SHA-512", 5000 rounds), what /etc/shadow and cloud-init's ``password`` take. Written out because
    Python's ``crypt`` module is deprecated (gone in 3.13) and the hash is all a guest needs: the broker
    never keeps or sends the plaintext. ``salt``: 1 to 16 characters of ``[./0-9A-Za-z]`` (random if None)."""
    salt = salt if salt is not None else "".join(_CRYPT64[b % 64] for b in os.urandom(16))
    if not 1 <= len(salt) <= 16 or any(c not in _CRYPT64 for c in salt):
        raise ValidationError("a SHA-512 crypt salt is 1 to 16 characters of ./0-9A-Za-z")
    key, salt_b = password.encode(), salt.encode()
    b = hashlib.sha512(key + salt_b + key).digest()
    a_ctx = hashlib.sha512(key + salt_b)
    n = len(key)
    a_ctx.update(b * (n // 64) + b[:n % 64])
    while n:
        a_ctx.update(b if n & 1 else key)
        n >>= 1
    a = a_ctx.digest()
    dp = hashlib.sha512(key * len(key)).digest()
    p = (dp * (len(key) // 64 + 1))[:len(key)]
    ds = hashlib.sha512(salt_b * (16 + a[0])).digest()
    s = (ds * (len(salt_b) // 64 + 1))[:len(salt_b)]
    c = a
    for i in range(5000):
        ctx = hashlib.sha512(p if i & 1 else c)
        if i % 3:
            ctx.update(s)
        if i % 7:
            ctx.update(p)
        ctx.update(c if i & 1 else p)
        c = ctx.digest()
    out = []
    for b2, b1, b0 in _SHA512_ORDER:
        w = (c[b2] << 16) | (c[b1] << 8) | c[b0]
        out += [_CRYPT64[(w >> (6 * k)) & 0x3F] for k in range(4)]
    out += [_CRYPT64[c[63] & 0x3F], _CRYPT64[c[63] >> 6]]
    return f"$6${salt}${''.join(out)}"


def with_password(user_data: str | None, hostname: str, password_hash: str) -> str:
    """User data that sets the image's default user's password from ``password_hash`` (cloud-init's
    ``password`` key takes a crypt hash as it is: ``chpasswd -e``) and allows SSH password logins, with the
    client's own user data beside it: a MIME multipart of the two (cloud-init merges cloud-configs and
    runs scripts). Only a #cloud-config or a script can be combined; anything else is refused."""
    if not SHA512_CRYPT.fullmatch(password_hash):
        raise ValidationError("a password hash must be a SHA-512 crypt hash like $6$salt$... (openssl passwd -6)")
    config = {"preserve_hostname": False, "hostname": hostname, "password": password_hash,
              "chpasswd": {"expire": False}, "ssh_pwauth": True}
    ours = "#cloud-config\n" + yaml.safe_dump(config, sort_keys=False)
    if user_data is None:
        return ours
    message = MIMEMultipart()
    for text, subtype in ((ours, "cloud-config"), (user_data, combinable(user_data))):
        message.attach(MIMEText(text, subtype, "utf-8"))
    return message.as_string()


def combinable(user_data: str) -> str:
    """The MIME subtype of user data :func:`with_password` can put beside its own part; other user data
    (a MIME multipart already, a boothook, an include) is refused."""
    if user_data.startswith("#cloud-config"):
        return "cloud-config"
    if user_data.startswith("#!"):
        return "x-shellscript"
    raise ValidationError("a seat with a password takes user data that is a #cloud-config or a #! script "
                          "(the password is added as a second part)")


def key_pair_name(public_key: str) -> str:
    """The name a cloud's key pair registry gets for ``public_key``: derived from the key's type and body
    (not its comment), so importing it again finds the same pair."""
    kind, body = [*public_key.split(), "", ""][:2]
    return "metavmm-" + hashlib.sha256(f"{kind} {body}".encode()).hexdigest()[:24]


def meta_data(identity: GuestIdentity, ssh_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    data: dict[str, Any] = {"instance-id": identity.instance_id, "local-hostname": identity.hostname}
    if ssh_keys:
        data["public-keys"] = list(ssh_keys)
    return data


def network_config(identity: GuestIdentity) -> dict[str, Any] | None:
    """Network config version 2 with the static address on the interface carrying the clone's MAC
    (or the first ``e*`` interface without one); None without an address (DHCP) and further interfaces.
    With further interfaces (``nics``), every interface is matched by its MAC, without a rename (cloud-init
    names each by the MAC it finds; netplan matches the MAC alone): ``primary`` (the guest's own: its static
    address, or DHCP) and ``nic1``, ``nic2``... (each with its address, or DHCP)."""
    if not identity.address and not identity.nics:
        return None
    primary: dict[str, Any] = {"match": {"macaddress": identity.mac.lower()} if identity.mac else {"name": "e*"}}
    if identity.address:
        primary["addresses"] = [identity.address]
        if identity.gateway:
            primary["routes"] = [{"to": "default", "via": identity.gateway}]
        if identity.dns:
            primary["nameservers"] = {"addresses": list(identity.dns)}
    else:
        primary["dhcp4"] = True
    ethernets = {"primary": primary}
    for i, nic in enumerate(identity.nics, 1):
        ethernets[f"nic{i}"] = {"match": {"macaddress": nic.mac.lower()},
                                **({"addresses": [nic.address]} if nic.address else {"dhcp4": True})}
    return {"version": 2, "ethernets": ethernets}


def documents(identity: GuestIdentity, *, user_data: str | None = None,
              ssh_keys: tuple[str, ...] = ()) -> dict[str, str]:
    """The NoCloud files by name: meta-data (with the SSH keys), user-data (the client's as given, else a
    cloud-config setting the host name: NoCloud requires one) and, with an address, network-config."""
    default = "#cloud-config\n" + yaml.safe_dump({"preserve_hostname": False, "hostname": identity.hostname},
                                                 sort_keys=False)
    docs = {"meta-data": yaml.safe_dump(meta_data(identity, ssh_keys), sort_keys=False),
            "user-data": user_data if user_data is not None else default}
    network = network_config(identity)
    if network is not None:
        docs["network-config"] = yaml.safe_dump(network, sort_keys=False)
    return docs


def vmware_guestinfo(identity: GuestIdentity, *, user_data: str | None = None,
                     ssh_keys: tuple[str, ...] = ()) -> dict[str, str]:
    """extraConfig keys for cloud-init's VMware datasource: the meta-data (with the SSH keys) as base64
    JSON, with the network config embedded under ``network``, and the client's user data as base64
    (the datasource's documented layout)."""
    metadata: dict[str, Any] = meta_data(identity, ssh_keys)
    network = network_config(identity)
    if network is not None:
        metadata["network"] = network
    keys = {"guestinfo.hostname": identity.hostname,
            "guestinfo.metadata": base64.b64encode(json.dumps(metadata).encode()).decode(),
            "guestinfo.metadata.encoding": "base64"}
    if user_data is not None:
        keys["guestinfo.userdata"] = base64.b64encode(user_data.encode()).decode()
        keys["guestinfo.userdata.encoding"] = "base64"
    return keys


async def write_seed_iso(identity: GuestIdentity, dest: Path, *, user_data: str | None = None,
                         ssh_keys: tuple[str, ...] = ()) -> Path:
    """Write the NoCloud seed ISO (label ``cidata``, Joliet and Rock Ridge names) to ``dest``.

    Built under a temporary name in ``dest``'s directory and renamed, so a crash never leaves a
    half-written seed that a retried step would attach.
    """
    xorriso = find_tool("xorriso")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="seed-", dir=dest.parent) as tmp:
        src = Path(tmp) / "files"
        src.mkdir()
        for name, text in documents(identity, user_data=user_data, ssh_keys=ssh_keys).items():
            (src / name).write_bytes(text.encode())  # as given: no newline translation
        part = Path(tmp) / "seed.iso"
        await run_tool([xorriso, "-as", "mkisofs", "-quiet", "-output", str(part), "-volid", SEED_LABEL,
                        "-joliet", "-rock", str(src)], limits=Limits(timeout_s=60), what="xorriso")
        part.replace(dest)
    return dest
