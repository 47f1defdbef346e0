"""The create plan: the engine's steps that bring a disk to a site and boot a VM from it.

One builder for every way a compute is created: the scheduler's bind (``POST /workloads``, OCCI, the
``/placements`` dry run), the marketplace launch and the CLI's ``operations provision`` all call
:func:`create_steps`, so the plan a dry run shows is the plan the engine runs. Pure: it reads the
image route the scheduler found (:meth:`metavmm.scheduler.graph.FederationGraph.route`) and writes
steps; it calls no driver and no tool.

How the disk gets there depends on the image and its route:

- no image: an empty disk (``disk_gib``, at least 1);
- an id the target already knows (``ImageSource.provider_image``: a bootable replica of a catalog
  image at that site, or a provider's own image id): booted as it is;
- a catalog image whose route needs only transfers and qemu-img: ``image.replicate`` copies it to the
  site in the route's boot format (a cached replica later creates reuse);
- a catalog image whose route changes the guest's hypervisor family (virt-v2v) or unpacks an OVA: a
  pipeline in the operation's scratch directory, one step per route step: ``image.fetch`` (the
  route's transfers), ``ovf.unpack``, ``disk.convert`` (qemu-img), ``disk.v2v``, then
  ``image.import`` at the target (undone by ``image.delete``); the VM owns that image, which its
  delete removes (``spec["owned_image"]``).

Then ``vm.create`` (undone by ``vm.delete``; it carries the client's SSH key and user data, which the
driver passes through cloud-init, and its detail says only that they are there), ``vm.wait`` until
running (stable for 2 s when the guest was converted), the boot check where a marker is known and the
target has a console (``vm.wait`` on the serial console, see :func:`boot_check_args`),
``workload.record`` (the commit) and, after a scratch pipeline, ``scratch.clean``.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from metavmm.catalog.spend import Charge
from metavmm.scheduler.graph import GIB_BYTES, Route
from metavmm.scheduler.plan import Step
from metavmm.translators.cloudinit import host_label
from metavmm.translators.costs import PACKAGE_FORMAT

BOOT_SECONDS = 30.0  # create + boot of a VM whose disk is in place; a documented estimate
VERIFY_SECONDS = 10.0
BOOT_TIMEOUT_S = 300.0
FIXED_GUEST_STABLE_S = 2.0  # a converted guest must stay running this long (no marker: the weaker proof)

CREATE_ACTIONS = frozenset({"image.replicate", "image.fetch", "ovf.unpack", "disk.convert", "disk.v2v",
                            "image.import", "image.delete", "vm.create", "vm.delete", "vm.wait", "workload.record",
                            "scratch.clean"})
"""Every action (and compensation) a create plan may name; the engine registers each one."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where the VM goes: the provider and region its driver needs, and the site's facts the plan reads."""

    provider: str
    region: str
    site: str = ""
    host: str | None = None
    flavor: str | None = None
    hypervisor: str = "kvm"
    console: bool = False  # the provider's driver declares Capability.CONSOLE


@dataclass(frozen=True, slots=True)
class ImageSource:
    """The disk to boot: a catalog image (with its route to the target), or an id the target knows."""

    image_id: str | None = None
    provider_image: str | None = None  # boot this id as it is (no route steps)
    route: Route | None = None
    name: str = ""
    format: str = "qcow2"
    hypervisor: str | None = None  # the family the guest was built for
    size_bytes: int = 0
    currency: str = ""  # of the route's prices (the snapshot's)

    @property
    def needs_scratch(self) -> bool:
        """virt-v2v or an OVA unpack: work on a local copy, not on a shared replica."""
        if self.provider_image is not None:
            return False
        steps = self.route.steps if self.route is not None else ()
        return self.format == PACKAGE_FORMAT or any(s.action in ("fix-guest", "unpack") for s in steps)


