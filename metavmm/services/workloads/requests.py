"""What a front end asks of the workload service, as plain values, and the rules every request obeys.

REST bodies, OCCI renderings, CLI options and marketplace launches are all turned into these; the rules
here (names, shapes, addresses, which action applies in which state) are the only copies, so a mistake
gets the same error whichever front end it came through.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from metavmm.catalog.models import Operation, Workload, WorkloadKind, WorkloadLink
from metavmm.foundation.errors import Conflict, ValidationError
from metavmm.scheduler.plan import Step
from metavmm.services.vocabulary import COMPUTE_ACTIONS as COMPUTE_ACTIONS  # re-exported: the front ends' choices
from metavmm.services.vocabulary import POWER_ACTIONS as POWER_ACTIONS
from metavmm.translators.cloudinit import GuestIdentity

KINDS = tuple(k.value for k in WorkloadKind)
NAME_MAX = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
GROUP_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
_GROUP = re.compile(GROUP_PATTERN)
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")

ENGINE_VERB = {"start": "start", "stop": "stop", "restart": "restart", "suspend": "suspend", "resume": "start"}
"""The engine's power verb (flows.power) of each action: a suspended VM resumes by a start."""
DESIRED_AFTER = {"start": "active", "stop": "stopped", "restart": "active", "suspend": "suspended",
                 "resume": "active"}
APPLICABLE = {
    "running": ("stop", "restart", "suspend", "save"),
    "stopped": ("start", "save"),
    "suspended": ("start", "resume", "stop"),
    "error": ("start", "stop"),
}
"""Which compute actions apply in which state: the state the VM is in, or, while an operation runs on
it, the state it is heading to (a stop asked during its create is planned behind the create)."""
_HEADING = {"active": "running", "stopped": "stopped", "suspended": "suspended"}
_STATE = {"running": "running", "stopped": "stopped", "suspended": "suspended", "error": "error", "gone": "error",
          "lost": "error", "deleted": "error", "rolled_back": "error", "cancelled": "error"}
RESOURCE_STATES = {"network": {"up": "active", "down": "inactive"}, "storage": {"online": "online",
                                                                                  "offline": "offline"}}
"""Catalog-only states of a network or storage (nothing at the provider changes): OCCI's up/down and
online/offline actions."""


def check_group(name: Any, what: str) -> str | None:
    """A placement group's name: 1 to 63 lower-case letters, digits, ``_.-`` (a label the project chooses)."""
    if name is None:
        return None
    if not isinstance(name, str) or not _GROUP.fullmatch(name):
        raise ValidationError(f"{what} {name!r} must be 1 to 63 lower-case letters, digits, '_', '.' or '-'")
    return name


def check_residency(countries: Any) -> tuple[str, ...]:
    """Data residency: the countries (ISO 3166 alpha-2, any case) a compute may run in; empty: any. Kept on
    the workload (``spec["residency"]``) so every later placement of it (a migration, a rebalance move)
    honours it as its create did."""
    if not isinstance(countries, (list, tuple)) or len(countries) > 64:
        raise ValidationError("residency must be a list of at most 64 ISO 3166 country codes")
    out: list[str] = []
    for code in countries:
        if not isinstance(code, str) or not _COUNTRY.fullmatch(code):
            raise ValidationError(f"residency: {str(code)[:20]!r} is not an ISO 3166 alpha-2 country code (TW, DE)")
        if code.upper() not in out:
            out.append(code.upper())
    return tuple(out)


_COUNTRY = re.compile(r"[A-Za-z]{2}")


def check_name(name: str, what: str = "name") -> str:
    """A workload's name: any text a person would type (an OCCI title), 1 to 255 characters, no control
    characters. It is a label, not an identifier: the VM's name at the provider is derived from it."""
    if not isinstance(name, str) or not name.strip():
        raise ValidationError(f"{what} must not be empty")
    if len(name) > NAME_MAX:
        raise ValidationError(f"{what} is {len(name)} characters long; at most {NAME_MAX}")
    if _CONTROL.search(name):
        raise ValidationError(f"{what} must not contain control characters")
    return name


