"""The catalog's tables: the single source of truth every rendering reads from.

Units live in the column names (``memory_mib``, ``disk_gib``, ``size_bytes``) so nobody has to guess.
Lists and maps that the scheduler reads whole (CPU features, GPUs, capabilities) are JSON columns:
they are small, always read together with their row, and never queried element by element in SQL.
Entities that clients address (workloads, operations, images) have UUID ids; inventory rows that
only the broker addresses have integer ids. Every schema change goes through an Alembic migration
in ``metavmm/catalog/migrations``; a test proves the models and the migrations agree.
"""

from __future__ import annotations

import enum
import functools
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, TypeVar, overload

from pydantic_core import PydanticUndefined
from sqlalchemy import JSON, BigInteger, DateTime, Index, Numeric, UniqueConstraint
from sqlalchemy.orm import configure_mappers
from sqlmodel import Field, SQLModel

from metavmm.catalog.enums import OperationState, Role
from metavmm.foundation.kinds import KINDS


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def aware(ts: datetime) -> datetime: ...
@overload
def aware(ts: None) -> None: ...
def aware(ts: datetime | None) -> datetime | None:
    """SQLite hands timestamps back without their zone; every one the catalog writes is UTC, so say so."""
    return ts if ts is None or ts.tzinfo else ts.replace(tzinfo=UTC)


def new_uuid() -> str:
    return str(uuid.uuid4())


def _ts(**kw: Any) -> Any:
    """A timezone-aware timestamp column (SQLite stores it as text, PostgreSQL as timestamptz)."""
    return Field(default_factory=utcnow, sa_type=DateTime(timezone=True), **kw)


ProviderKind = enum.StrEnum("ProviderKind", {name.upper(): name for name in KINDS})  # type: ignore[misc]
"""The provider kinds of :data:`metavmm.foundation.kinds.KINDS`, as a column and API type."""


class HostState(enum.StrEnum):
    UP = "up"
    DOWN = "down"
    MAINTENANCE = "maintenance"
    GONE = "gone"  # the provider no longer reports it; kept, not deleted


class WorkloadKind(enum.StrEnum):
    COMPUTE = "compute"
    NETWORK = "network"
    STORAGE = "storage"


# --- identity -------------------------------------------------------------------------------------


class Project(SQLModel, table=True):
    __tablename__ = "project"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=128)
    description: str = ""
    created_at: datetime = _ts()


class User(SQLModel, table=True):
    __tablename__ = "user_account"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=128)
    email: str | None = None
    oidc_subject: str | None = Field(default=None, index=True)
    created_at: datetime = _ts()


class Membership(SQLModel, table=True):
    """A user's role in one project (``admin`` is federation-wide and ignores the project)."""

    __tablename__ = "membership"
    __table_args__ = (UniqueConstraint("user_id", "project_id"),)
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user_account.id", index=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    role: str = Field(default=Role.MEMBER)


class Quota(SQLModel, table=True):
    """One limit of one project. ``resource`` is e.g. ``instances``, ``vcpus``, ``ram_mib``,
    ``storage_gib``, ``gpus:H100`` or ``budget_monthly`` (in ``currency``)."""

    __tablename__ = "quota"
    __table_args__ = (UniqueConstraint("project_id", "resource"),)
    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    resource: str = Field(max_length=64)
    limit: Decimal = Field(sa_type=Numeric(18, 4))
    currency: str | None = Field(default=None, max_length=3)


