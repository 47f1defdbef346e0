"""Launching a marketplace image: one workload create, through the workload service like every other.

The request names the image (id, name or ``publisher/name``: the resource the URL names), a shape (a
flavor, or vcpus and ram_mib, and GPUs), optionally a site, and the rest of a compute create's fields (an
SSH key, user data, placement groups: :mod:`metavmm.services.workloads.fields`, declared once for both),
and becomes a :class:`~metavmm.services.workloads.requests.CreateRequest`. The service then does what it does for
``POST /workloads``: scope, the marketplace visibility rule for the project that will own the VM, expiry
and the image's minimum shape, idempotency, quota, placement by the scheduler, and the workload and its
operation written in one transaction. The answer is that operation (202), which replicates the image
when the chosen site has no bootable replica, creates the VM, waits and records.

There is no site rule here: the scheduler's movement cost already prefers a site holding a replica (no
transfer, no egress: :class:`~metavmm.scheduler.costs.movement.MovementCost`) and weighs that against
price, capacity, architecture and policies, so a full replica site means a copy elsewhere rather than a
refusal. A site the caller names is a constraint, as in any create.

:func:`replicate` (``marketplace replicate``) copies an image to a named site without a VM.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import select

from metavmm.catalog.models import ImageReplica, Operation, WorkloadKind
from metavmm.scheduler.plan import Step
from metavmm.services.identity import Identity
from metavmm.services.marketplace.entries import Audience, audience_for, get_image, refuse_expired
from metavmm.services.marketplace.replication import resolve_site
from metavmm.services.operations.engine import Engine
from metavmm.services.workloads.fields import (
    AffinityGroup,
    AntiAffinityGroup,
    GpuCount,
    GpuModel,
    Residency,
    SshKey,
    UserData,
)
from metavmm.services.workloads.requests import Accepted, CreateRequest
from metavmm.services.workloads.service import WorkloadService
from metavmm.services.workloads.site_choices import SiteChoices

DEFAULT_VCPUS = 1
DEFAULT_RAM_MIB = 512


class LaunchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=255, description="the workload's name: any text without control "
                      "characters")
    project_id: int | None = Field(default=None, ge=1, le=2**31 - 1, description="admins only: another project")
    site: str | None = Field(default=None, min_length=1, max_length=160,
                             description="pin to a site; default: where the scheduler places it (a site already "
                                         "holding a replica costs no copy)")
    flavor: str | None = Field(default=None, min_length=1, max_length=128, description="a flavor name (its "
                               "size wins over vcpus and ram_mib)")
    vcpus: int | None = Field(default=None, ge=1, le=4096, description=f"default {DEFAULT_VCPUS} without a flavor")
    ram_mib: int | None = Field(default=None, ge=1, le=64 * 1024 * 1024,
                                description=f"default {DEFAULT_RAM_MIB} without a flavor")
    disk_gib: int = Field(default=0, ge=0, le=1_000_000, description="0: the image's own size")
    gpu_model: GpuModel = None
    gpu_count: GpuCount = 0
    ssh_key: SshKey = None
    user_data: UserData = None
    affinity_group: AffinityGroup = None
    anti_affinity_group: AntiAffinityGroup = None
    residency: Residency

    def request(self, image_ref: str) -> CreateRequest:
        """The workload create this launch is: every field ``POST /workloads`` takes for a compute."""
        sized = self.flavor is None
        return CreateRequest(kind=WorkloadKind.COMPUTE, name=self.name, project_id=self.project_id,
                             flavor=self.flavor, image=image_ref, site=self.site, disk_gib=self.disk_gib,
                             vcpus=self.vcpus or (DEFAULT_VCPUS if sized else None),
                             ram_mib=self.ram_mib or (DEFAULT_RAM_MIB if sized else None),
                             gpu_model=self.gpu_model, gpu_count=self.gpu_count, ssh_key=self.ssh_key,
                             user_data=self.user_data, affinity_group=self.affinity_group,
                             anti_affinity_group=self.anti_affinity_group, residency=tuple(self.residency))


async def launch(service: WorkloadService, caller: Identity, image_ref: str, req: LaunchIn, *,
                 idempotency_key: str | None = None) -> Accepted:
    """Ask the workload service for a compute booted from ``image_ref``; the answer is its operation.

    The image is looked up for the caller first, so one they may not see is a NotFound (404: it is the
    resource the launch URL names) rather than the 400 a bad ``image_id`` field of a create gets. The
    reference goes to the service as the caller wrote it, so a replay with the same Idempotency-Key
    matches even after a newer version of a named image was published.
    """
    await _visible(service, caller, image_ref)
    return await service.create(caller, req.request(image_ref), idempotency_key=idempotency_key)


async def _visible(service: WorkloadService, caller: Identity, image_ref: str) -> None:
    async with service.sessions() as session:
        await get_image(session, image_ref, await audience_for(session, caller))


async def launch_sites(service: WorkloadService, caller: Identity, image_ref: str, req: LaunchIn) -> SiteChoices:
    """Where a launch of ``image_ref`` in this shape could be placed if it named its site, with prices
    (:meth:`WorkloadService.site_choices`); an image the caller may not see is a NotFound, as for :func:`launch`."""
    await _visible(service, caller, image_ref)
    return await service.site_choices(caller, req.request(image_ref))


@dataclass(frozen=True)
class Replicated:
    operation: Operation
    replica: ImageReplica
    reused: bool
    notes: list[str]
    seconds: float

    @property
    def mib_per_s(self) -> float:
        return self.replica.size_bytes / 2**20 / self.seconds if self.seconds > 0 and not self.reused else 0.0


async def submit_replicate(engine: Engine, image_ref: str, site_name: str, *, audience: Audience,
                           project_id: int | None = None) -> Operation:
    """The one-step engine operation that copies an image to a site (or reuses its replica), of
    ``project_id`` (the caller's, so they can follow it); refused before anything is written when the
    image is not the caller's to see, expired, or the site unknown."""
    async with engine.sessions() as session:
        image = await get_image(session, image_ref, audience)
        refuse_expired(image)
        await resolve_site(session, engine.config, site_name)  # a clear NotFound before anything is written
    return await engine.submit(kind="replicate", steps=[Step("replicate", "image.replicate",
                                                             {"image_id": image.id, "site": site_name})],
                               target_id=image.id, project_id=project_id, params={"site": site_name})


async def replicate(engine: Engine, image_ref: str, site_name: str, *, audience: Audience,
                    project_id: int | None = None, timeout_s: float = 3600) -> Replicated:
    """:func:`submit_replicate`, then wait for it (REST's replicate answers with the replica)."""
    started = time.perf_counter()
    op = await submit_replicate(engine, image_ref, site_name, audience=audience, project_id=project_id)
    image_id = op.target_id
    done = await engine.wait(op.id, timeout_s=timeout_s)
    async with engine.sessions() as session:
        replica = (await session.exec(select(ImageReplica).where(
            ImageReplica.image_id == image_id,
            ImageReplica.provider_image_id == done.outputs["replica_image"]))).one()
    return Replicated(done, replica, bool(done.outputs["replica_reused"]), list(done.outputs.get("replica_notes", [])),
                      time.perf_counter() - started)
