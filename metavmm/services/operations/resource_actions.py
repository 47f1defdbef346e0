"""Step actions on volumes (OCCI storage, REST storage workloads) and networks (OCCI network, REST network
workloads): ``volume.create``/``delete``/``attach``/``detach``, the same four for ``network``, and
``resource.record``, which writes where one now is.

Volumes and networks differ only in the driver verbs and value objects they use, so one
:class:`Verbs` row per kind drives the same idempotent code: every create first looks for a resource
carrying the workload's tag (a crash between "the provider made it" and "the row recorded it" leaves
nothing unfindable, and the re-run adopts it), every attach of what is attached already is a no-op,
every delete or detach of what is already gone succeeds. A network is what the provider calls one:
a libvirt network (an isolated bridge), an AWS VPC with one subnet.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Provider, Site, Workload
from metavmm.foundation.errors import Conflict, DriverError, NotFound, ProviderNotFound, UnsupportedOperation
from metavmm.foundation.records import Capability, DiskRef, NetworkInfo, NetworkSpec, VolumeInfo, VolumeSpec
from metavmm.services import observer
from metavmm.services.operations.actions import action
from metavmm.services.operations.context import StepContext
from metavmm.services.operations.disk_actions import exported
from metavmm.services.operations.vm_actions import find_vm, require_vm

Resource = VolumeInfo | NetworkInfo


@dataclass(frozen=True, slots=True)
class Verbs:
    """The driver verbs and catalog words of one resource kind."""

    kind: str  # the workload kind: storage | network
    noun: str  # volume | network
    online: str  # the workload's observed state once it exists (OCCI's state vocabulary)

    def list(self, driver: Any) -> Any:
        return getattr(driver, f"list_{self.noun}s")()

    def create(self, driver: Any, spec: Any) -> Any:
        return getattr(driver, f"create_{self.noun}")(spec)

    def delete(self, driver: Any, resource_id: str) -> Any:
        return getattr(driver, f"delete_{self.noun}")(resource_id)

    def attach(self, driver: Any, vm_id: str, resource_id: str, mac: str | None = None) -> Any:
        if self.noun == "network":  # the interface's MAC: asked for, or the one the provider gave it
            return driver.attach_network(vm_id, resource_id, mac=mac)
        return driver.attach_volume(vm_id, resource_id)

    def detach(self, driver: Any, vm_id: str, resource_id: str) -> Any:
        return getattr(driver, f"detach_{self.noun}")(vm_id, resource_id)


VOLUME = Verbs("storage", "volume", "online")
NETWORK = Verbs("network", "network", "active")
BY_KIND = {v.kind: v for v in (VOLUME, NETWORK)}


def resource_id(found: Resource) -> str:
    return found.provider_volume_id if isinstance(found, VolumeInfo) else found.provider_network_id


async def find(ctx: StepContext, verbs: Verbs, provider: str, workload_id: str,
               region: str | None = None) -> Resource | None:
    """The resource carrying ``workload_id``'s tag at ``provider`` (in ``region``, where given: a volume's copy
    to another region of the provider carries the tag too until the copy it left is discarded), or None."""
    matches = [r for r in await verbs.list(ctx.driver(provider))
               if r.workload_id == workload_id and region in (None, r.region)]
    if len(matches) > 1:
        raise DriverError(f"{len(matches)} {verbs.noun}s carry workload {workload_id}; expected one",
                          provider=provider, operation=f"find_{verbs.noun}")
    return matches[0] if matches else None


async def require(ctx: StepContext, verbs: Verbs, provider: str, workload_id: str,
                  region: str | None = None) -> Resource:
    found = await find(ctx, verbs, provider, workload_id, region)
    if found is None:
        raise ProviderNotFound(f"no {verbs.noun} of workload {workload_id}", provider=provider,
                               operation=f"find_{verbs.noun}")
    return found


async def create(ctx: StepContext, verbs: Verbs, provider: str, workload_id: str, spec: Any) -> dict[str, Any]:
    """Create the resource unless one carrying the workload's tag is there already (then adopt it)."""
    existing = await find(ctx, verbs, provider, workload_id)
    if existing is not None:
        await ctx.log(f"adopting {verbs.noun} {resource_id(existing)}, created by an earlier attempt")
        return {f"{verbs.noun}_id": resource_id(existing)}
    made = await verbs.create(ctx.driver(provider), spec)
    await ctx.log(f"created {verbs.noun} {resource_id(made)} at {provider}/{spec.region}")
    return {f"{verbs.noun}_id": resource_id(made)}