def boot_check_args(marker: str | None, console: bool, timeout_s: float = BOOT_TIMEOUT_S) -> dict[str, Any]:
    """A boot check's ``vm.wait`` arguments: "running and stable for 2 s", or, with a marker regex and a
    target that has a console, "running and the console shows the marker" (proof the guest booted from
    its disk; the stability window is then not needed). A marker without a console is dropped."""
    args: dict[str, Any] = {"state": "running", "timeout_s": timeout_s, "stable_s": FIXED_GUEST_STABLE_S}
    if marker is None or not console:
        return args
    return {**args, "stable_s": 0.0, "console_marker": marker}


def _size(size_bytes: int) -> str:
    return f"{size_bytes / 2**30:.1f} GiB" if size_bytes >= 2**28 else f"{size_bytes / 2**20:.0f} MiB"


def _scratch_steps(image: ImageSource, target: Target, workload_id: str | None,
                   vm_name: str) -> tuple[list[Step], str]:
    """The local pipeline of a guest that changes hypervisor family (or comes in an OVA), ending with the
    import at the target; returns the steps and the name of the imported image."""
    route = image.route.steps if image.route is not None else ()
    label = image.name or image.image_id or "image"
    transfers = [s for s in route if s.action == "transfer"]
    came_from = f" (as the route's transfer {'; '.join(s.detail for s in transfers)})" if transfers else ""
    steps = [Step("fetch", "image.fetch", {"image_id": image.image_id, "save_as": "fetched"},
                  compensate="scratch.clean", weight=2, site=target.site,
                  detail=f"fetch image {label} ({image.format}, {_size(image.size_bytes)}) into the operation's "
                         f"scratch directory, checksums verified{came_from}",
                  seconds=sum(s.seconds for s in transfers), price=sum((s.price for s in transfers), Decimal(0)))]
    key, names = "fetched", {"fetch"}

    def unique(base: str) -> str:
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.add(name)
        return name

    family = image.hypervisor or ""
    for rs in route:
        if rs.action == "unpack":
            steps.append(Step(unique("unpack"), "ovf.unpack", {"source": key, "save_as": "unpacked"},
                              weight=1, site=target.site, detail=f"unpack the OVA ({rs.detail}): manifest and "
                              "every member checked", seconds=rs.seconds))
            key = "unpacked"
        elif rs.action == "convert":
            out = unique("convert")
            steps.append(Step(out, "disk.convert", {"to_format": rs.format, "source": key, "save_as": out},
                              weight=2, site=target.site, detail=f"convert {rs.detail} ({rs.tool})",
                              seconds=rs.seconds))
            key = out
        elif rs.action == "fix-guest":
            steps.append(Step(unique("v2v"), "disk.v2v", {"source": key, "source_hypervisor": family or "xen",
                                                           "name": host_label(vm_name), "save_as": "fixed"},
                              weight=6, site=target.site, detail=f"virt-v2v: {rs.detail}, virtio drivers installed",
                              seconds=rs.seconds))
            key, family = "fixed", rs.family
    image_name = f"{host_label(vm_name)[:40]}-{(workload_id or 'new')[:8]}"
    steps.append(Step("import", "image.import", {"provider": target.provider, "region": target.region,
                                                  "name": image_name, "source": key},
                      compensate="image.delete", weight=3, site=target.site,
                      detail=f"import the disk at {target.provider}/{target.region} as image {image_name} "
                             "(the workload's own; deleted with it)"))
    return steps, image_name


def _replicate_step(image: ImageSource, target: Target, workload_id: str | None) -> Step:
    route = image.route
    how = "; ".join(f"{s.action} {s.detail}" for s in route.steps) if route is not None and route.steps else ""
    args: dict[str, Any] = {"image_id": image.image_id, "site": target.site}
    if route is not None:
        args["format"] = route.boot_format
        charge = _egress(route, image)
        if charge is not None and workload_id is not None:  # the copy's egress, on the workload's project
            args.update(workload_id=workload_id, charge=charge.as_params())
    label = image.name or image.image_id or "image"
    return Step("replicate", "image.replicate", args, weight=4, site=target.site,
                detail=f"replicate image {label} to {target.site}" + (f" ({how})" if how else "")
                       + ": reused when a replica is there already, kept for later creates",
                seconds=route.seconds if route is not None else 0.0,
                price=route.price if route is not None else Decimal(0))


