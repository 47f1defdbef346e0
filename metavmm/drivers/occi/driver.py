"""A partner's OCCI 1.2 site as a provider: another metavmm, or any OCCI endpoint.

The partner is one site (``region`` in the federation file) and shows no hosts: the broker works from
its templates, as with a public cloud. Its query interface is the inventory: ``os_tpl`` mixins are the
images (the mixin's type id is the provider image id), ``resource_tpl`` mixins the flavors (named by
their term; cores and memory from the template's attribute defaults, which the JSON rendering carries).
A compute is created with its os_tpl and resource_tpl (and the partner's ``user_data`` and ``ssh_key``
mixins where it offers them); the broker's workload id travels in ``occi.core.summary`` as
``metavmm:workload=ID`` (OCCI has no tags), so a retried create adopts instead of creating twice.

States: ``occi.compute.state`` active/inactive/suspended/error. OCCI has no word for "changing": a
partner metavmm says an operation runs in ``occi.compute.state.message`` ("stop running: ..."), and
such a compute is ``pending`` here, so a wait for ``stopped`` does not end while it is still stopping.
The partner's project scope and quotas apply to the credentials: what it refuses comes back as the
typed error its status means (401/403 AuthError, 403 quota ProviderQuotaExceeded, 404 ProviderNotFound,
409 ProviderConflict, 5xx or no answer ProviderUnavailable), with the partner's message.

Beside OCCI, for a partner that is a metavmm: its prices come from its partner price API on every sync
(``price_api``), and with ``image_upload`` a disk goes to it through its os_tpl upload extension (a PUT
of the bytes with their SHA-256; docs/occi.md), so a cold migration can move a VM there. With
``image_download`` a VM's disk comes back: OCCI's own compute ``save`` makes an os_tpl of it at the partner,
and its os_tpl download extension hands that os_tpl's bytes over with their SHA-256 (checked here as they
arrive), so a cold migration can move a VM away from it.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from metavmm.drivers.base import DriverBase, poll_delays
from metavmm.drivers.occi import wire
from metavmm.drivers.occi.client import OcciClient
from metavmm.foundation.currencies import normalise_currency
from metavmm.foundation.errors import DriverError, ProviderNotFound, UnsupportedOperation, ValidationError
from metavmm.foundation.prices import PriceUnit
from metavmm.foundation.records import (
    OWNER_TAG,
    Capability,
    DiskRef,
    FlavorInfo,
    ImageInfo,
    Inventory,
    NetworkInfo,
    NetworkSpec,
    PriceInfo,
    SiteInfo,
    VmInfo,
    VmSpec,
    VmState,
    VolumeInfo,
    VolumeSpec,
)
from metavmm.translators.digest import sha256_file

OWNER_PREFIX = f"{OWNER_TAG}="
BUSY = re.compile(r"^\w+ (pending|running|rolling_back)\b")
"""A partner metavmm's state message while an operation runs on the entity."""
_SIZE = re.compile(r"(\d+) vCPU, (\d+) MiB")  # a partner metavmm's template title, for text renderings


def owner_of(entity: wire.Entity) -> str | None:
    summary = str(entity.attributes.get("occi.core.summary") or "")
    return summary[len(OWNER_PREFIX):].split()[0] if summary.startswith(OWNER_PREFIX) else None