async def delete(ctx: StepContext, verbs: Verbs, provider: str, workload_id: str) -> None:
    """Delete the workload's resource; nothing there is success, in use is a conflict (not retried)."""
    found = await find(ctx, verbs, provider, workload_id)
    if found is None:
        await ctx.log(f"no {verbs.noun} of the workload at {provider}: nothing to delete")
        return
    try:
        await verbs.delete(ctx.driver(provider), resource_id(found))
    except ProviderNotFound:
        return
    await ctx.log(f"deleted {verbs.noun} {resource_id(found)} at {provider}")


# --- links: a compute and a volume or network at the same provider -------------------------------------


async def _placed(session: Any, workload_id: str) -> tuple[Workload, str | None]:
    row = await session.get(Workload, workload_id)
    if row is None or not row.present:
        raise NotFound(f"workload {workload_id} is gone")
    provider = await session.get(Provider, row.provider_id) if row.provider_id else None
    return row, provider.name if provider and row.provider_resource_id else None


async def link_provider(ctx: StepContext, compute_id: str, target_id: str) -> str | None:
    """The provider both ends of a link are at; None while one of them is not placed yet. Ends at two
    providers or sites are a conflict: a VM attaches only what its own site holds."""
    ends = await _link_site(ctx, compute_id, target_id)
    return ends[0] if ends is not None else None


async def _link_site(ctx: StepContext, compute_id: str, target_id: str) -> tuple[str, str | None] | None:
    """:func:`link_provider`'s provider and the region the catalog places the target in."""
    async with ctx.sessions() as session:
        compute, at = await _placed(session, compute_id)
        target, target_at = await _placed(session, target_id)
    if at is None or target_at is None:
        return None
    if (at, compute.site_id) != (target_at, target.site_id):
        raise Conflict(f"{target.kind} {target.name} is at {target_at} (site {target.site_id}), compute "
                       f"{compute.name} at {at} (site {compute.site_id}): a link stays within one site")
    region = ((target.spec or {}).get("placement") or {}).get("region")
    return at, str(region) if region else None


async def attach(ctx: StepContext, verbs: Verbs, compute_id: str, target_id: str,
                 mac: str | None = None) -> dict[str, Any]:
    ends = await _link_site(ctx, compute_id, target_id)
    if ends is None:
        raise Conflict(f"compute {compute_id} or {verbs.kind} {target_id} is not placed at any provider")
    provider, region = ends
    vm = await require_vm(ctx, provider, compute_id)
    found = await require(ctx, verbs, provider, target_id, region)
    given = await verbs.attach(ctx.driver(provider), vm.provider_vm_id, resource_id(found), mac)
    await ctx.log(f"{verbs.noun} {resource_id(found)} attached to {vm.provider_vm_id} at {provider}")
    return {"attached": resource_id(found), "vm_id": vm.provider_vm_id,
            **({"mac": str(given).lower()} if given else {})}


async def detach(ctx: StepContext, verbs: Verbs, compute_id: str, target_id: str) -> None:
    """Detach; an end that is gone, or a resource that is not attached, leaves nothing to do."""
    try:
        provider = await link_provider(ctx, compute_id, target_id)
    except NotFound as exc:
        await ctx.log(f"nothing to detach: {exc}")
        return
    vm = await find_vm(ctx, provider, compute_id) if provider else None
    found = await find(ctx, verbs, provider, target_id) if provider else None
    if provider is None or vm is None or found is None:
        await ctx.log("nothing to detach: an end is not at the provider")
        return
    try:
        await verbs.detach(ctx.driver(provider), vm.provider_vm_id, resource_id(found))
    except ProviderNotFound:
        await ctx.log(f"{verbs.noun} {resource_id(found)} was not attached")
        return
    await ctx.log(f"{verbs.noun} {resource_id(found)} detached from {vm.provider_vm_id}")


# --- the catalog ---------------------------------------------------------------------------------------


@action("resource.record")
async def record(ctx: StepContext, *, provider: str, workload_id: str, kind: str, **_: Any) -> dict[str, Any]:
    """Write where the volume or network now is (provider, site, provider id) and that it is usable."""
    found = await require(ctx, BY_KIND[kind], provider, workload_id)
    async with session_scope(ctx.sessions) as session:
        await observer.record_resource(session, provider, workload_id, resource_id(found), found.region)
    return {"placed_at": provider}


SPEC: dict[str, Callable[..., Any]] = {}
"""The driver spec of each kind (set by :func:`register`), for a move's create."""