class ApiToken(SQLModel, table=True):
    """A token for scripts and OCCI clients. Only the SHA-256 of the secret is stored: the secret is
    256 random bits, so a fast hash is as strong as a slow one and lookups stay one indexed read."""

    __tablename__ = "api_token"
    id: str = Field(default_factory=new_uuid, primary_key=True, max_length=36)
    name: str = Field(default="", max_length=128)
    prefix: str = Field(max_length=16)  # the first characters of the secret, to recognise it in a list
    secret_sha256: str = Field(unique=True, max_length=64)
    user_id: int = Field(foreign_key="user_account.id", index=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    role: str = Field(max_length=16)  # the most this token may do; capped by the user's membership
    created_at: datetime = _ts()
    expires_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    revoked: bool = False


class ClientCertificate(SQLModel, table=True):
    """An X.509 client certificate subject (RFC 4514 string) mapped to a user in a project."""

    __tablename__ = "client_certificate"
    id: int | None = Field(default=None, primary_key=True)
    subject: str = Field(unique=True, max_length=512)
    user_id: int = Field(foreign_key="user_account.id", index=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    created_at: datetime = _ts()


class UiSession(SQLModel, table=True):
    """A dashboard login: the cookie names it, the catalog keeps it, so it survives a broker restart and
    any broker on the same catalog honours it. Only the SHA-256 of the cookie's random id is stored (a
    leaked table logs nobody in); the API token it was opened with is referred to by id, never kept, and
    the identity is resolved again from the token (or, for OIDC logins, the membership) on every request."""

    __tablename__ = "ui_session"
    id_sha256: str = Field(primary_key=True, max_length=64)
    user_id: int = Field(foreign_key="user_account.id", index=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    token_id: str | None = Field(default=None, foreign_key="api_token.id", index=True, max_length=36)
    role: str = Field(max_length=16)  # the most the session may do (the token's role, or the login's ceiling)
    via: str = Field(max_length=16)  # token or oidc
    csrf: str = Field(max_length=64)  # echoed by every form and POST of this session
    created_at: datetime = _ts()
    expires_at: datetime = Field(sa_type=DateTime(timezone=True), index=True)  # the absolute end
    last_seen_at: datetime = _ts()  # an idle session ends IDLE after this


class QuotaReservation(SQLModel, table=True):
    """Quota use of one workload: ``in_transit`` from the request until the provider confirms it,
    then ``committed``; deleted when the resource is gone. The sum over a project's rows is its use."""

    __tablename__ = "quota_reservation"
    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    workload_id: str | None = Field(default=None, foreign_key="workload.id", index=True)
    operation_id: str | None = Field(default=None, max_length=36)
    resource: str = Field(max_length=64)
    amount: Decimal = Field(sa_type=Numeric(18, 4))
    state: str = Field(default="in_transit", max_length=16)
    created_at: datetime = _ts()


# --- inventory ------------------------------------------------------------------------------------


class Provider(SQLModel, table=True):
    """A virtual machine manager the federation uses. Credentials are stored only as a reference
    (``env:NAME`` or ``file:/path``), never as the secret itself."""

    __tablename__ = "provider"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=128)
    kind: str = Field(index=True, max_length=32)
    endpoint: str | None = None
    credentials_ref: str | None = None
    capabilities: list[str] = Field(default_factory=list, sa_type=JSON)
    on_prem: bool = True
    enabled: bool = True
    simulated: bool = False
    settings: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    synced_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    sync_error: str | None = None
    sync_failures: int = Field(default=0, sa_column_kwargs={"server_default": "0"})  # consecutive, reset by a success
    sync_failed_since: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class ProviderSecret(SQLModel, table=True):
    """Cloud credentials given to the broker through the API, encrypted (Fernet) with the broker's key.
    Never rendered: responses say only whether a provider has credentials."""

    __tablename__ = "provider_secret"
    provider_id: int = Field(foreign_key="provider.id", primary_key=True)
    ciphertext: str
    updated_at: datetime = _ts()


class Site(SQLModel, table=True):
    """A region of a provider (an OpenStack region, an AWS region, a libvirt host group)."""

    __tablename__ = "site"
    __table_args__ = (UniqueConstraint("provider_id", "region"),)
    id: int | None = Field(default=None, primary_key=True)
    provider_id: int = Field(foreign_key="provider.id", index=True)
    name: str = Field(unique=True, index=True, max_length=160)
    region: str = Field(max_length=128)
    country: str | None = Field(default=None, max_length=2)  # ISO 3166, for residency rules
    location: str | None = None
    present: bool = True


class AvailabilityZone(SQLModel, table=True):
    __tablename__ = "availability_zone"
    __table_args__ = (UniqueConstraint("site_id", "name"),)
    id: int | None = Field(default=None, primary_key=True)
    site_id: int = Field(foreign_key="site.id", index=True)
    name: str = Field(max_length=128)
    present: bool = True


class Host(SQLModel, table=True):
    """A hypervisor host. Public clouds do not expose hosts; there a site has none and the
    scheduler works from flavors."""

    __tablename__ = "host"
    __table_args__ = (UniqueConstraint("site_id", "name"),)
    id: int | None = Field(default=None, primary_key=True)
    site_id: int = Field(foreign_key="site.id", index=True)
    zone_id: int | None = Field(default=None, foreign_key="availability_zone.id")
    name: str = Field(max_length=255)
    hypervisor_type: str = Field(max_length=32)  # kvm, qemu, esxi, xen, hyperv, fake
    hypervisor_version: str | None = None
    cpu_arch: str = Field(max_length=32)  # x86_64, aarch64, ...
    cpu_vendor: str | None = None  # Intel, AMD, ARM, ...
    cpu_model: str | None = None  # libvirt/QEMU model name, e.g. Skylake-Server-IBRS
    cpu_features: list[str] = Field(default_factory=list, sa_type=JSON)  # libvirt feature names
    cpu_traits: list[str] = Field(default_factory=list, sa_type=JSON)  # os-traits, HW_CPU_X86_AVX2
    cpu_cores: int = 0
    memory_mib: int = 0
    disk_gib: int = 0
    gpus: dict[str, int] = Field(default_factory=dict, sa_type=JSON)  # {"H100": 8}
    nested_virt: bool = False
    state: str = Field(default=HostState.UP, max_length=16)
    vcpus_used: int = 0
    memory_mib_used: int = 0
    # the storage the host reaches, as its provider names it (a vCenter: the datastores mounted there): where
    # an HA restart inside the provider may put a copy that adopts a disk of a lost host (migration 0045)
    storage: list[str] = Field(default_factory=list, sa_type=JSON)
    updated_at: datetime = _ts()


class Flavor(SQLModel, table=True):
    __tablename__ = "flavor"
    __table_args__ = (UniqueConstraint("provider_id", "site_id", "name"),)
    id: int | None = Field(default=None, primary_key=True)
    provider_id: int = Field(foreign_key="provider.id", index=True)
    site_id: int | None = Field(default=None, foreign_key="site.id", index=True)  # None: every site
    name: str = Field(max_length=128)
    provider_flavor_id: str | None = None
    vcpus: int
    ram_mib: int
    disk_gib: int = 0
    gpu_model: str | None = None
    gpu_count: int = 0
    arch: str | None = Field(default=None, max_length=32)
    present: bool = True
    extra: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


class Image(SQLModel, table=True):
    """A marketplace image: published once, launched anywhere through its replicas."""

    __tablename__ = "image"
    id: str = Field(default_factory=new_uuid, primary_key=True, max_length=36)
    project_id: int | None = Field(default=None, foreign_key="project.id", index=True)
    name: str = Field(index=True, max_length=255)
    publisher: str = ""
    description: str = ""
    os: str | None = None
    os_version: str | None = None
    arch: str = "x86_64"
    hypervisor: str | None = None
    format: str = "qcow2"
    size_bytes: int = Field(default=0, sa_type=BigInteger)  # 64-bit: images pass 2 GiB
    virtual_size_bytes: int = Field(default=0, sa_type=BigInteger)
    sha256: str | None = None
    sha512: str | None = None
    version: str = "1"
    visibility: str = "project"  # public, federation, school, project
    tags: list[str] = Field(default_factory=list, sa_type=JSON)
    created_at: datetime = _ts()
    expires_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    extra: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    # What a person needs to use it: ports the image serves ("22/tcp") and the smallest shape it runs on.
    access_ports: list[str] = Field(default_factory=list, sa_type=JSON)
    min_vcpus: int = 1
    min_ram_mib: int = 0
    min_disk_gib: int = 0
    # Where the published bytes are: a blob-store path, a file path registered in place, or a URL.
    location: str | None = None
    # Versions of one (publisher, name) form a chain; plain ids, not foreign keys, so a chain can be
    # written in one flush and rows can be pruned in any order.
    supersedes_id: str | None = Field(default=None, max_length=36, index=True)
    superseded_by_id: str | None = Field(default=None, max_length=36, index=True)
    image_list_id: int | None = Field(default=None, foreign_key="image_list_subscription.id", index=True)
    updated_at: datetime = _ts()


class School(SQLModel, table=True):
    """A group of projects that share ``school`` images (admin-managed: membership is who sees them)."""

    __tablename__ = "school"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=128)
    description: str = ""
    created_at: datetime = _ts()


class SchoolMember(SQLModel, table=True):
    """One member project of a school (a project may belong to several schools)."""

    __tablename__ = "school_member"
    school_id: int = Field(foreign_key="school.id", primary_key=True)
    project_id: int = Field(foreign_key="project.id", primary_key=True, index=True)
    created_at: datetime = _ts()


class Publisher(SQLModel, table=True):
    """A publisher namespace and the project that owns it (None: the broker's own, e.g. built-in images).
    Only the owner (or an admin) publishes into it, so nobody else can supersede its images."""

    __tablename__ = "publisher"
    name: str = Field(primary_key=True, max_length=255)
    project_id: int | None = Field(default=None, foreign_key="project.id", index=True)
    granted_by: str | None = Field(default=None, max_length=128)  # None: claimed by a first publish
    created_at: datetime = _ts()


class ImageListSubscription(SQLModel, table=True):
    """A signed image list another site publishes, which this site imports after verifying it.

    The endorser's public key is pinned here when subscribing: a list signed by any other key, unsigned,
    altered after signing or past its expiry is refused before a single row is written.
    """

    __tablename__ = "image_list_subscription"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=128)
    url: str  # a file path, file:// or http(s):// URL of the signed list
    identifier: str | None = Field(default=None, max_length=255)  # expected list id; None: pinned on first sync
    endorser: str = Field(default="", max_length=255)
    public_key_pem: str  # the endorser's Ed25519 public key (SubjectPublicKeyInfo PEM)
    key_id: str = Field(max_length=64)  # SHA-256 of the public key, as lists name their signer
    visibility: str = Field(default="federation", max_length=16)  # given to the images it imports
    enabled: bool = True
    last_version: str | None = None
    last_synced_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    last_error: str | None = None
    image_count: int = 0
    list_expires_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))  # of the last good list
    last_success_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    created_at: datetime = _ts()