class OcciDriver(DriverBase):
    kind: ClassVar[str] = "occi"
    capabilities = frozenset({Capability.SUSPEND, Capability.TAGS, Capability.VOLUMES, Capability.NETWORKS,
                              Capability.ATTACH_VOLUME, Capability.ATTACH_NETWORK})
    STATE_MAP: ClassVar[dict[str, VmState]] = {
        "active": VmState.RUNNING,
        "inactive": VmState.STOPPED,
        "suspended": VmState.SUSPENDED,
        "error": VmState.ERROR,
    }

    image_import_formats = frozenset({"qcow2"})  # sent compact; a metavmm partner converts for its own providers
    image_import_target: ClassVar[str | None] = "qcow2"
    upload_timeout_s: ClassVar[float] = 3600.0  # one disk's upload, not one request's answer

    save_timeout_s: ClassVar[float] = 3600.0  # the partner's save of one disk, until its os_tpl is listed
    DISK_FORMATS: ClassVar[frozenset[str]] = frozenset({"qcow2", "raw", "vmdk", "vdi", "vpc", "vhdx"})
    """What a partner's download may name as its disk's format (``X-Metavmm-Image-Format``)."""

    @classmethod
    def capabilities_for(cls, config: Any) -> frozenset[Capability]:
        """A partner configured with ``image_upload`` (a metavmm serving the os_tpl upload extension) takes
        disks, so a cold migration can move a VM to it; one with ``image_download`` (a metavmm serving the
        os_tpl download extension) hands a saved disk out, so a VM can move away from it. Any other OCCI site
        does neither (OCCI 1.2 has no image import nor a disk download)."""
        return cls.capabilities | {c for c, on in ((Capability.IMPORT_IMAGE, config.image_upload),
                                                   (Capability.EXPORT_IMAGE, config.image_download)) if on}

    def __init__(self, config: Any) -> None:
        super().__init__(config.name)
        self.capabilities = self.capabilities_for(config)
        self.region: str = config.region
        self.config = config
        self.client = OcciClient(config, config.name)
        site = next((s for s in config.sites if s.region == self.region), None)
        self._site = SiteInfo(self.region, (), site.country if site else None, site.location if site else None)
        self._templates: list[wire.Category] | None = None

    # --- the query interface ------------------------------------------------------------------------

    async def templates(self, fresh: bool = False) -> list[wire.Category]:
        if self._templates is None or fresh:
            self._templates = await self.client.query()
        return self._templates

    def _flavor(self, cat: wire.Category) -> FlavorInfo | None:
        cores, memory = cat.defaults.get("occi.compute.cores"), cat.defaults.get("occi.compute.memory")
        if cores is None or memory is None:
            sized = _SIZE.search(cat.title)
            if sized is None:
                return None  # a template whose size the partner does not say cannot be placed onto
            cores, ram_mib = int(sized.group(1)), int(sized.group(2))
        else:
            ram_mib = round(float(memory) * 1024)
        return FlavorInfo(name=cat.term, vcpus=int(cores), ram_mib=ram_mib, provider_flavor_id=cat.type_id,
                          extra={"title": cat.title} if cat.title else {})

    async def _flavors(self) -> list[tuple[wire.Category, FlavorInfo]]:
        out = []
        for cat in await self.templates():
            if cat.cls == "mixin" and wire.RESOURCE_TPL in cat.depends and (f := self._flavor(cat)) is not None:
                out.append((cat, f))
        return out

    async def _images(self, fresh: bool = False) -> list[ImageInfo]:
        """The os_tpls. Reported as ``raw``: the partner boots its template as it is, and the scheduler's
        conversion graph knows disk formats only (a raw replica at a kvm site needs no conversion); the
        template itself stays in ``extra``."""
        return [ImageInfo(provider_image_id=c.type_id, name=c.title or c.term, region=self.region, format="raw",
                          extra={"term": c.term, "location": c.location} if c.location else {"term": c.term})
                for c in await self.templates(fresh) if c.cls == "mixin" and wire.OS_TPL in c.depends]

    async def inventory(self) -> Inventory:
        await self.templates(fresh=True)
        flavors = [f for _, f in await self._flavors()]
        return Inventory(sites=(self._site,), flavors=tuple(flavors), images=tuple(await self._images()),
                         vms=tuple(await self.list_vms()), prices=await self.prices({f.name for f in flavors}))

    # --- the partner's prices -----------------------------------------------------------------------

    async def prices(self, templates: set[str]) -> tuple[PriceInfo, ...]:
        """The partner's own prices from its price API (``price_api``; a partner metavmm's
        ``GET api/v1/federation/prices``): an hour price per resource_tpl (of ``templates``, the ones the
        query interface offers), and the per-vCPU, per-GiB, per-GPU, disk and egress prices, each kept
        with the partner's currency, date and source. None when the federation file prices the partner,
        or, with ``auto``, when the partner has no price API (404: not a metavmm)."""
        where = self.config.price_api_location()
        if where is None:
            return ()
        try:
            doc = await self.client.get_json("prices", where)
        except ProviderNotFound:
            if self.config.price_api == "auto":
                return ()
            raise
        try:
            return tuple(p for item in doc["items"] if (p := self._price(item, templates)) is not None)
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise DriverError(f"the partner's price API answered a price that cannot be read: "
                              f"{type(exc).__name__}: {exc}", provider=self.name, operation="prices") from None

    def _price(self, item: dict[str, Any], templates: set[str]) -> PriceInfo | None:
        unit = PriceUnit(item["unit"])
        flavor = str(item["template"] if unit == PriceUnit.HOUR else item["flavor"])
        if unit == PriceUnit.HOUR and flavor not in templates:
            return None  # a price for a template the query interface does not offer cannot be placed onto
        amount = Decimal(str(item["amount"]))
        if not amount.is_finite() or amount < 0:
            raise ValueError(f"amount {item['amount']!r} of {flavor} per {unit}")
        return PriceInfo(flavor=flavor, region=self.region, amount=amount, currency=normalise_currency(
            str(item["currency"])), source=f"price API of partner {self.name}: {item['source']}",
            effective_date=date.fromisoformat(str(item["effective_date"])), unit=str(unit),
            os=str(item.get("os") or "linux"), gpu_model=item.get("gpu_model") if unit == PriceUnit.GPU_HOUR else None)

    async def import_image(self, disk: DiskRef, name: str, region: str) -> ImageInfo:
        """Upload ``disk`` as a new os_tpl through the partner's os_tpl upload extension (a metavmm partner:
        ``PUT`` to the location of its ``os_tpl_upload`` mixin, the SHA-256 sent with it and checked there as
        the bytes arrive); the os_tpl it answers with, read back from the query interface."""
        if Capability.IMPORT_IMAGE not in self.capabilities:
            raise self._unsupported("import_image (OCCI 1.2 has no image import; set image_upload for a "
                                    "metavmm partner)")
        if region != self.region:
            raise ValidationError(f"{self.name}: the partner is one site, {self.region!r}, not {region!r}")
        if disk.format not in self.image_import_formats:
            raise ValidationError(f"{self.name}: the partner takes qcow2 uploads, not {disk.format}")
        upload = next((c for c in await self.templates(fresh=True) if c.type_id == wire.OS_TPL_UPLOAD), None)
        if upload is None or not upload.location:
            raise UnsupportedOperation(f"{self.name} (occi) lists no os_tpl upload ({wire.OS_TPL_UPLOAD}) in its "
                                       "query interface: it is not a metavmm partner that takes disks, so "
                                       "image_upload is wrong for it")
        sha256 = await self.blocking(sha256_file, disk.path)
        where = await self.client.upload("import_image", upload.location, disk.path, {
            "name": name, "format": disk.format, "sha256": sha256,
            "description": f"uploaded by a federation partner's broker ({self.name} there)"},
            timeout_s=self.upload_timeout_s)
        path = urlsplit(where).path
        for image in await self._images(fresh=True):
            if image.extra.get("location") == path:
                return replace(image, checksum=sha256, size_bytes=os.path.getsize(disk.path))
        raise DriverError(f"the partner took the upload as {where} but its query interface does not list it",
                          provider=self.name, operation="import_image")

    # --- a VM's disk, out of the partner: save, then the os_tpl download extension -----------------------

    async def ex_export_check(self, vm_id: str) -> str:
        """Whether a disk can leave the partner, asked before a cold migration stops anything: the partner's
        query interface must offer compute ``save`` and list the os_tpl download extension, and ``vm_id`` must
        be its compute. The extension's location; else UnsupportedOperation saying why."""
        if Capability.EXPORT_IMAGE not in self.capabilities:
            raise self._unsupported("export_disk (OCCI 1.2 has no disk download; set image_download for a "
                                    "metavmm partner)")
        cats = await self.templates(fresh=True)
        save = wire.ACTIONS["compute"] + "save"
        download = next((c for c in cats if c.type_id == wire.OS_TPL_DOWNLOAD and c.location), None)
        lacks = [what for what, there in (("the compute action save", any(c.type_id == save for c in cats)),
                                          (f"the os_tpl download extension ({wire.OS_TPL_DOWNLOAD})", download))
                 if not there]
        if lacks or download is None:
            raise UnsupportedOperation(f"{self.name} (occi) lists no {' and no '.join(lacks)} in its query "
                                       "interface: it is not a metavmm partner that hands out disks, so "
                                       "image_download is wrong for it and no VM's disk can leave it")
        await self.get_vm(vm_id)  # ProviderNotFound: not the partner's compute
        return str(download.location)

    export_to_formats: ClassVar[frozenset[str]] = frozenset({"raw"})
    """What :meth:`ex_export_disk` can write the download as (``to_format``) while it arrives: a cold migration's
    export asks for the format its next step converts to, so that step has nothing left to do."""

    async def ex_export_disk(self, vm_id: str, dest_dir: str, progress: Callable[[int, int], None] | None = None,
                             to_format: str | None = None) -> DiskRef:
        """The stopped compute's disk: OCCI's ``save`` (GFD.184's compute action, the os_tpl named here) makes
        an os_tpl of it at the partner (its own save flow: export, publish in the project of this broker's
        credentials there); once the query interface lists it, the os_tpl download extension hands its bytes
        over, hashed as they arrive and checked against the SHA-256 the partner declares. With ``to_format``
        (one of :attr:`export_to_formats`) they are written as that format on the way: a raw, qcow2 or
        streamOptimized vmdk download is decoded as it arrives (no staged copy, no qemu-img run), any other
        staged and converted (:func:`~metavmm.translators.diskstream.receive`). The saved os_tpl stays at the
        partner, in that project (OCCI removes no os_tpl; the partner's marketplace keeps it)."""
        if to_format is not None and to_format not in self.export_to_formats:
            raise ValidationError(f"{self.name}: a download is written as it comes or as "
                                  f"{', '.join(sorted(self.export_to_formats))}, not {to_format}")
        download = await self.ex_export_check(vm_id)
        await self.wait_for(vm_id, VmState.STOPPED, timeout_s=300)  # a stop the partner still runs ends first
        name = f"moved-{vm_id[:8]}-{uuid.uuid4().hex[:6]}"
        where = await self.client.act("export_disk", self._at("compute", vm_id, "export_disk"),
                                      wire.ACTIONS["compute"] + "save", {"name": name})
        if not where:
            raise DriverError("the partner took the save but did not say which os_tpl it makes (no Location)",
                              provider=self.name, operation="export_disk")
        term = urlsplit(where).path.rstrip("/").rsplit("/", 1)[-1]
        await self._saved(vm_id, term)
        got = await self.client.download("export_disk", download, {"os_tpl": term},
                                         str(Path(dest_dir) / f"{term}.{to_format or 'disk'}"),
                                         timeout_s=self.upload_timeout_s, formats=self.DISK_FORMATS,
                                         to_format=to_format, progress=progress)
        return DiskRef(got.path, got.format, sha256=got.sha256,
                       note=f"{got.size_bytes} bytes received, {got.how}, {got.staged_bytes} bytes staged")

    async def _saved(self, vm_id: str, term: str) -> None:
        """Until the partner's query interface lists os_tpl ``term`` (its save published it); a save that
        ends without it (the compute no longer busy, the os_tpl still absent) is a DriverError with the
        partner's state message."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.save_timeout_s
        delays = poll_delays(0.2, 2.0)
        settled = 0
        while True:
            if any(c.term == term and wire.OS_TPL in c.depends for c in await self.templates(fresh=True)):
                return
            vm = await self.get_vm(vm_id)
            settled = 0 if vm.state == VmState.PENDING else settled + 1
            if settled >= 3 or loop.time() > deadline:  # three looks: a save that ended just now is listed
                said = vm.extra.get("state_message") or "no message"
                raise DriverError(f"the partner's save of compute {vm_id} ended without os_tpl {term} "
                                  f"(compute {vm.extra.get('native_state')}: {said})", provider=self.name,
                                  operation="export_disk")
            await asyncio.sleep(next(delays))

    # --- computes -----------------------------------------------------------------------------------

    def _vm_info(self, entity: wire.Entity, flavors: dict[str, str], images: set[str]) -> VmInfo:
        attrs = entity.attributes
        native = str(attrs.get("occi.compute.state") or "")
        message = str(attrs.get("occi.compute.state.message") or "")
        state = VmState.PENDING if BUSY.match(message) and native != "error" else self.map_state(native)
        memory = attrs.get("occi.compute.memory")
        addresses = [lk["attributes"].get("occi.networkinterface.address") for lk in entity.links
                     if lk.get("kind") == wire.NETWORKINTERFACE]
        extra = {k: v for k, v in {
            "native_state": native, "fault": message if state == VmState.ERROR else None,
            "state_message": message or None, "vcpus": attrs.get("occi.compute.cores"),
            "ram_mib": round(float(memory) * 1024) if memory is not None else None,
            "private_ip": next((a for a in addresses if a), None),
            "hostname": attrs.get("occi.compute.hostname")}.items() if v is not None}
        return VmInfo(provider_vm_id=entity.id, name=str(attrs.get("occi.core.title") or entity.id),
                      region=self.region, state=state,
                      flavor=next((flavors[m] for m in entity.mixins if m in flavors), None),
                      image=next((m for m in entity.mixins if m in images), None),
                      workload_id=owner_of(entity), extra=extra)

    async def _known(self) -> tuple[dict[str, str], set[str]]:
        """The partner's resource_tpls (type id -> term) and os_tpls (type ids), to read an entity's mixins."""
        images = {c.type_id for c in await self.templates() if wire.OS_TPL in c.depends}
        return {c.type_id: c.term for c, _ in await self._flavors()}, images

    async def list_vms(self) -> list[VmInfo]:
        known = await self._known()
        return [self._vm_info(e, *known) for e in await self.client.collection("list_vms", "compute/")]

    async def get_vm(self, vm_id: str) -> VmInfo:
        return self._vm_info(await self.client.get("get_vm", self._at("compute", vm_id, "get_vm")),
                             *await self._known())

    def _at(self, kind: str, entity_id: str, operation: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,127}", entity_id):
            raise ProviderNotFound(f"{entity_id!r} is not an OCCI entity id", provider=self.name, operation=operation)
        return f"{kind}/{entity_id}"

    async def _pick(self, spec: VmSpec) -> wire.Category | None:
        """The resource_tpl: ``spec.flavor`` (a term or type id), else the smallest that holds the shape,
        else None (the shape is sent as cores and memory)."""
        flavors = await self._flavors()
        if spec.flavor:
            for cat, _ in flavors:
                if spec.flavor in (cat.term, cat.type_id):
                    return cat
            raise ValidationError(f"{self.name}: the partner offers no resource_tpl {spec.flavor!r}; it offers "
                                  + (", ".join(c.term for c, _ in flavors) or "none"))
        fits = [(f.vcpus, f.ram_mib, cat.term, cat) for cat, f in flavors
                if f.vcpus >= spec.vcpus and f.ram_mib >= spec.ram_mib]
        return min(fits, key=lambda x: x[:3])[3] if fits else None

    async def create_vm(self, spec: VmSpec) -> VmInfo:
        if spec.region != self.region:
            raise ValidationError(f"{self.name}: the partner is one site, {self.region!r}, not {spec.region!r}")
        if spec.gpu_count:
            raise ValidationError(f"{self.name}: the partner's templates carry no GPUs")
        cats = {c.type_id: c for c in await self.templates()}
        if "#" in spec.image and spec.image not in cats:  # an os_tpl made since they were read (an upload)
            cats = {c.type_id: c for c in await self.templates(fresh=True)}
        image = spec.image if spec.image in cats else next(
            (t for t, c in cats.items() if wire.OS_TPL in c.depends and c.term == spec.image), None)
        if image is None or wire.OS_TPL not in cats[image].depends:
            raise ValidationError(f"{self.name}: the partner offers no os_tpl {spec.image!r}")
        mixins, attrs = [image], {"occi.core.title": spec.name[:255],
                                  "occi.core.summary": f"{OWNER_PREFIX}{spec.workload_id}" if spec.workload_id
                                  else None}
        template = await self._pick(spec)
        if template is not None:
            mixins.append(template.type_id)
        else:
            attrs.update({"occi.compute.cores": spec.vcpus, "occi.compute.memory": round(spec.ram_mib / 1024, 4)})
        for given, mixin, attr, what in ((spec.user_data, wire.USER_DATA, "occi.compute.userdata", "user data"),
                                         (spec.ssh_key, wire.SSH_KEY, "occi.credentials.ssh.publickey", "an SSH key")):
            if given is None:
                continue
            if mixin not in cats:
                raise ValidationError(f"{self.name}: the partner offers no {mixin.rpartition('#')[2]} mixin, so "
                                      f"{what} cannot be given to the compute")
            mixins.append(mixin)
            attrs[attr] = given.strip() if mixin == wire.SSH_KEY else given
        where = await self.client.create("create_vm", "compute/", wire.COMPUTE, mixins, attrs)
        return await self.get_vm(where.rstrip("/").rsplit("/", 1)[-1])

    async def _act(self, vm_id: str, verb: str, operation: str) -> None:
        await self.client.act(operation, self._at("compute", vm_id, operation), wire.ACTIONS["compute"] + verb)

    async def start_vm(self, vm_id: str) -> None:
        """OCCI's start also resumes a suspended compute."""
        await self._act(vm_id, "start", "start_vm")

    async def stop_vm(self, vm_id: str) -> None:
        await self._act(vm_id, "stop", "stop_vm")

    async def restart_vm(self, vm_id: str) -> None:
        await self._act(vm_id, "restart", "restart_vm")

    async def suspend_vm(self, vm_id: str) -> None:
        await self._act(vm_id, "suspend", "suspend_vm")

    async def resize_vm(self, vm_id: str, *, vcpus: int, ram_mib: int, flavor: str | None = None) -> None:
        """New ``occi.compute.cores`` and ``occi.compute.memory`` (POST, a partial update): a template's
        size when ``flavor`` names one. The partner decides whether a running compute may change (a
        metavmm partner runs the resize as an operation; a refusal comes back as its status means)."""
        if flavor:
            template = await self._pick(VmSpec(name="", region=self.region, image="", flavor=flavor))
            size = self._flavor(template) if template is not None else None
            if size is not None:
                vcpus, ram_mib = size.vcpus, size.ram_mib
        await self.client.update("resize_vm", self._at("compute", vm_id, "resize_vm"), wire.COMPUTE,
                                 {"occi.compute.cores": vcpus, "occi.compute.memory": round(ram_mib / 1024, 4)})

    async def delete_vm(self, vm_id: str) -> None:
        await self.client.delete("delete_vm", self._at("compute", vm_id, "delete_vm"))

    # --- storage and networks -----------------------------------------------------------------------

    async def list_volumes(self) -> list[VolumeInfo]:
        out = []
        for e in await self.client.collection("list_volumes", "storage/"):
            state = str(e.attributes.get("occi.storage.state") or "")
            out.append(VolumeInfo(provider_volume_id=e.id, name=str(e.attributes.get("occi.core.title") or e.id),
                                  region=self.region, size_gib=round(float(e.attributes.get("occi.storage.size") or 0)),
                                  state={"online": "available", "error": "error"}.get(state, "creating"),
                                  workload_id=owner_of(e), extra={"native_state": state}))
        return out

    async def create_volume(self, spec: VolumeSpec) -> VolumeInfo:
        attrs = {"occi.core.title": spec.name[:255], "occi.storage.size": float(spec.size_gib),
                 "occi.core.summary": f"{OWNER_PREFIX}{spec.workload_id}" if spec.workload_id else None}
        where = await self.client.create("create_volume", "storage/", wire.STORAGE, [], attrs)
        vid = where.rstrip("/").rsplit("/", 1)[-1]
        return VolumeInfo(provider_volume_id=vid, name=spec.name, region=self.region, size_gib=spec.size_gib,
                          state="creating", workload_id=spec.workload_id)

    async def delete_volume(self, volume_id: str) -> None:
        await self.client.delete("delete_volume", self._at("storage", volume_id, "delete_volume"))

    async def list_networks(self) -> list[NetworkInfo]:
        return [NetworkInfo(provider_network_id=e.id, name=str(e.attributes.get("occi.core.title") or e.id),
                            region=self.region, cidr=e.attributes.get("occi.network.address"),
                            state=str(e.attributes.get("occi.network.state") or "inactive"), workload_id=owner_of(e))
                for e in await self.client.collection("list_networks", "network/")]

    async def create_network(self, spec: NetworkSpec) -> NetworkInfo:
        cats = {c.type_id for c in await self.templates()}
        ipnetwork = "http://schemas.ogf.org/occi/infrastructure/network#ipnetwork"
        mixins = [ipnetwork] if spec.cidr and ipnetwork in cats else []
        attrs = {"occi.core.title": spec.name[:255], "occi.network.address": spec.cidr if mixins else None,
                 "occi.core.summary": f"{OWNER_PREFIX}{spec.workload_id}" if spec.workload_id else None}
        where = await self.client.create("create_network", "network/", wire.NETWORK, mixins, attrs)
        return NetworkInfo(provider_network_id=where.rstrip("/").rsplit("/", 1)[-1], name=spec.name,
                           region=self.region, cidr=spec.cidr, state="inactive", workload_id=spec.workload_id)

    async def delete_network(self, network_id: str) -> None:
        await self.client.delete("delete_network", self._at("network", network_id, "delete_network"))

    # --- links ---------------------------------------------------------------------------------------

    async def _link_to(self, vm_id: str, kind: str, target_id: str, operation: str) -> dict[str, Any] | None:
        """The compute's link of ``kind`` to ``target_id`` (as the compute's rendering lists it), or None."""
        entity = await self.client.get(operation, self._at("compute", vm_id, operation))
        self._at(kind, target_id, operation)
        return next((lk for lk in entity.links if lk["target"].rstrip("/").endswith(f"/{kind}/{target_id}")), None)

    async def _link(self, vm_id: str, kind: str, link_kind: str, target_id: str, operation: str,
                    attributes: dict[str, Any] | None = None) -> dict[str, Any]:
        """Link the compute to a storage or network (already linked: that link). Returns once the partner
        accepted the link: a partner metavmm then attaches it in an operation of its own."""
        found = await self._link_to(vm_id, kind, target_id, operation)
        if found is None:
            await self.client.create(operation, f"{link_kind.rpartition('#')[2]}/", link_kind, [], {
                "occi.core.source": f"/compute/{vm_id}", "occi.core.target": f"/{kind}/{target_id}",
                **(attributes or {})})
            found = await self._link_to(vm_id, kind, target_id, operation) or {}
        return found

    async def _unlink(self, vm_id: str, kind: str, target_id: str, operation: str) -> None:
        found = await self._link_to(vm_id, kind, target_id, operation)
        if found is None or not found.get("location"):
            raise ProviderNotFound(f"compute {vm_id} has no link to {kind} {target_id}", provider=self.name,
                                   operation=operation)
        await self.client.delete(operation, found["location"])

    async def attach_volume(self, vm_id: str, volume_id: str) -> None:
        await self._link(vm_id, "storage", wire.STORAGELINK, volume_id, "attach_volume")

    async def detach_volume(self, vm_id: str, volume_id: str) -> None:
        await self._unlink(vm_id, "storage", volume_id, "detach_volume")

    async def attach_network(self, vm_id: str, network_id: str, mac: str | None = None) -> str | None:
        link = await self._link(vm_id, "network", wire.NETWORKINTERFACE, network_id, "attach_network",
                                {"occi.networkinterface.mac": mac} if mac else None)
        return (link.get("attributes") or {}).get("occi.networkinterface.mac") or mac

    async def detach_network(self, vm_id: str, network_id: str) -> None:
        await self._unlink(vm_id, "network", network_id, "detach_network")

    async def close(self) -> None:
        await self.client.close()