async def _at(ctx: StepContext, verbs: Verbs, where: dict[str, Any], workload_id: str) -> list[Resource]:
    """The workload's resources at one site (a provider of several regions lists them all)."""
    return [r for r in await verbs.list(ctx.driver(where["provider"]))
            if r.workload_id == workload_id and r.region == where["region"]]


async def _move(ctx: StepContext, *, kind: str, workload_id: str, name: str, frm: dict[str, Any],
                to: dict[str, Any], bound: bool, **extra: Any) -> dict[str, Any]:
    """Make the resource at ``to`` (adopting one a crashed attempt made there), delete it at ``frm``
    (deleted first: both carry the workload's tag, and a provider of several regions lists both), and
    record it at ``to``: placed there, bound or (moved back) not."""
    verbs = BY_KIND[kind]
    there = await _at(ctx, verbs, to, workload_id)
    if there:
        found = there[0]
        await ctx.log(f"adopting {verbs.noun} {resource_id(found)} at {to['site']}, made by an earlier attempt")
    else:
        for old in await _at(ctx, verbs, frm, workload_id):
            await verbs.delete(ctx.driver(frm["provider"]), resource_id(old))
            await ctx.log(f"deleted {verbs.noun} {resource_id(old)} at {frm['site']} (never attached, empty)")
        spec = SPEC[kind](workload_id=workload_id, name=name, region=to["region"], **extra)
        found = await verbs.create(ctx.driver(to["provider"]), spec)
        await ctx.log(f"created {verbs.noun} {resource_id(found)} at {to['site']}")
    await _record_at(ctx, workload_id, found, to, bound=bound)
    return {f"{verbs.noun}_id": resource_id(found)}


async def _record_at(ctx: StepContext, workload_id: str, found: Resource, where: dict[str, Any], *,
                     bound: bool = True) -> None:
    """The catalog names ``found`` as the workload's resource, at ``where`` (provider, region, site and what
    else the move's placement carries, such as a volume's price there): placed there, bound or (``bound``
    false) provisionally."""
    async with session_scope(ctx.sessions) as session:
        await place_at(session, where["provider"], workload_id, resource_id(found), where["region"],
                       site=where.get("site"), provisional=not bound, placement=where)


async def place_at(session: Any, provider: str, workload_id: str, found_id: str, region: str, *,
                   site: str | None = None, provisional: bool = False,
                   placement: dict[str, Any] | None = None) -> Workload:
    """Record a volume or network as living at ``provider``/``region`` now (a move, or an HA restart carrying a
    volume): the row and its placement summary follow it, with ``placement``'s keys (a move's destination);
    ``provisional``: not bound to a compute."""
    row = await observer.record_resource(session, provider, workload_id, found_id, region)
    kept = {k: v for k, v in (row.spec.get("placement") or {}).items() if k != "provisional"}
    where = {**(placement or {}), "provider": provider, "region": region, "site": site or kept.get("site")}
    if site is None and row.site_id is not None:
        placed = await session.get(Site, row.site_id)
        where["site"] = placed.name if placed is not None else where["site"]
    row.spec = {**row.spec, "placement": {**kept, **where, **({"provisional": True} if provisional else {})}}
    return row


@action("resource.move")
async def move(ctx: StepContext, *, kind: str, workload_id: str, name: str, source: dict[str, Any],
               dest: dict[str, Any], size_gib: int = 0, cidr: str | None = None, **_: Any) -> dict[str, Any]:
    """Move a volume or network never attached to the site of the compute its first link binds it to."""
    extra = {"size_gib": size_gib} if kind == VOLUME.kind else {"cidr": cidr}
    return await _move(ctx, kind=kind, workload_id=workload_id, name=name, frm=source, to=dest, bound=True, **extra)


@action("resource.move_back")
async def move_back(ctx: StepContext, *, kind: str, workload_id: str, name: str, source: dict[str, Any],
                    dest: dict[str, Any], size_gib: int = 0, cidr: str | None = None, **_: Any) -> None:
    """The link's attach rolled back: the volume or network goes back where it was, not bound again
    (compensation of resource.move)."""
    extra = {"size_gib": size_gib} if kind == VOLUME.kind else {"cidr": cidr}
    await _move(ctx, kind=kind, workload_id=workload_id, name=name, frm=dest, to=source, bound=False, **extra)