class ImageReplica(SQLModel, table=True):
    """Where an image already exists, in which format, under which provider id."""

    __tablename__ = "image_replica"
    __table_args__ = (UniqueConstraint("site_id", "provider_image_id"),)
    id: int | None = Field(default=None, primary_key=True)
    image_id: str | None = Field(default=None, foreign_key="image.id", index=True)
    site_id: int = Field(foreign_key="site.id", index=True)
    name: str = ""
    format: str = Field(max_length=16)
    provider_image_id: str = Field(max_length=255)
    size_bytes: int = Field(default=0, sa_type=BigInteger)
    checksum: str | None = None
    state: str = "available"
    present: bool = True
    created_at: datetime = _ts()
    last_used_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class Price(SQLModel, table=True):
    """One price, always with its unit, currency, source and effective date.

    ``unit`` is one of ``hour`` (one instance for an hour), ``vcpu-hour``, ``gib-hour`` (RAM),
    ``gpu-hour`` (component prices, e.g. GCP's per-core and per-GiB SKUs, composed into a shape by
    the comparison), ``gib-month`` (storage) and ``gib-egress``. The shape columns (``vcpus``,
    ``ram_mib``, ``gpu_*``, ``arch``) are set when the source or an instance-type table states the
    shape, so a price is comparable even when its flavor is not in the catalog (an on-prem cloud's
    price list, a public cloud not synced). ``family`` groups component prices (``c2d``);
    ``source_ref`` says where in ``source`` the price was read (``pricing.json:1234``, a SKU id).
    """

    __tablename__ = "price"
    id: int | None = Field(default=None, primary_key=True)
    provider_id: int | None = Field(default=None, foreign_key="provider.id", index=True)
    provider_kind: str = Field(max_length=32)
    region: str = Field(max_length=128)
    flavor_name: str = Field(max_length=128, index=True)
    os: str = Field(default="linux", max_length=32)
    unit: str = Field(default="hour", max_length=32)
    amount: Decimal = Field(sa_type=Numeric(20, 10))  # AWS states 10 decimals, GCP nanos
    currency: str = Field(max_length=3)
    source: str
    effective_date: date
    imported_at: datetime = _ts()
    source_ref: str | None = Field(default=None, max_length=255)
    family: str | None = Field(default=None, max_length=64)
    vcpus: int | None = None
    ram_mib: int | None = None
    gpu_model: str | None = Field(default=None, max_length=32)
    gpu_count: int | None = None
    arch: str | None = Field(default=None, max_length=32)