def check_cidr(cidr: str | None) -> str | None:
    """A network's address range: an IPv4 network with its host bits zero (10.0.0.0/16)."""
    if cidr is None:
        return None
    try:
        net = ipaddress.IPv4Network(cidr, strict=True)
    except (ValueError, TypeError) as exc:
        raise ValidationError(f"address range {cidr!r} is not an IPv4 network like 10.0.0.0/16: {exc}") from None
    if net.prefixlen < 8 or net.prefixlen > 29:
        raise ValidationError(f"address range {cidr} must be a /8 to /29 network")
    return str(net)


SSH_KEY_PATTERN = r"(ssh|ecdsa|sk)-[A-Za-z0-9@.\-]+ [A-Za-z0-9+/=]+( [^\r\n]*)?"
"""An OpenSSH public key line: type, base64 body, optional comment (OCCI's ssh_key mixin declares it)."""
_SSH_KEY = re.compile(SSH_KEY_PATTERN)
SSH_KEY_MAX = 16384
USER_DATA_MAX = 65536  # characters; OpenStack and AWS take less, and say so when asked for more


def check_ssh_key(key: Any) -> str | None:
    """The SSH public key cloud-init installs for the image's default user: one OpenSSH key line."""
    if key is None:
        return None
    if not isinstance(key, str) or len(key) > SSH_KEY_MAX or not _SSH_KEY.fullmatch(key.strip()):
        raise ValidationError("ssh_key must be one OpenSSH public key line like 'ssh-ed25519 AAAA... comment'")
    return key.strip()


def check_user_data(data: Any) -> str | None:
    """The client's cloud-init user data, passed to the guest as given (a #cloud-config, a script...)."""
    if data is None:
        return None
    if not isinstance(data, str) or not 1 <= len(data) <= USER_DATA_MAX:
        raise ValidationError(f"user_data must be text of 1 to {USER_DATA_MAX} characters")
    if "\x00" in data:
        raise ValidationError("user_data must not contain NUL characters")
    return data


def check_mac(mac: Any) -> str | None:
    """An interface's MAC, as a link may ask for it: unicast, six colon-separated bytes."""
    if mac is None:
        return None
    if not isinstance(mac, str) or not _MAC.match(mac):
        raise ValidationError(f"MAC address {mac!r} must be six hexadecimal bytes like 52:54:00:12:34:56")
    if int(mac[:2], 16) & 1:
        raise ValidationError(f"MAC address {mac} is a multicast address; an interface needs a unicast one")
    return mac.lower()


GUEST_KEYS = ("hostname", "mac", "address", "gateway", "dns", "nics")


def check_guest(guest: Mapping[str, Any], workload_id: str) -> dict[str, Any]:
    """A guest identity (a cluster seat's): the same checks cloud-init's writer makes, before anything is
    written (a bad hostname is a 400 now, not a failed step later)."""
    unknown = set(guest) - set(GUEST_KEYS)
    if unknown:
        raise ValidationError(f"unknown guest keys {', '.join(sorted(unknown))}; expected {', '.join(GUEST_KEYS)}")
    GuestIdentity.from_extra(guest, instance_id=workload_id, default_hostname=str(guest.get("hostname") or "vm"))
    for mac in [guest.get("mac"), *(n.get("mac") for n in guest.get("nics") or ())]:
        check_mac(mac)
    return dict(guest)


def guest_spec(guest: Mapping[str, Any]) -> dict[str, Any]:
    """What the workload's spec keeps of its guest identity (the keys a migrated clone's spec has)."""
    if not guest:
        return {}
    address = guest.get("address")
    kept = {"hostname": guest.get("hostname"), "mac": guest.get("mac"),
            "ip": str(address).split("/")[0] if address else None}
    return {k: v for k, v in kept.items() if v is not None}  # a seat on a class network: its link has them


def with_guest(steps: list[Step], guest: Mapping[str, Any], workload_id: str) -> list[Step]:
    """The placement's steps with the guest identity handed to the VM's create step (``VmSpec.extra``)."""
    if not guest:
        return steps
    extra = {k: v for k, v in guest.items() if v is not None}
    extra["instance_id"] = workload_id
    return [replace(s, args={**s.args, "extra": {**(s.args.get("extra") or {}), **extra}})
            if s.action == "vm.create" else s for s in steps]


