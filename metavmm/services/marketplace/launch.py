"""Launching a marketplace image anywhere in one request: choose a site, replicate, create the VM.

The request names the image (id, name or ``publisher/name``), a shape and optionally a site. Without a
site, the choice is plain and explained: sites whose provider can create VMs and whose hosts have the
image's architecture qualify; one that already holds a replica wins (no copy), then the first by name.
The full scheduler (prices, capacity, policies) places ordinary workloads; this rule only picks where
an image is cheapest to start. The launch's steps are the create plan every compute gets
(:meth:`~metavmm.services.placement.Placer.plan_at`: replicate, or boot a replica there, or fetch and
virt-v2v an image of another hypervisor; create, wait, record), run as an engine operation, and the
VM is a workload of the caller's project, so every other view sees it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pydantic import BaseModel, Field
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.models import Host, Image, ImageReplica, Operation, Provider, Site, Workload
from metavmm.foundation.errors import Conflict, NoPlacement, ValidationError
from metavmm.foundation.kinds import KINDS
from metavmm.scheduler.plan import Step
from metavmm.scheduler.request import ImageRef, PlacementRequest
from metavmm.services.marketplace.entries import Audience, get_image, state_of
from metavmm.services.marketplace.replication import resolve_site
from metavmm.services.operations.engine import Engine
from metavmm.services.placement import Placer


class LaunchIn(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$", description="the VM's name")
    site: str | None = Field(default=None, description="default: a site that already holds the image")
    vcpus: int = Field(default=1, ge=1, le=1024)
    ram_mib: int = Field(default=512, ge=64)
    disk_gib: int = Field(default=0, ge=0, description="0: the image's own size")
    project_id: int | None = None


class LaunchOut(BaseModel):
    workload_id: str
    operation_id: str
    image_id: str
    site: str
    provider_vm_id: str
    state: str
    replica: str
    replica_reused: bool
    replica_format: str
    seconds: float
    notes: list[str] = Field(default_factory=list)


def refuse_expired(image: Image) -> None:
    """Before anything is written: an expired image is a 409, not a failed operation."""
    if state_of(image) == "expired":
        raise Conflict(f"image {image.name} v{image.version} expired: it can no longer be replicated")


def check_shape(image: Image, req: LaunchIn) -> None:
    short = []
    if req.vcpus < image.min_vcpus:
        short.append(f"{image.min_vcpus} vCPUs (asked {req.vcpus})")
    if req.ram_mib < image.min_ram_mib:
        short.append(f"{image.min_ram_mib} MiB RAM (asked {req.ram_mib})")
    if req.disk_gib and req.disk_gib < image.min_disk_gib:
        short.append(f"{image.min_disk_gib} GiB disk (asked {req.disk_gib})")
    if short:
        raise ValidationError(f"image {image.name} v{image.version} needs at least " + ", ".join(short))


async def choose_site(session: AsyncSession, image: Image, enabled: set[str]) -> str:
    """A site for ``image``, or NoPlacement with each site's reason."""
    rows = (await session.exec(select(Site, Provider).join(Provider, Site.provider_id == Provider.id)
                               .where(Site.present.is_(True)))).all()  # type: ignore[attr-defined]
    with_replica = set((await session.exec(select(ImageReplica.site_id).where(
        ImageReplica.image_id == image.id, ImageReplica.state == "available"))).all())
    reasons: dict[str, list[str]] = {}
    fit: list[tuple[bool, str]] = []
    for site, provider in rows:
        archs = set((await session.exec(select(Host.cpu_arch).where(Host.site_id == site.id))).all())
        if provider.kind not in KINDS or not KINDS[provider.kind].runs_vms or provider.simulated:
            reasons[site.name] = [f"{provider.kind} provider cannot run real VMs"]
        elif provider.name not in enabled:
            reasons[site.name] = ["provider not enabled in the federation file"]
        elif archs and image.arch not in archs:
            reasons[site.name] = [f"no {image.arch} host (has {', '.join(sorted(archs))})"]
        else:
            fit.append((site.id not in with_replica, site.name))
    if not fit:
        summary = ", ".join(f"{name}: {'; '.join(why)}" for name, why in sorted(reasons.items())) or "no sites"
        raise NoPlacement(f"no site can launch {image.name}: {summary}", reasons=reasons)
    return min(fit)[1]