# --- workloads and operations -----------------------------------------------------------------------


class Workload(SQLModel, table=True):
    """A compute, network or storage resource of a project, wherever it runs."""

    __tablename__ = "workload"
    # a project's workloads in one state: the creates in transit a burst budget counts (migration 0022);
    # a project's collection of a kind in its listing order, covering what OCCI's location listing reads (0038)
    __table_args__ = (Index("ix_workload_project_state", "project_id", "observed_state"),
                      Index("ix_workload_listing", "project_id", "kind", "created_at", "id", "desired_state",
                            "observed_state"))
    id: str = Field(default_factory=new_uuid, primary_key=True, max_length=36)
    project_id: int | None = Field(default=None, foreign_key="project.id", index=True)
    kind: str = Field(max_length=16, index=True)
    name: str = Field(max_length=255)
    spec: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    desired_state: str = Field(default="active", max_length=32)
    observed_state: str = Field(default="unknown", max_length=32)
    state_message: str | None = None
    provider_id: int | None = Field(default=None, foreign_key="provider.id", index=True)
    site_id: int | None = Field(default=None, foreign_key="site.id")
    host_id: int | None = Field(default=None, foreign_key="host.id")
    provider_resource_id: str | None = Field(default=None, max_length=255)
    managed: bool = True  # False: found at a provider, not created through the broker
    present: bool = True  # False: the provider stopped reporting it
    # what the provider reports of its VM's hardware, written by the observer: ``disks`` (locations, a
    # vCenter's datastore paths) and ``macs``; an HA restart inside the provider adopts those (migration 0045)
    hardware: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    version: int = 1
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class WorkloadLink(SQLModel, table=True):
    __tablename__ = "workload_link"
    id: str = Field(default_factory=new_uuid, primary_key=True, max_length=36)
    project_id: int | None = Field(default=None, foreign_key="project.id", index=True)
    kind: str = Field(max_length=32)
    source_id: str = Field(foreign_key="workload.id", index=True)
    target_id: str = Field(foreign_key="workload.id", index=True)
    attributes: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