def compute_state(workload: Workload, busy: bool) -> str:
    """The state whose actions apply (see :data:`APPLICABLE`)."""
    state = _STATE.get(workload.observed_state, "stopped")  # pending, unknown: not running yet
    if busy and state != "error":
        return _HEADING.get(workload.desired_state, state)
    return state


def check_applicable(workload: Workload, action: str, busy: bool) -> None:
    if workload.kind != WorkloadKind.COMPUTE:
        raise Conflict(f"{action} applies to compute workloads, not {workload.kind}")
    state = compute_state(workload, busy)
    allowed = APPLICABLE[state]
    if action not in allowed:
        raise Conflict(f"action {action} is not applicable: compute {workload.name} is {state}"
                       + (" (after the operation running on it)" if busy else "")
                       + f"; it accepts {', '.join(allowed)}")


@dataclass(frozen=True)
class LinkSpec:
    """A link from a compute to a network (an interface) or a storage (an attached volume)."""

    target_id: str
    mac: str | None = None  # networks: the interface's MAC, where the provider lets the broker choose
    device: str | None = None  # the interface (eth1) or the disk's device name (vdb)
    attributes: Mapping[str, Any] = field(default_factory=dict)  # kept on the link (OCCI mixins)
    link_id: str | None = None  # OCCI clients may choose the id


@dataclass(frozen=True)
class CreateRequest:
    """One workload to create. A compute needs a flavor or vcpus and ram_mib; an image is a marketplace
    reference (id, ``name`` or ``publisher/name``) the project may see; a storage needs disk_gib."""

    kind: str = WorkloadKind.COMPUTE
    name: str | None = None  # default: "<kind>-<first 8 characters of its id>"
    project_id: int | None = None  # admins only: another project
    flavor: str | None = None
    vcpus: int | None = None
    ram_mib: int | None = None
    disk_gib: int = 0
    gpu_model: str | None = None
    gpu_count: int = 0
    image: str | None = None
    site: str | None = None
    zone: str | None = None
    providers: tuple[str, ...] = ()  # only these providers (OCCI's broker mixin)
    max_price_per_hour: float | None = None
    cidr: str | None = None
    ssh_key: str | None = None  # a compute's cloud-init contextualization: an OpenSSH public key line
    user_data: str | None = field(default=None, repr=False)  # and the user data, as given
    links: tuple[LinkSpec, ...] = ()
    workload_id: str | None = None  # OCCI clients may choose the id
    attributes: Mapping[str, Any] = field(default_factory=dict)  # kept in the spec (OCCI mixins, title...)
    # a guest identity the broker chose (a cluster seat's): hostname, mac, address (CIDR form), gateway, dns;
    # cloud-init sets it on the VM's interface, as for a migrated clone
    guest: Mapping[str, Any] = field(default_factory=dict)
    strategy: Literal["spread", "pack"] | None = None  # over hosts (the scheduler's balance cost)
    # placement groups of the project: members of an affinity group share a host, members of an
    # anti-affinity group never do (the create's placement and every rebalance move keep both)
    affinity_group: str | None = None
    anti_affinity_group: str | None = None
    residency: tuple[str, ...] = ()  # the countries a compute may run in (check_residency); empty: any

    def fingerprint(self) -> str:
        """What the idempotency check compares: a key reused for another request is a conflict. The fields
        as they are (links as dicts): the JSON of ``asdict``, which deep-copied every mapping and list on the
        way (issue 23 item 15: a measurable share of a create's CPU), so a key stored before still matches."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["links"] = [asdict(link) for link in self.links]
        if not self.residency:  # a request without one hashes as it did before the field existed
            del data["residency"]
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Accepted:
    """A request the service took: the rows it wrote and the operation that will make them real."""

    workload: Workload
    operation: Operation
    links: tuple[WorkloadLink, ...] = ()
    link_operations: tuple[Operation, ...] = ()
    replayed: bool = False  # an Idempotency-Key seen before: the first request's rows, nothing new