def _egress(route: Route, image: ImageSource) -> Charge | None:
    """The egress the route's transfers pay (what the spend ledger charges when the copy is made), billed
    by the site the image leaves; None when nothing is paid."""
    paid = [s for s in route.steps if s.action == "transfer" and s.price > 0]
    if not paid:
        return None
    provider, site = paid[0].source or (None, None)
    return Charge(sum((s.price for s in paid), Decimal(0)), image.currency or None,
                  gib=Decimal(image.size_bytes) / GIB_BYTES, provider=provider, site=site)


def create_steps(*, workload_id: str | None, name: str, target: Target, vcpus: int, ram_mib: int, disk_gib: int,
                 image: ImageSource | None = None, boot_marker: str | None = None,
                 boot_timeout_s: float = BOOT_TIMEOUT_S, basis: str = "", ssh_key: str | None = None,
                 user_data: str | None = None) -> list[Step]:
    """The steps that create ``workload_id``'s VM called ``name`` at ``target`` (see the module docstring).

    ``workload_id`` None is a dry run: the steps are what a create would run, for no workload yet.
    ``basis``: how the price was found (``custom shape``, ``flavor m5.large``), for the create's detail.
    ``ssh_key`` and ``user_data``: the guest's cloud-init contextualization, passed to the driver's create.
    """
    at = {"provider": target.provider, "workload_id": workload_id}
    steps: list[Step] = []
    owned: dict[str, str] | None = None
    boot: dict[str, Any]
    converted = False
    if image is None:
        boot, disk_gib = {"image": None}, max(disk_gib, 1)
        source = f"an empty {disk_gib} GiB disk"
    elif image.provider_image is not None:
        boot, source = {"image": image.provider_image}, f"image {image.provider_image}"
    elif image.needs_scratch:
        steps, image_name = _scratch_steps(image, target, workload_id, name)
        boot, source = {"image_from": "target_image"}, f"the imported image {image_name}"
        owned = {"provider": target.provider, "region": target.region, "name": image_name}
        converted = any(s.action == "disk.v2v" for s in steps)
    else:
        steps = [_replicate_step(image, target, workload_id)]
        boot, source = {"image_from": "replica_image"}, f"the replica of image {image.name or image.image_id}"
    slot = target.host or target.flavor or target.site or target.region
    context = {k: v for k, v in (("ssh_key", ssh_key), ("user_data", user_data)) if v is not None}
    told = [what for key, what in (("ssh_key", "an SSH key"), ("user_data", "user data")) if key in context]
    steps.append(Step("create", "vm.create", {**at, "name": name, "region": target.region, **boot, "vcpus": vcpus,
                                              "ram_mib": ram_mib, "disk_gib": disk_gib, "flavor": target.flavor,
                                              "host": target.host, **context},
                      compensate="vm.delete", weight=3, site=target.site,
                      detail=f"create {name} on {slot} from {source}" + (f" ({basis})" if basis else "")
                             + (f", with {' and '.join(told)} for cloud-init" if told else ""),
                      seconds=BOOT_SECONDS))
    running: dict[str, Any] = {"state": "running", "timeout_s": boot_timeout_s}
    if converted:
        running["stable_s"] = FIXED_GUEST_STABLE_S
    steps.append(Step("wait-running", "vm.wait", {**at, **running}, site=target.site,
                      detail=f"wait until {name} is running" + (" and stays up 2 s" if converted else ""),
                      seconds=VERIFY_SECONDS))
    check = boot_check_args(boot_marker, target.console, boot_timeout_s)
    if "console_marker" in check:
        steps.append(Step("boot-check", "vm.wait", {**at, **check}, site=target.site,
                          detail=f"boot check: the serial console shows /{boot_marker}/"))
    record: dict[str, Any] = dict(at)
    if owned is not None:
        record["spec_update"] = {"owned_image": owned}
    steps.append(Step("record", "workload.record", record, commit=True, site=target.site,
                      detail=f"record where {name} runs"))
    if owned is not None:
        steps.append(Step("clean-scratch", "scratch.clean", {}, site=target.site,
                          detail="remove the operation's scratch disks"))
    return steps