class Operation(SQLModel, table=True):
    """A change the broker makes: the plan's steps are written before the first one runs."""

    __tablename__ = "operation"
    id: str = Field(default_factory=new_uuid, primary_key=True, max_length=36)
    project_id: int | None = Field(default=None, foreign_key="project.id", index=True)
    kind: str = Field(max_length=32)
    target_id: str | None = Field(default=None, max_length=36, index=True)
    state: str = Field(default=OperationState.PENDING, max_length=16, index=True)
    steps: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    current_step: int = 0
    progress: float = 0.0
    error: str | None = None
    idempotency_key: str | None = Field(default=None, max_length=128, unique=True)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    # the engine's bookkeeping (migration 0002): what was asked, what steps produced, who runs it
    params: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    outputs: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    message: str | None = None  # one line for humans: OCCI's state.message, the CLI's status column
    cancel_requested: bool = False
    owner: str | None = Field(default=None, max_length=128)  # the executor holding the lease
    lease_until: datetime | None = Field(default=None, sa_type=DateTime(timezone=True), index=True)
    not_before: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))  # retry backoff
    started_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    finished_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class AddressLease(SQLModel, table=True):
    """An address of a site's clone network given to a workload by a cold migration.

    Written in the same transaction as the migration's plan; the unique (network, address) pair is
    what stops two concurrent migrations from drawing the same address. A lease is live while its
    operation is active, and after that while its workload is present and carries the address
    (``spec["ip"]``); dead leases are reclaimed by the next draw (see broker/operations/addresses.py).
    """

    __tablename__ = "address_lease"
    __table_args__ = (UniqueConstraint("network", "address"),)
    id: int | None = Field(default=None, primary_key=True)
    network: str = Field(max_length=64)
    address: str = Field(max_length=64)
    workload_id: str = Field(foreign_key="workload.id", index=True, max_length=36)
    operation_id: str = Field(max_length=36)
    created_at: datetime = _ts()


class OperationEvent(SQLModel, table=True):
    """One line of an operation's history (state changes, step starts and ends, retries, logs)."""

    __tablename__ = "operation_event"
    id: int | None = Field(default=None, primary_key=True)
    operation_id: str = Field(foreign_key="operation.id", index=True, max_length=36)
    at: datetime = _ts()
    step: int | None = None
    level: str = Field(default="info", max_length=8)
    message: str


class WorkloadEvent(SQLModel, table=True):
    """A workload's observed state changed by a provider listing alone (drift: stopped, deleted or back behind
    the broker's back), written by the observer in the sync's transaction; its id orders the event stream.

    What an operation changes is told through its own history (:class:`OperationEvent`); this is the rest.
    ``workload_id`` and ``project_id`` carry no foreign key: the line outlives a workload row removed later
    (migration 0040)."""

    __tablename__ = "workload_event"
    id: int | None = Field(default=None, primary_key=True)
    workload_id: str = Field(max_length=36, index=True)
    project_id: int | None = Field(default=None, index=True)
    at: datetime = _ts()
    previous: str = Field(max_length=32)
    state: str = Field(max_length=32)
    message: str | None = None


