"""Launching a marketplace image anywhere in one request: choose a site, replicate, create the VM.

The request names the image (id, name or ``publisher/name``), a shape and optionally a site. Without a
site, the choice is plain and explained: sites whose provider can create VMs and whose hosts have the
image's architecture qualify; one that already holds a replica wins (no copy), then the first by name.
The full scheduler (prices, capacity, policies) places ordinary workloads; this rule only picks where
an image is cheapest to start. The launch is written as an operation with its steps and timings, and
the VM as a workload of the caller's project, so every other view sees it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.broker.marketplace.entries import Audience, get_image
from metavmm.broker.marketplace.replication import Replicator
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Host, Image, ImageReplica, Operation, OperationState, Provider, Site, Workload
from metavmm.drivers.base import VmSpec
from metavmm.drivers.registry import create_driver
from metavmm.errors import NoPlacement, ValidationError

LAUNCHABLE_KINDS = {"libvirt", "openstack", "vmware", "aws", "gcp", "azure"}


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
        if provider.kind not in LAUNCHABLE_KINDS or provider.simulated:
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


async def launch(replicator: Replicator, image_ref: str, req: LaunchIn, *, audience: Audience) -> LaunchOut:
    """Replicate ``image_ref`` where it will run (or reuse a replica) and start a VM from it."""
    started = time.perf_counter()
    maker, cfg = replicator.maker, replicator.cfg
    async with maker() as session:
        image = await get_image(session, image_ref, audience)
        check_shape(image, req)
        site_name = req.site or await choose_site(session, image, {p.name for p in cfg.providers if p.enabled})
    steps: list[dict[str, Any]] = [{"step": "replicate", "site": site_name}, {"step": "create_vm"}]
    async with session_scope(maker) as session:
        op = Operation(project_id=req.project_id, kind="marketplace.launch", state=OperationState.RUNNING,
                       steps=steps)
        session.add(op)
    try:
        rep = await replicator.replicate(image.id, site_name, audience=audience)
        steps[0].update(reused=rep.reused, seconds=round(rep.seconds, 3), format=rep.replica.format)
        async with maker() as session:
            target_site = (await session.exec(select(Site).where(Site.name == site_name))).one()
            provider = await session.get(Provider, target_site.provider_id)
        assert provider is not None
        workload = Workload(project_id=req.project_id, kind="compute", name=req.name,
                            spec={"image_id": image.id, "vcpus": req.vcpus, "ram_mib": req.ram_mib,
                                  "disk_gib": req.disk_gib, "site": site_name},
                            provider_id=provider.id, site_id=target_site.id, observed_state="pending")
        spec = VmSpec(name=req.name, region=target_site.region, image=rep.replica.provider_image_id,
                      vcpus=req.vcpus, ram_mib=req.ram_mib, disk_gib=req.disk_gib, workload_id=workload.id)
        driver = create_driver(cfg.provider(provider.name))
        try:
            vm = await driver.create_vm(spec)
        finally:
            await driver.close()
        steps[1].update(provider_vm_id=vm.provider_vm_id, state=vm.state.value)
        workload.provider_resource_id, workload.observed_state = vm.provider_vm_id, vm.state.value
        async with session_scope(maker) as session:
            session.add(workload)
            await session.flush()
            row = await session.get(Operation, op.id)
            assert row is not None
            row.target_id, row.state, row.progress, row.steps = workload.id, OperationState.SUCCEEDED, 1.0, steps
            row.current_step, row.updated_at = len(steps), datetime.now(UTC)
    except Exception as exc:
        async with session_scope(maker) as session:
            row = await session.get(Operation, op.id)
            if row is not None:
                row.state, row.error, row.steps = OperationState.FAILED, str(exc)[:2000], steps
        raise
    return LaunchOut(workload_id=workload.id, operation_id=op.id, image_id=image.id, site=site_name,
                     provider_vm_id=vm.provider_vm_id, state=vm.state.value, replica=rep.replica.provider_image_id,
                     replica_reused=rep.reused, replica_format=rep.replica.format,
                     seconds=round(time.perf_counter() - started, 3), notes=rep.notes)