async def launch(engine: Engine, image_ref: str, req: LaunchIn, *, audience: Audience,
                 timeout_s: float = 3600) -> LaunchOut:
    """Replicate ``image_ref`` where it will run (or reuse a replica) and start a VM from it.

    Both are steps of one engine operation (``marketplace.launch``: image.replicate, then the provision
    plan), so the launch has progress, retries and crash-safe resume like every change; this call
    waits for it and answers with the VM (OperationFailed names the failed step's error).
    """
    started = time.perf_counter()
    async with engine.sessions() as session:
        image = await get_image(session, image_ref, audience)
        refuse_expired(image)
        check_shape(image, req)
        enabled = {p.name for p in engine.config.providers if p.enabled}
        site_name = req.site or await choose_site(session, image, enabled)
        await resolve_site(session, engine.config, site_name)  # a clear NotFound before anything is written
        workload = Workload(project_id=req.project_id, kind="compute", name=req.name,
                            spec={"image_id": image.id, "vcpus": req.vcpus, "ram_mib": req.ram_mib,
                                  "disk_gib": req.disk_gib, "site": site_name}, observed_state="pending",
                            state_message="launching")
        want = PlacementRequest(req.name, req.vcpus, req.ram_mib, req.disk_gib, image=ImageRef(image.id),
                                workload_id=workload.id)
        steps = await Placer(engine.config).plan_at(session, want, site_name)
    op = await engine.submit(kind="marketplace.launch", steps=steps, target_id=workload.id, rows=[workload],
                             project_id=req.project_id, params={"image_id": image.id, "site": site_name})
    done = await engine.wait(op.id, timeout_s=timeout_s)
    out = done.outputs
    async with engine.sessions() as session:
        placed = await session.get(Workload, workload.id)
        booted = next((s.args.get("image") for s in steps if s.action == "vm.create"), None)
        replica = out.get("replica_image") or out.get("target_image") or booted
        reused = bool(out["replica_reused"]) if "replica_reused" in out else booted is not None
        row = (await session.exec(select(ImageReplica).where(ImageReplica.image_id == image.id,
                                                             ImageReplica.provider_image_id == replica))).first()
    return LaunchOut(workload_id=workload.id, operation_id=op.id, image_id=image.id, site=site_name,
                     provider_vm_id=str(out["vm_id"]), state=placed.observed_state if placed else "unknown",
                     replica=str(replica), replica_reused=reused,
                     replica_format=str(out.get("replica_format") or (row.format if row else "")),
                     seconds=round(time.perf_counter() - started, 3), notes=list(out.get("replica_notes", [])))


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


async def replicate(engine: Engine, image_ref: str, site_name: str, *, audience: Audience,
                    project_id: int | None = None, timeout_s: float = 3600) -> Replicated:
    """Copy an image to a site (or reuse its replica) as a one-step engine operation of ``project_id``
    (the caller's, so they can follow it), and wait for it."""
    started = time.perf_counter()
    async with engine.sessions() as session:
        image = await get_image(session, image_ref, audience)
        refuse_expired(image)
        await resolve_site(session, engine.config, site_name)  # a clear NotFound before anything is written
    op = await engine.submit(kind="replicate", steps=[Step("replicate", "image.replicate",
                                                           {"image_id": image.id, "site": site_name})],
                             target_id=image.id, project_id=project_id, params={"site": site_name})
    done = await engine.wait(op.id, timeout_s=timeout_s)
    async with engine.sessions() as session:
        replica = (await session.exec(select(ImageReplica).where(
            ImageReplica.image_id == image.id,
            ImageReplica.provider_image_id == done.outputs["replica_image"]))).one()
    return Replicated(done, replica, bool(done.outputs["replica_reused"]), list(done.outputs.get("replica_notes", [])),
                      time.perf_counter() - started)