class LinkSample(SQLModel, table=True):
    """One measured transfer between two providers: ``bytes`` moved from ``source`` to ``target`` (provider
    names; the same name twice: between two hosts or sites of one provider) in ``seconds``, by a finished
    step of ``kind`` (``cold_migrate``, ``live_migrate``, ``dr_replicate``). Federation-wide facts: no
    project, no workload. The newest :data:`metavmm.services.linkrates.HISTORY` per ordered pair are kept
    (migration 0041)."""

    __tablename__ = "link_sample"
    __table_args__ = (Index("ix_link_sample_pair", "source", "target", "id"),)
    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=128)
    target: str = Field(max_length=128)
    kind: str = Field(max_length=32)
    bytes: int = Field(sa_type=BigInteger)
    seconds: float
    measured_at: datetime = _ts()


class OcciMixin(SQLModel, table=True):
    """A user-defined OCCI mixin (a tag a project defines through the OCCI query interface).

    Which entities carry it is recorded in each workload's ``spec["mixins"]`` (type ids), like every
    other mixin, so there is one place that says what an entity is tagged with.
    """

    __tablename__ = "occi_mixin"
    __table_args__ = (UniqueConstraint("project_id", "scheme", "term"), UniqueConstraint("project_id", "location"))
    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    scheme: str = Field(max_length=255)
    term: str = Field(max_length=128)
    title: str = ""
    location: str = Field(max_length=255)
    depends: list[str] = Field(default_factory=list, sa_type=JSON)
    applies: list[str] = Field(default_factory=list, sa_type=JSON)
    created_at: datetime = _ts()


class Cluster(SQLModel, table=True):
    """A class of identical computes (seats) created in one request: its template, its network and expiry.

    The seats are ordinary workloads (the one workload service created them); ``cluster_seat`` says which
    serial, name, address and MAC each holds, so scaling keeps them stable (services/clusters.py).
    """

    __tablename__ = "cluster"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: str = Field(default_factory=new_uuid, primary_key=True, max_length=36)
    project_id: int = Field(foreign_key="project.id", index=True)
    name: str = Field(max_length=63)
    template: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    network_id: str | None = Field(default=None, foreign_key="workload.id", max_length=36)
    site: str | None = Field(default=None, max_length=160)  # where the batch placement put the class
    expires_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True), index=True)
    version: int = 1
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class ClusterSeat(SQLModel, table=True):
    """One seat of a cluster: its serial (``lab-{n:02d}``'s n) and the identity that stays with it."""

    __tablename__ = "cluster_seat"
    __table_args__ = (UniqueConstraint("cluster_id", "serial"), UniqueConstraint("cluster_id", "hostname"),
                      UniqueConstraint("mac"))
    id: int | None = Field(default=None, primary_key=True)
    cluster_id: str = Field(foreign_key="cluster.id", index=True, max_length=36)
    serial: int
    workload_id: str = Field(foreign_key="workload.id", index=True, max_length=36)
    hostname: str = Field(max_length=63)
    address: str | None = Field(default=None, max_length=64)  # CIDR form: 10.20.0.12/24
    mac: str = Field(max_length=17)
    owner: str = Field(default="", max_length=255)  # the roster's name for the seat (a student)


# --- protection: HA restart and disaster-recovery replicas (migration 0010) -------------------------


class Protection(SQLModel, table=True):
    """How a workload is protected: restarted elsewhere when its host is lost (``ha``), and/or replicated
    to another site on an interval (``replica_*``). One row per protected workload; the HA and DR
    services keep ``state``/``message`` so every front end shows the same answer."""

    __tablename__ = "protection"
    workload_id: str = Field(foreign_key="workload.id", primary_key=True, max_length=36)
    project_id: int = Field(foreign_key="project.id", index=True)
    ha: bool = False
    replica_target: str | None = Field(default=None, max_length=160)  # a provider name, or provider/site
    replica_interval_s: int | None = None  # None: no scheduled replication
    replica_retention: int = 3  # recovery points kept at the target
    state: str = Field(default="protected", max_length=32)
    message: str | None = None
    last_replica_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    version: int = 1
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class RecoveryPoint(SQLModel, table=True):
    """A verified copy of a workload's disk at a target site, as of ``taken_at`` (its RPO is now - taken_at).

    ``base_id`` names the recovery point whose data this one is incremental on (an overlay over it), so
    retention never removes a base a kept point still needs."""

    __tablename__ = "recovery_point"
    id: str = Field(default_factory=new_uuid, primary_key=True, max_length=36)
    workload_id: str = Field(foreign_key="workload.id", index=True, max_length=36)
    project_id: int = Field(foreign_key="project.id", index=True)
    provider_id: int = Field(foreign_key="provider.id", index=True)
    site_id: int | None = Field(default=None, foreign_key="site.id")
    location: str = Field(max_length=1024)  # a path, volume or image id at the target
    disk_format: str = Field(default="qcow2", max_length=32)
    base_id: str | None = Field(default=None, max_length=36)
    size_bytes: int = Field(default=0, sa_type=BigInteger)
    sha256: str | None = Field(default=None, max_length=64)
    taken_at: datetime = _ts(index=True)
    state: str = Field(default="complete", max_length=16)
    details: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    created_at: datetime = _ts()



