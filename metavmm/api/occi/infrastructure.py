"""OCCI Core and Infrastructure (GFD.221, GFD.224) declared as data, plus metavmm's own mixins.

Every attribute that lives in the catalog names its ``field``: ``name`` is the workload's name,
anything else a key of the workload's ``spec`` (units converted where OCCI uses GiB and the catalog
MiB). Attributes without a field (ids, states, link ends) are computed by the service from the row.
Catalog-derived mixins (os_tpl per marketplace image, resource_tpl per flavor, one per site and
availability zone) are built at request time by :mod:`metavmm.api.occi.service`, from the templates here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from metavmm.api.occi.model import CORE, Action, Kind, Mixin, OcciAttr
from metavmm.services.workloads.requests import SSH_KEY_PATTERN

INFRA = "http://schemas.ogf.org/occi/infrastructure#"
METAVMM = "http://schemas.metavmm.dev/occi/"
OS_TPL_SCHEME = METAVMM + "os_tpl#"
RESOURCE_TPL_SCHEME = METAVMM + "resource_tpl#"
SITE_SCHEME = METAVMM + "site#"
USER_SCHEME_DEFAULT = METAVMM + "user#"

IP_ADDRESS = r"[0-9A-Fa-f:.]{2,45}"
CIDR = IP_ADDRESS + r"(/[0-9]{1,3})?"
MAC = r"([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}"
HOSTNAME = r"[A-Za-z0-9]([A-Za-z0-9\-.]{0,252})?"


def _gib(mib: int | float) -> float:
    return round(float(mib) / 1024, 4)


def _mib(gib: float) -> int:
    return round(float(gib) * 1024)


def _state(name: str, values: tuple[str, ...], default: str) -> OcciAttr:
    return OcciAttr(name, str, mutable=False, enum=values, default=default, description="Current state")


def _message(name: str) -> OcciAttr:
    return OcciAttr(name, str, mutable=False, description="Human-readable explanation of the state")


# --- core ---------------------------------------------------------------------------------------------

ID = OcciAttr("occi.core.id", str, mutable=False, description="Identifier of the entity")
TITLE = OcciAttr("occi.core.title", str, field="name", pattern=r"[^\x00-\x1f]{1,255}",
                 description="Display name of the entity")
SUMMARY = OcciAttr("occi.core.summary", str, field="summary", pattern=r"[^\x00-\x08]{0,4096}",
                   description="Summary of the resource")
SOURCE = OcciAttr("occi.core.source", str, required=True, mutable=False, description="Location of the source")
TARGET = OcciAttr("occi.core.target", str, required=True, mutable=False, description="Location of the target")
SOURCE_KIND = OcciAttr("occi.core.source.kind", str, mutable=False, description="Kind of the source")
TARGET_KIND = OcciAttr("occi.core.target.kind", str, mutable=False, description="Kind of the target")

ENTITY = Kind(CORE, "entity", "Entity", (ID, TITLE))
RESOURCE = Kind(CORE, "resource", "Resource", (SUMMARY,), parent=ENTITY)
LINK = Kind(CORE, "link", "Link", (SOURCE, SOURCE_KIND, TARGET, TARGET_KIND), parent=ENTITY)

# --- actions ------------------------------------------------------------------------------------------

_COMPUTE_ACTION = "http://schemas.ogf.org/occi/infrastructure/compute/action#"
START = Action(_COMPUTE_ACTION, "start", "Start the compute")
STOP = Action(_COMPUTE_ACTION, "stop", "Stop the compute", (
    OcciAttr("method", str, enum=("graceful", "acpioff", "poweroff"), default="poweroff"),))
RESTART = Action(_COMPUTE_ACTION, "restart", "Restart the compute", (
    OcciAttr("method", str, enum=("graceful", "warm", "cold"), default="cold"),))
SUSPEND = Action(_COMPUTE_ACTION, "suspend", "Suspend the compute", (
    OcciAttr("method", str, enum=("hibernate", "suspend"), default="suspend"),))
SAVE = Action(_COMPUTE_ACTION, "save", "Save the compute's disk as a new OS template", (
    OcciAttr("method", str, enum=("hot", "deferred"), default="hot"),
    OcciAttr("name", str, pattern=r"[A-Za-z0-9][A-Za-z0-9\-_. ]{0,127}"),))
_NETWORK_ACTION = "http://schemas.ogf.org/occi/infrastructure/network/action#"
UP = Action(_NETWORK_ACTION, "up", "Bring the network up")
DOWN = Action(_NETWORK_ACTION, "down", "Bring the network down")
_STORAGE_ACTION = "http://schemas.ogf.org/occi/infrastructure/storage/action#"
ONLINE = Action(_STORAGE_ACTION, "online", "Bring the storage online")
OFFLINE = Action(_STORAGE_ACTION, "offline", "Take the storage offline")

# --- kinds --------------------------------------------------------------------------------------------

COMPUTE = Kind(INFRA, "compute", "Compute resource", (
    OcciAttr("occi.compute.architecture", str, enum=("x86", "x64"), field="architecture",
             description="CPU architecture of the instance"),
    OcciAttr("occi.compute.cores", int, minimum=1, maximum=1024, field="vcpus",
             description="Number of virtual CPU cores"),
    OcciAttr("occi.compute.hostname", str, pattern=HOSTNAME, field="hostname", description="DNS hostname"),
    OcciAttr("occi.compute.share", int, minimum=0, maximum=262144, field="share",
             description="Relative number of CPU shares"),
    OcciAttr("occi.compute.memory", float, minimum=0.0625, maximum=65536, field="ram_mib", to_occi=_gib,
             from_occi=_mib, description="Maximum RAM in GiB"),
    _state("occi.compute.state", ("active", "inactive", "suspended", "error"), "inactive"),
    _message("occi.compute.state.message"),
), parent=RESOURCE, actions=(START, STOP, RESTART, SUSPEND, SAVE), location="/compute/")

NETWORK = Kind(INFRA, "network", "Network resource", (
    OcciAttr("occi.network.vlan", int, minimum=0, maximum=4095, field="vlan", description="802.1q VLAN id"),
    OcciAttr("occi.network.label", str, pattern=r"[A-Za-z0-9][A-Za-z0-9\-_.]{0,63}", field="label",
             description="Tag based VLAN label"),
    _state("occi.network.state", ("active", "inactive", "error"), "inactive"),
    _message("occi.network.state.message"),
), parent=RESOURCE, actions=(UP, DOWN), location="/network/")

STORAGE = Kind(INFRA, "storage", "Storage resource", (
    OcciAttr("occi.storage.size", float, required=True, minimum=0.001, maximum=65536, field="size_gib",
             description="Storage size in GiB"),
    _state("occi.storage.state", ("online", "offline", "error"), "offline"),
    _message("occi.storage.state.message"),
), parent=RESOURCE, actions=(ONLINE, OFFLINE), location="/storage/")

NETWORKINTERFACE = Kind(INFRA, "networkinterface", "Network interface link", (
    OcciAttr("occi.networkinterface.interface", str, mutable=False, field="interface",
             pattern=r"[A-Za-z0-9\-_.]{1,15}", description="Interface name, e.g. eth0"),
    OcciAttr("occi.networkinterface.mac", str, pattern=MAC, field="mac", description="MAC address"),
    _state("occi.networkinterface.state", ("active", "inactive", "error"), "inactive"),
    _message("occi.networkinterface.state.message"),
), parent=LINK, location="/networkinterface/")

STORAGELINK = Kind(INFRA, "storagelink", "Storage link", (
    OcciAttr("occi.storagelink.deviceid", str, pattern=r"[A-Za-z0-9\-_./]{1,64}", field="deviceid",
             description="Device id, e.g. vdb"),
    OcciAttr("occi.storagelink.mountpoint", str, pattern=r"/[^\x00-\x1f]{0,255}", field="mountpoint",
             description="Mount point in the guest"),
    _state("occi.storagelink.state", ("active", "inactive", "error"), "inactive"),
    _message("occi.storagelink.state.message"),
), parent=LINK, location="/storagelink/")

KINDS: tuple[Kind, ...] = (ENTITY, RESOURCE, LINK, COMPUTE, NETWORK, STORAGE, NETWORKINTERFACE, STORAGELINK)
RESOURCE_KINDS = (COMPUTE, NETWORK, STORAGE)
LINK_KINDS = (NETWORKINTERFACE, STORAGELINK)

# --- standard mixins ----------------------------------------------------------------------------------

_ALLOCATION = ("dynamic", "static")
IPNETWORK = Mixin("http://schemas.ogf.org/occi/infrastructure/network#", "ipnetwork", "IP network", (
    OcciAttr("occi.network.address", str, pattern=CIDR, field="address", description="CIDR, e.g. 10.0.0.0/24"),
    OcciAttr("occi.network.gateway", str, pattern=IP_ADDRESS, field="gateway", description="Gateway address"),
    OcciAttr("occi.network.allocation", str, enum=_ALLOCATION, field="allocation", description="Allocation"),
), applies=(NETWORK.type_id,), location="/mixins/ipnetwork/")

IPNETWORKINTERFACE = Mixin("http://schemas.ogf.org/occi/infrastructure/networkinterface#", "ipnetworkinterface",
                           "IP network interface", (
    OcciAttr("occi.networkinterface.address", str, pattern=CIDR, field="address", description="IP address"),
    OcciAttr("occi.networkinterface.gateway", str, pattern=IP_ADDRESS, field="gateway", description="Gateway"),
    OcciAttr("occi.networkinterface.allocation", str, enum=_ALLOCATION, field="allocation",
             description="Allocation"),
), applies=(NETWORKINTERFACE.type_id,), location="/mixins/ipnetworkinterface/")

OS_TPL = Mixin(INFRA, "os_tpl", "OS template", applies=(COMPUTE.type_id,), location="/mixins/os_tpl/")
RESOURCE_TPL = Mixin(INFRA, "resource_tpl", "Resource template", applies=(COMPUTE.type_id,),
                     location="/mixins/resource_tpl/")

SSH_KEY = Mixin("http://schemas.ogf.org/occi/infrastructure/credentials#", "ssh_key", "SSH public key", (
    OcciAttr("occi.credentials.ssh.publickey", str, required=True, field="ssh_key",
             pattern=SSH_KEY_PATTERN,
             description="The public key injected into the compute"),
), applies=(COMPUTE.type_id,), location="/mixins/ssh_key/")

USER_DATA = Mixin("http://schemas.ogf.org/occi/infrastructure/compute#", "user_data", "Contextualisation", (
    OcciAttr("occi.compute.userdata", str, required=True, field="user_data", pattern=r"[\s\S]{1,65536}",
             description="Data run by the compute at the end of its boot"),
), applies=(COMPUTE.type_id,), location="/mixins/user_data/")

SITE = Mixin(METAVMM + "placement#", "site", "Placement at a site or availability zone",
             applies=(COMPUTE.type_id, NETWORK.type_id, STORAGE.type_id), location="/mixins/site/")

_NAMES = r"[a-z0-9][a-z0-9\-]{0,62}(,[a-z0-9][a-z0-9\-]{0,62})*"
BROKER = Mixin(METAVMM + "broker#", "placement", "Broker placement preferences", (
    OcciAttr("metavmm.placement.max_price_per_hour", float, minimum=0, maximum=1e9, field="max_price_per_hour",
             description="Most the compute may cost per hour, in the federation's currency"),
    OcciAttr("metavmm.placement.allowed_providers", str, pattern=_NAMES, field="allowed_providers",
             description="Comma-separated provider names the compute may run at"),
), applies=(COMPUTE.type_id,), location="/mixins/broker/placement/")



def _placed(name: str, read: Callable[[dict[str, Any]], Any], kind: type, description: str) -> OcciAttr:
    """One fact of the placement summary the workload service kept (``spec["placement"]``), read-only."""
    def to_occi(placement: dict[str, Any]) -> Any:
        value = read(placement)
        return None if value in (None, "") else kind(value)
    return OcciAttr(f"metavmm.placement.{name}", kind, mutable=False, field="placement", description=description,
                    to_occi=to_occi)


def _burst(placement: dict[str, Any]) -> str | None:
    burst = placement.get("burst") or {}
    return f"{burst['outcome']}: {burst.get('reason') or ''}".rstrip(": ") if burst.get("outcome") else None


PLACED = Mixin(METAVMM + "broker#", "placed", "Where the broker placed the compute, at what price, and why", (
    _placed("site", lambda p: p.get("site"), str, "The site (provider/region) the scheduler chose"),
    _placed("host", lambda p: p.get("host"), str, "The host, where the provider names one"),
    _placed("price_per_hour", lambda p: p.get("price_per_hour"), float,
            "The price per hour at the decision, in the federation's currency"),
    _placed("summary", lambda p: p.get("summary"), str,
            "The scheduler's one-line summary: how many candidates, why the others lost"),
    _placed("burst", _burst, str, "The burst policy's verdict"),
), applies=(COMPUTE.type_id,), location="/mixins/broker/placed/")
"""Rendered on every compute the workload service placed; no client sets it (its attributes are immutable)."""

HA = Mixin(METAVMM + "protection#", "ha", "Highly available: restarted elsewhere when its host is lost",
           applies=(COMPUTE.type_id,), location="/mixins/protection/ha/")
"""Chosen at creation or associated later (POST/DELETE on its location); the HA service keeps it on the
compute (services/protection/ha.py, whose HA_CATEGORY is this type id), so REST and the CLI show here too."""

OS_TPL_UPLOAD = Mixin(METAVMM + "image#", "os_tpl_upload",
                      "os_tpl upload (a metavmm extension): PUT a disk's bytes here as application/octet-stream, with "
                      "name, format and sha256 as query parameters; 201 with the new os_tpl",
                      location="/mixins/os_tpl_upload/")
"""Applies to no entity: its location takes a disk (:mod:`metavmm.api.occi.upload`); listed so that a client
can tell a partner that takes images (another metavmm) from one that does not."""

OS_TPL_DOWNLOAD = Mixin(METAVMM + "image#", "os_tpl_download",
                        "os_tpl download (a metavmm extension): GET here with os_tpl=TERM for the disk of an os_tpl "
                        "of your project (a save's), its SHA-256 in Digest", location="/mixins/os_tpl_download/")
"""The other way: the bytes of an os_tpl the caller's project owns (what a ``save`` made), so a partner broker
can move a VM away from this one (:mod:`metavmm.api.occi.upload`)."""

STATIC_MIXINS: tuple[Mixin, ...] = (IPNETWORK, IPNETWORKINTERFACE, OS_TPL, RESOURCE_TPL, SSH_KEY, USER_DATA, SITE,
                                    BROKER, PLACED, HA, OS_TPL_UPLOAD, OS_TPL_DOWNLOAD)
ACTIONS: tuple[Action, ...] = tuple(a for k in KINDS for a in k.actions)