# --- an unattached volume's data to another site (its next link's compute is there, issue 23.2) --------------
# flows.volume_copy_steps: depart, export, convert (disk.convert), import, switch; after the link's commit the
# copy left at the source is discarded. Each is idempotent; a rollback from any of them ends in volume.stay.


async def _one_volume(ctx: StepContext, where: dict[str, Any], workload_id: str) -> VolumeInfo | None:
    found = await _at(ctx, VOLUME, where, workload_id)
    if len(found) > 1:
        raise DriverError(f"{len(found)} volumes carry workload {workload_id} at {where['site']}; expected one",
                          provider=where["provider"], operation="find_volume")
    return found[0] if found and isinstance(found[0], VolumeInfo) else None


@action("volume.depart")
async def depart(ctx: StepContext, *, workload_id: str, source: dict[str, Any], dest: dict[str, Any],
                 **_: Any) -> None:
    """The first step of a volume's copy: nothing changes yet (the request already names ``dest`` as its
    site, so no other link is planned at the old one); its undo, ``volume.stay``, puts it back."""
    await ctx.log(f"volume of workload {workload_id} leaves {source['site']} for {dest['site']}")


@action("volume.stay")
async def stay(ctx: StepContext, *, workload_id: str, source: dict[str, Any], **_: Any) -> None:
    """The copy rolled back: the catalog names the volume at ``source`` again (bound there, as it was), and the
    scratch directory goes (compensation of volume.depart)."""
    found = await _one_volume(ctx, source, workload_id)
    if found is None:
        raise ProviderNotFound(f"no volume of workload {workload_id} at {source['site']} to keep",
                               provider=source["provider"], operation="find_volume")
    await _record_at(ctx, workload_id, found, source)
    shutil.rmtree(ctx.work_dir, ignore_errors=True)
    await ctx.log(f"volume {found.provider_volume_id} stays at {source['site']}")


@action("volume.export")
async def export_volume(ctx: StepContext, *, workload_id: str, provider: str, region: str, site: str = "",
                        save_as: str = "exported", **_: Any) -> dict[str, Any]:
    """Copy the unattached volume's data into the operation's scratch directory (the provider refuses one a
    VM still has attached)."""
    found = await _one_volume(ctx, {"provider": provider, "region": region, "site": site}, workload_id)
    if found is None:
        raise ProviderNotFound(f"no volume of workload {workload_id} at {site or provider}", provider=provider,
                               operation="find_volume")
    driver = ctx.driver(provider)
    export = getattr(driver, "ex_export_volume", None)
    if export is None or Capability.VOLUME_COPY not in driver.capabilities:
        raise UnsupportedOperation(f"{provider} ({driver.kind}) cannot copy a volume out")
    return {save_as: await exported(ctx, export, found.provider_volume_id, "volume_export")}


@action("volume.import")
async def import_volume(ctx: StepContext, *, workload_id: str, provider: str, region: str, name: str,
                        size_gib: int, site: str = "", source: str = "converted", **_: Any) -> dict[str, Any]:
    """Make the volume anew at ``provider``/``region`` holding the disk in ``outputs[source]``. A volume of the
    workload found there is an earlier attempt's, perhaps half written: deleted, and the import starts over."""
    driver = ctx.driver(provider)
    if Capability.VOLUME_COPY not in driver.capabilities:
        raise UnsupportedOperation(f"{provider} ({driver.kind}) cannot copy a volume in")
    where = {"provider": provider, "region": region, "site": site}
    await discard_volume(ctx, workload_id=workload_id, **where)
    disk = DiskRef(**ctx.outputs[source])
    started = time.perf_counter()
    made: VolumeInfo = await driver.ex_import_volume(  # type: ignore[attr-defined]
        disk, VolumeSpec(name=name, region=region, size_gib=size_gib, workload_id=workload_id))
    await ctx.moved(Path(disk.path).stat().st_size, time.perf_counter() - started)
    await ctx.log(f"imported as volume {made.provider_volume_id} at {site or provider}")
    return {"volume_id": made.provider_volume_id}


@action("volume.switch")
async def switch(ctx: StepContext, *, workload_id: str, dest: dict[str, Any], **_: Any) -> None:
    """The catalog names the copy at ``dest`` as the volume (the attach that follows finds it there)."""
    found = await _one_volume(ctx, dest, workload_id)
    if found is None:
        raise ProviderNotFound(f"no volume of workload {workload_id} at {dest['site']}", provider=dest["provider"],
                               operation="find_volume")
    await _record_at(ctx, workload_id, found, dest)
    await ctx.log(f"volume {found.provider_volume_id} is the workload's at {dest['site']}")