# --- auto-scaling groups (migration 0011) ---------------------------------------------------------------


class AutoscaleGroup(SQLModel, table=True):
    """A group of identical computes whose count follows its rules (services/autoscale/).

    The members are ordinary workloads the one workload service created (``autoscale_member`` says which);
    ``base_desired`` is what the metric rules (or a user) last set, ``desired`` what the group aims at now
    (``base_desired`` raised to an active schedule window's count, clamped to min and max)."""

    __tablename__ = "autoscale_group"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: str = Field(default_factory=new_uuid, primary_key=True, max_length=36)
    project_id: int = Field(foreign_key="project.id", index=True)
    name: str = Field(max_length=63)
    template: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    min_size: int = 0
    max_size: int = 1
    base_desired: int = 0
    desired: int = 0
    rules: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    cooldown_out_s: int = 60
    cooldown_in_s: int = 300
    scale_in_order: str = Field(default="cost", max_length=16)  # cost, newest, oldest
    metrics: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)  # pushed: {name: {value, at}}
    enabled: bool = True
    last_scale_out_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    last_scale_in_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    next_serial: int = 1
    version: int = 1
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class AutoscaleMember(SQLModel, table=True):
    """A workload that belongs to a group (its serial names it: ``web-3``)."""

    __tablename__ = "autoscale_member"
    __table_args__ = (UniqueConstraint("group_id", "serial"),)
    id: int | None = Field(default=None, primary_key=True)
    group_id: str = Field(foreign_key="autoscale_group.id", index=True, max_length=36)
    workload_id: str = Field(foreign_key="workload.id", index=True, unique=True, max_length=36)
    serial: int
    created_at: datetime = _ts()


class AutoscaleDecision(SQLModel, table=True):
    """One scaling decision with its numbers: the rule, the metric and threshold, desired before and after,
    the members chosen or removed and why, the operations it started (its id orders the event stream)."""

    __tablename__ = "autoscale_decision"
    id: int | None = Field(default=None, primary_key=True)
    group_id: str = Field(foreign_key="autoscale_group.id", index=True, max_length=36)
    project_id: int = Field(foreign_key="project.id", index=True)
    at: datetime = _ts(index=True)
    action: str = Field(max_length=16)  # scale-out, scale-in, hold
    trigger: str = Field(max_length=16)  # metric, schedule, bounds, repair, manual
    rule: str | None = Field(default=None, max_length=63)
    metric: str | None = Field(default=None, max_length=63)
    value: float | None = None
    threshold: float | None = None
    desired_before: int = 0
    desired_after: int = 0
    members: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    operations: list[str] = Field(default_factory=list, sa_type=JSON)
    reason: str = ""


# --- rebalance: host load, hysteresis and maintenance (migration 0014) ------------------------------


class HostBalance(SQLModel, table=True):
    """What the rebalance policy knows of a host beyond its inventory: the load last measured (or the
    override an admin set for a drill), whether it runs hot (the hysteresis state, kept between syncs),
    when an automatic move last touched it (the cooldown), and whether an admin drains it (maintenance:
    the host row's ``state`` says ``maintenance`` too, so no placement lands there)."""

    __tablename__ = "host_balance"
    host_id: int = Field(foreign_key="host.id", primary_key=True)
    maintenance: bool = False
    maintenance_reason: str | None = Field(default=None, max_length=500)
    maintenance_since: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    cpu_pct: float | None = None
    mem_pct: float | None = None
    load_source: str | None = Field(default=None, max_length=16)  # measured, allocation, trace
    measured_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    vm_load: dict[str, float] = Field(default_factory=dict, sa_type=JSON)  # provider VM id -> CPU % of the host
    override_cpu_pct: float | None = None  # set by an admin (a drill, a test): read instead of the measure
    override_mem_pct: float | None = None
    hot: bool = False
    hot_since: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    last_move_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    updated_at: datetime = _ts()


# --- spend: what workloads cost as they run (migration 0022) ---------------------------------------


