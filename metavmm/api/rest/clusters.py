"""Clusters: a class of identical computes (seats) in one request; thin handlers over the cluster service,
which creates every seat through the one workload service (see metavmm/services/clusters.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from metavmm.api.keys import identity_of
from metavmm.api.rest.common import UUID_PATTERN, OutModel, Timestamp, id_model
from metavmm.api.rest.framework import RestModule
from metavmm.api.rest.workloads import OperationOut, workloads
from metavmm.services.clusters import (
    MAX_SEATS,
    PASSWORD_MAX,
    ClusterRequest,
    ClusterService,
    ClusterView,
    Seat,
    public_template,
    seat_site,
)
from metavmm.services.workloads.requests import SSH_KEY_MAX, USER_DATA_MAX
from metavmm.translators.cloudinit import SHA512_CRYPT

PASSWORD_DOC = ("the image's default user's password on every seat (a roster line: that seat's); hashed at once "
                "(SHA-512 crypt), only the hash is kept and given to cloud-init")
HASH_DOC = "or the password as a SHA-512 crypt hash ($6$salt$..., openssl passwd -6)"

api = RestModule("clusters", "Virtual clusters: a class of identical computes created, scaled and deleted at once")


class RosterLine(BaseModel):
    model_config = ConfigDict(extra="forbid")
    owner: str = Field(default="", max_length=255, description="who sits at the seat (a student's name)")
    ssh_key: str | None = Field(default=None, min_length=1, max_length=SSH_KEY_MAX)
    user_data: str | None = Field(default=None, min_length=1, max_length=USER_DATA_MAX)
    password: str | None = Field(default=None, min_length=1, max_length=PASSWORD_MAX, description=PASSWORD_DOC)
    password_hash: str | None = Field(default=None, pattern=SHA512_CRYPT.pattern, description=HASH_DOC)


class ClusterCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=40, description="lower-case letters, digits, inner hyphens")
    seats: int = Field(ge=1, le=MAX_SEATS)
    image_id: str | None = Field(default=None, min_length=1, max_length=300,
                                 description="a marketplace image: its id, name or publisher/name")
    flavor: str | None = Field(default=None, min_length=1, max_length=128)
    vcpus: int | None = Field(default=None, ge=1, le=4096)
    ram_mib: int | None = Field(default=None, ge=1, le=64 * 1024 * 1024)
    disk_gib: int = Field(default=0, ge=0, le=1_000_000)
    gpu_model: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,48}$")
    gpu_count: int = Field(default=0, ge=0, le=64)
    network_id: str | None = Field(default=None, pattern=UUID_PATTERN, description="an existing network workload")
    cidr: str | None = Field(default=None, max_length=18,
                             description="or a new network with this range (at each site of a class over several)")
    first_address: int = Field(default=10, ge=2, le=2**24, description="the host number of seat 1's address")
    hostname_pattern: str = Field(default="{cluster}-{n:02d}", min_length=1, max_length=63,
                                  description="{n}: the seat's serial (formats like {n:02d}), {cluster}: the name")
    ssh_key: str | None = Field(default=None, min_length=1, max_length=SSH_KEY_MAX)
    user_data: str | None = Field(default=None, min_length=1, max_length=USER_DATA_MAX)
    password: str | None = Field(default=None, min_length=1, max_length=PASSWORD_MAX, description=PASSWORD_DOC)
    password_hash: str | None = Field(default=None, pattern=SHA512_CRYPT.pattern, description=HASH_DOC)
    roster: list[RosterLine] = Field(default_factory=list, max_length=MAX_SEATS,
                                     description="per seat, in serial order: owner, SSH key, user data")
    strategy: Literal["spread", "pack"] = "spread"
    site: str | None = Field(default=None, min_length=1, max_length=160)
    sites: list[Annotated[str, Field(min_length=1, max_length=160)]] = Field(
        default_factory=list, max_length=64, description="a class over several sites (names or regions; with a cidr, "
        "a network with that range at each site it uses): the batch placement chooses among them")
    max_per_site: int | None = Field(default=None, ge=1, le=MAX_SEATS,
                                     description="at most so many seats at one site (spreads the class over sites)")
    cidrs: dict[Annotated[str, Field(min_length=1, max_length=160)], Annotated[str, Field(max_length=18)]] = Field(
        default_factory=dict, max_length=64, description="a class over several sites: a range per site (a name or "
        "region of sites -> cidr) for the network the class makes there; sites left out take cidr")
    expires_at: datetime | None = Field(default=None, description="the class is deleted then")
    project_id: int | None = Field(default=None, ge=1, le=2**31 - 1, description="admins only: another project")


class ClusterScale(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seats: int = Field(ge=1, le=MAX_SEATS)


class SeatOut(BaseModel):
    serial: int
    hostname: str
    address: str | None
    mac: str
    owner: str
    workload_id: str
    state: str = Field(description="the seat's observed state (pending, running, ...)")
    state_message: str | None
    site: str | None = Field(default=None, description="the site the seat is at")
    operation: OperationOut | None = Field(description="the latest operation on the seat, with its progress")


class SiteOut(BaseModel):
    site: str = Field(description="a site the class uses")
    network_id: str | None = Field(description="the class network at the site (null: the class has none)")
    cidr: str | None = Field(description="that network's address range: the seats there take their addresses "
                                         "from it")
    seats: list[int] = Field(description="the serials of the seats at the site")


class ClusterOut(OutModel):
    id: str
    project_id: int
    name: str
    site: str | None
    network_id: str | None
    expires_at: Timestamp | None
    template: dict[str, Any]
    seats: list[SeatOut]
    sites: list[SiteOut] = Field(default_factory=list, description="each site of the class: its network, address "
                                                                   "range and seats (a class over several sites "
                                                                   "has a network and range at each)")
    running: int
    created_at: Timestamp
    operations: list[OperationOut] = Field(default_factory=list, description="what this request started")


ClusterId = id_model("ClusterId", "cluster_id", uuid=True)


class SeatParams(BaseModel):
    cluster_id: str = Field(pattern=UUID_PATTERN)
    serial: int = Field(ge=1, le=MAX_SEATS)


def clusters(request: web.Request) -> ClusterService:
    return ClusterService(workloads(request))


def render(view: ClusterView) -> ClusterOut:
    c = view.cluster
    seats = [SeatOut(serial=s.serial, hostname=s.hostname, address=s.address, mac=s.mac, owner=s.owner,
                     workload_id=s.workload.id, state=s.workload.observed_state,
                     state_message=s.workload.state_message, site=seat_site(s.workload),
                     operation=OperationOut.model_validate(s.operation) if s.operation else None) for s in view.seats]
    sites = [SiteOut(site=r.site, network_id=r.network_id, cidr=r.cidr, seats=list(r.serials)) for r in view.sites]
    return ClusterOut(id=c.id, project_id=c.project_id, name=c.name, site=c.site, network_id=c.network_id,
                      expires_at=c.expires_at, template=public_template(c.template), seats=seats, sites=sites,
                      running=view.running, created_at=c.created_at,
                      operations=[OperationOut.model_validate(op) for op in view.operations])


def request_of(body: ClusterCreate) -> ClusterRequest:
    return ClusterRequest(
        name=body.name, seats=body.seats, image=body.image_id, flavor=body.flavor, vcpus=body.vcpus,
        ram_mib=body.ram_mib, disk_gib=body.disk_gib, gpu_model=body.gpu_model, gpu_count=body.gpu_count,
        network_id=body.network_id, cidr=body.cidr, first_address=body.first_address,
        hostname_pattern=body.hostname_pattern, ssh_key=body.ssh_key, user_data=body.user_data,
        password=body.password, password_hash=body.password_hash,
        roster=tuple(Seat(r.owner, r.ssh_key, r.user_data, r.password, r.password_hash) for r in body.roster),
        strategy=body.strategy, site=body.site, sites=tuple(body.sites), max_per_site=body.max_per_site,
        cidrs=dict(body.cidrs), expires_at=body.expires_at, project_id=body.project_id)


@api.route("GET", "/clusters", summary="List your project's clusters with each seat's state",
           response=list[ClusterOut])
async def list_clusters(request: web.Request) -> list[ClusterOut]:
    return [render(v) for v in await clusters(request).list_clusters(identity_of(request))]


@api.route("POST", "/clusters", summary="Create a class of seats in one request: the class's quota is checked "
           "at once, the batch placement picks its site, every seat is created and started", body=ClusterCreate,
           response=ClusterOut, status=202, idempotency=True)
async def create_cluster(request: web.Request, body: ClusterCreate) -> ClusterOut:
    return render(await clusters(request).create(identity_of(request), request_of(body),
                                                 idempotency_key=request.headers.get("Idempotency-Key")))


@api.route("GET", "/clusters/{cluster_id}", summary="Show a cluster: each seat's state and progress",
           params=ClusterId, response=ClusterOut)
async def get_cluster(request: web.Request, params: Any) -> ClusterOut:
    return render(await clusters(request).get(identity_of(request), params.cluster_id))


@api.route("DELETE", "/clusters/{cluster_id}", summary="Delete every seat (and the network the cluster made)",
           params=ClusterId, response=list[OperationOut], status=202)
async def delete_cluster(request: web.Request, params: Any) -> list[OperationOut]:
    ops = await clusters(request).delete(identity_of(request), params.cluster_id)
    return [OperationOut.model_validate(op) for op in ops]


@api.route("POST", "/clusters/{cluster_id}/scale", summary="Add or remove seats; the others keep their names, "
           "addresses and MACs", params=ClusterId, body=ClusterScale, response=ClusterOut, status=202, idempotency=True)
async def scale_cluster(request: web.Request, params: Any, body: ClusterScale) -> ClusterOut:
    return render(await clusters(request).scale(identity_of(request), params.cluster_id, body.seats,
                                                idempotency_key=request.headers.get("Idempotency-Key")))


@api.route("POST", "/clusters/{cluster_id}/seats/{serial}/reset", summary="Reset one seat to its base image",
           params=SeatParams, response=OperationOut, status=202)
async def reset_seat(request: web.Request, params: SeatParams) -> OperationOut:
    return OperationOut.model_validate(await clusters(request).reset_seat(identity_of(request), params.cluster_id,
                                                                          params.serial))