@action("volume.discard")
async def discard_volume(ctx: StepContext, *, workload_id: str, provider: str, region: str, site: str = "",
                         **_: Any) -> None:
    """Delete the workload's volume at ``provider``/``region`` only (a provider of several regions may hold
    the other copy too): the copy an import made (its undo) or the one a finished copy left behind."""
    for old in await _at(ctx, VOLUME, {"provider": provider, "region": region}, workload_id):
        try:
            await VOLUME.delete(ctx.driver(provider), resource_id(old))
        except ProviderNotFound:
            continue
        await ctx.log(f"deleted volume {resource_id(old)} at {site or provider}/{region}")


def register(verbs: Verbs, spec: Callable[..., Any]) -> None:
    """Register ``<noun>.create``/``delete``/``attach``/``detach`` for one kind; ``spec`` builds the driver's
    spec from the create step's arguments (name, region, size_gib or cidr, zone) and the workload id."""
    noun = verbs.noun
    SPEC[verbs.kind] = spec

    async def create_it(ctx: StepContext, *, provider: str, workload_id: str, **args: Any) -> dict[str, Any]:
        return await create(ctx, verbs, provider, workload_id, spec(workload_id=workload_id, **args))

    async def delete_it(ctx: StepContext, *, provider: str, workload_id: str, **_: Any) -> None:
        await delete(ctx, verbs, provider, workload_id)

    async def attach_it(ctx: StepContext, *, compute_id: str, target_id: str, mac: str | None = None,
                        **_: Any) -> dict[str, Any]:
        return await attach(ctx, verbs, compute_id, target_id, mac)

    async def detach_it(ctx: StepContext, *, compute_id: str, target_id: str, **_: Any) -> None:
        await detach(ctx, verbs, compute_id, target_id)

    docs = {create_it: f"Create the workload's {noun} unless one carrying its tag is there already (adopt it).",
            delete_it: f"Delete the workload's {noun}; nothing there is success, still in use is a conflict.",
            attach_it: f"Attach the {noun} to the compute's VM (attached already: done).",
            detach_it: f"Detach the {noun} from the VM (compensation of {noun}.attach; not attached: done)."}
    for fn, doc in docs.items():
        fn.__doc__ = doc
        action(f"{noun}.{fn.__name__.removesuffix('_it')}")(fn)


register(VOLUME, VolumeSpec)
register(NETWORK, NetworkSpec)


# --- DHCP reservations: a class seat's address and host name on its network -----------------------------


@action("network.reserve")
async def reserve(ctx: StepContext, *, compute_id: str, target_id: str, mac: str, ip: str, hostname: str,
                  **_: Any) -> dict[str, Any]:
    """Reserve ``ip`` and ``hostname`` for the interface ``mac`` in the network's DHCP (before the interface
    is attached, so its first lease is the reserved one). A provider without DHCP reservations leaves the
    address to the guest's cloud-init."""
    provider = await link_provider(ctx, compute_id, target_id)
    if provider is None:
        raise Conflict(f"compute {compute_id} or network {target_id} is not placed at any provider")
    driver = ctx.driver(provider)
    if Capability.DHCP_HOSTS not in driver.capabilities:
        await ctx.log(f"{provider} keeps no DHCP reservations: {ip} is set by the guest")
        return {}
    found = await require(ctx, NETWORK, provider, target_id)
    await driver.ex_reserve_address(resource_id(found), mac, ip, hostname)
    await ctx.log(f"reserved {ip} ({hostname}) for {mac} on network {resource_id(found)}")
    return {"reserved": {"network": resource_id(found), "mac": mac, "ip": ip}}


@action("network.release")
async def release(ctx: StepContext, *, target_id: str, mac: str, **_: Any) -> None:
    """Remove the DHCP reservation of ``mac`` from the network (compensation of network.reserve, and a step
    of the seat's detach and delete); a network that is gone, or keeps none, leaves nothing to do."""
    async with ctx.sessions() as session:
        try:
            _, provider = await _placed(session, target_id)
        except NotFound:
            provider = None
    driver = ctx.driver(provider) if provider else None
    found = await find(ctx, NETWORK, provider, target_id) if driver is not None else None
    if driver is None or found is None or Capability.DHCP_HOSTS not in driver.capabilities:
        await ctx.log(f"no DHCP reservation of {mac} to remove")
        return
    await driver.ex_release_address(resource_id(found), mac)
    await ctx.log(f"released the DHCP reservation of {mac} on network {resource_id(found)}")