class SpendAccrual(SQLModel, table=True):
    """One stretch of a compute running at one price inside one calendar month (UTC): the ledger that
    showback and the burst budgets read (issue 17, issue 18 item 10).

    Written as workloads run (:mod:`metavmm.catalog.spend`): a state change closes the open stretch and,
    while the workload runs, opens the next; a periodic round brings open stretches up to date and cuts
    them at month boundaries, so a workload running across months counts in each by its hours there.
    ``period_end`` is None while the stretch is open (its ``hours`` and ``amount`` are as of
    ``accrued_at``; readers accrue it to now). Rows are never deleted with their workload (nor with its
    project: ``workload_id`` and ``project_id`` carry no foreign key), so a month's spend stays what it
    was. ``price_source`` says where the price came from (``placement``: the price per hour the scheduler
    chose it at; ``storage``: a stopped compute's disk; ``volume``: a volume's size at its site's storage
    price; ``egress``: a one-off charge for data a move or a replication sent out of a site; ``none``: no
    price was known, the hours count and the amount is 0). ``burst_policy`` names the burst policy that
    sent it to a public cloud (None for work at home). ``gib``: a volume's size, or the GiB a one-off
    charge moved (None for a compute's hours). A one-off charge is a closed row of 0 hours whose amount is
    the charge; ``ref`` names what caused it (an operation's step), so a retried step charges once."""

    __tablename__ = "spend_accrual"
    __table_args__ = (Index("ix_spend_accrual_project_period", "project_id", "period_start"),  # a month's stretches
                      Index("ix_spend_accrual_open", "period_end", "project_id"))  # open ones (period_end NULL)
    id: int | None = Field(default=None, primary_key=True)
    project_id: int | None = None
    workload_id: str = Field(index=True, max_length=36)
    workload_name: str = Field(max_length=255)
    provider: str | None = Field(default=None, max_length=128)
    site: str | None = Field(default=None, max_length=255)
    flavor: str | None = Field(default=None, max_length=128)
    period_start: datetime = Field(sa_type=DateTime(timezone=True))
    period_end: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    hours: Decimal = Field(default=Decimal(0), sa_type=Numeric(20, 10))
    price_per_hour: Decimal | None = Field(default=None, sa_type=Numeric(20, 10))
    currency: str | None = Field(default=None, max_length=3)
    amount: Decimal = Field(default=Decimal(0), sa_type=Numeric(20, 10))
    price_source: str = Field(default="none", max_length=32)
    burst_policy: str | None = Field(default=None, max_length=63)
    gib: Decimal | None = Field(default=None, sa_type=Numeric(20, 10))
    ref: str | None = Field(default=None, max_length=80, index=True)
    accrued_at: datetime = _ts()


ALL_TABLES: tuple[type[SQLModel], ...] = (
    Project, User, Membership, Quota, ApiToken, ClientCertificate, QuotaReservation, Provider, ProviderSecret,
    UiSession, Site, AvailabilityZone, Host, Flavor, Image, ImageReplica, Price, Workload, WorkloadLink, Operation,
    OcciMixin, ImageListSubscription, OperationEvent, WorkloadEvent, Cluster, ClusterSeat, Protection, RecoveryPoint,
    AutoscaleGroup, AutoscaleMember, AutoscaleDecision,
    HostBalance, SpendAccrual,
)


M = TypeVar("M", bound=SQLModel)


# --- rows written without the ORM (issue 16 item 13) ---------------------------------------------------------


@functools.cache
def _defaults(model: type[SQLModel]) -> tuple[tuple[str, Any, Any], ...]:
    return tuple((name, f.default, f.default_factory) for name, f in model.model_fields.items())


def row_values(model: type[SQLModel], **values: Any) -> dict[str, Any]:
    """A new row of ``model``'s table, every column: ``values`` and the model's own defaults (its default
    factories called), for a Core ``INSERT`` of many rows in one statement. The model stays the one
    definition of the table; what this skips is SQLModel's constructor (every field through the ORM's
    instrumented ``setattr``, and each default factory's signature inspected: 0.4 ms for a workload, 0.9
    ms for an operation, on the create path's every request)."""
    out: dict[str, Any] = {}
    for name, default, factory in _defaults(model):
        if name in values:
            out[name] = values[name]
        elif factory is not None:
            out[name] = factory()
        elif default is PydanticUndefined:
            raise TypeError(f"{model.__name__}: {name} is required")
        else:
            out[name] = default
    return out


def detached(model: type[M], values: dict[str, Any]) -> M:
    """An object of ``model`` holding ``values`` (a row written with Core: :func:`row_values`), built without
    the ORM: for reading and rendering only; it belongs to no session and cannot be changed or added."""
    configure_mappers()  # (its attributes read the instance's dict once the mapper is configured)
    return model.model_construct(**values)
