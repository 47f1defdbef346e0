"""The plans of the broker's changes: provision, power actions, delete, live and cold migration, and
volumes, networks and the links that attach them to computes.

Each ``*_plan`` function reads what it needs in the caller's session and returns the whole plan as a
:class:`PlanSpec` (with every value a retry must reuse fixed in the step arguments: the clone's
hostname, MAC and address are drawn here, once); the workload service writes it in the transaction of
the request. The engine-level functions of the same name (``power(engine, ...)``) submit a plan on
their own, for the engine's own users (migrations, tests, benchmarks). Nothing here talks to a
provider: the steps do.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.models import AddressLease, Operation, Provider, Site, Workload, WorkloadKind, WorkloadLink
from metavmm.foundation.errors import ConfigError, Conflict, IdempotencyKeyReused, NotFound, ValidationError
from metavmm.foundation.kinds import KINDS, QEMU_MACS
from metavmm.foundation.records import Capability
from metavmm.scheduler import live_mode, service
from metavmm.scheduler.graph import link_rate
from metavmm.scheduler.migration import egress_charge
from metavmm.scheduler.plan import Step
from metavmm.scheduler.provision import boot_check_args
from metavmm.services.operations import addresses, store
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.store import ACTIVE, TERMINAL
from metavmm.translators.cloudinit import host_label

if TYPE_CHECKING:
    from metavmm.scheduler.snapshot import ProviderView

POWER_TARGET = {"start": "running", "stop": "stopped", "suspend": "suspended", "restart": "running"}


@dataclass(frozen=True)
class PlanSpec:
    """A whole plan, ready to be written (``store.write_plan``) or submitted (``Engine.submit``)."""

    kind: str
    steps: list[Step]
    target_id: str | None
    project_id: int | None
    params: dict[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None
    """What the request asked for, for the idempotency check (see :func:`fingerprint`)."""
    rows: tuple[Any, ...] = ()
    """Rows that must commit with the operation (a cold migration's address lease, which names it)."""
    operation_id: str | None = None
    """The operation's id, fixed when ``rows`` name it."""

    def args(self) -> dict[str, Any]:
        return {"kind": self.kind, "steps": self.steps, "target_id": self.target_id,
                "project_id": self.project_id, "params": self.params}

    def write_args(self) -> dict[str, Any]:
        """Every keyword of ``store.write_plan`` this plan fixes (the caller adds its idempotency key)."""
        return {**self.args(), "fingerprint": self.fingerprint, "operation_id": self.operation_id}

    async def submit(self, engine: Engine, *, idempotency_key: str | None = None) -> Operation:
        """Write the plan with its rows in one transaction of its own and wake the engine."""
        return await engine.submit(**self.write_args(), rows=list(self.rows), idempotency_key=idempotency_key)


async def placed_at(session: AsyncSession, workload_id: str) -> tuple[Workload, str]:
    """The workload and the name of the provider it runs at; NotFound or Conflict when it runs nowhere."""
    workload = await session.get(Workload, workload_id)
    if workload is None or not workload.present:
        raise NotFound(f"no workload {workload_id}")
    if workload.provider_id is None:
        raise Conflict(f"workload {workload_id} is not placed at any provider yet")
    provider = await session.get(Provider, workload.provider_id)
    assert provider is not None
    return workload, provider.name


async def _workload_at(engine: Engine, workload_id: str) -> tuple[Workload, str]:
    async with engine.sessions() as session:
        return await placed_at(session, workload_id)


async def behind(session: AsyncSession, workload_id: str, accept: tuple[str, ...] = ("succeeded",)
                 ) -> tuple[Workload, str, list[Step]]:
    """Where the workload runs (or will run, once its create, still active, ends) and the steps that must
    come first: a wait for the newest operation still active on it, so requests asked meanwhile run one
    after the other rather than racing (a stop and a start at once) or failing (an action during the
    create). ``accept``: how that operation may end when it is the create (any end, for other kinds)."""
    workload = await session.get(Workload, workload_id)
    active = (await session.exec(select(Operation).where(
        Operation.target_id == workload_id, col(Operation.state).in_(ACTIVE))
        .order_by(col(Operation.created_at).desc()))).all()
    creating = next((op for op in active if op.kind == "create" and op.params.get("provider")), None)
    if workload is not None and creating is not None:
        provider = str(creating.params["provider"])
    else:
        workload, provider = await placed_at(session, workload_id)
    if not active:
        return workload, provider, []
    last = active[0]
    ends = list(accept) if last.kind == "create" else [str(s) for s in TERMINAL]
    return workload, provider, [Step(f"wait-{last.kind}", "operation.wait", {"operation_id": last.id,
                                                                            "accept": ends})]


def _known_provider(engine: Engine, name: str) -> Any:
    try:
        return engine.config.provider(name)
    except KeyError:
        raise ValidationError(f"provider {name!r} is not in the federation file") from None


def with_quota(workload_id: str, steps: list[Step]) -> list[Step]:
    """Settle the request's quota reservation around a create plan: released by its rollback, committed last."""
    held = {"workload_id": workload_id}
    return [Step("hold-quota", "quota.hold", held, compensate="quota.release"), *steps,
            Step("commit-quota", "quota.commit", held)]


RESOURCE_VERB = {WorkloadKind.STORAGE: "volume", WorkloadKind.NETWORK: "network"}
"""The step-action noun of each non-compute workload kind (volume_actions, net_actions)."""


def resource_steps(workload_id: str, kind: str, *, name: str, provider: str, region: str, size_gib: int = 0,
                   cidr: str | None = None, quota: bool = False) -> list[Step]:
    """The create plan of a volume (``kind`` storage, ``size_gib``) or a network (``cidr`` where the
    provider needs one): create (undone by delete), then record it in the catalog (the commit)."""
    verb = RESOURCE_VERB[WorkloadKind(kind)]
    at = {"provider": provider, "workload_id": workload_id}
    extra = {"size_gib": size_gib} if verb == "volume" else {"cidr": cidr}
    steps = [Step("create", f"{verb}.create", {**at, "name": name, "region": region, **extra},
                  compensate=f"{verb}.delete", weight=2),
             Step("record", "resource.record", {**at, "kind": kind}, commit=True)]
    return with_quota(workload_id, steps) if quota else steps


def move_step(workload_id: str, kind: str, *, name: str, source: Mapping[str, Any], dest: Mapping[str, Any],
              size_gib: int = 0, cidr: str | None = None) -> Step:
    """Move a volume or network never attached from ``source`` to ``dest`` (each a placement: provider,
    region, site, and a volume's price there): it holds nothing, so it is made anew at ``dest`` and the old
    one deleted; the rollback moves it back (``resource.move_back``), unbound again, at its old price (the
    spend ledger reads the placement's)."""
    extra = {"size_gib": size_gib} if RESOURCE_VERB[WorkloadKind(kind)] == "volume" else {"cidr": cidr}
    keep = ("provider", "region", "site", *(k for k in ("storage_per_hour", "cost_per_hour") if k in dest))
    return Step("move", "resource.move", {"workload_id": workload_id, "kind": kind, "name": name, **extra,
                                          "source": {k: source.get(k) for k in keep},
                                          "dest": {k: dest.get(k) for k in keep}},
                compensate="resource.move_back", weight=2, site=str(dest.get("site") or ""),
                detail=f"{kind} {name} to {dest.get('site')}")


def volume_copy_steps(workload_id: str, *, name: str, size_gib: int, source: Mapping[str, Any],
                      dest: Mapping[str, Any], volume_format: str,
                      waits: Sequence[Step] = ()) -> tuple[list[Step], list[Step]]:
    """Move an unattached volume's data from ``source`` to ``dest`` (each a placement: provider, region,
    site) through the scratch directory: export, convert to the ``volume_format`` the destination's driver
    imports, import as a new volume there, and switch the catalog to it. Returns the steps before the
    attach and those after the link's commit (the copy left at the source discarded, the scratch removed).
    A rollback from any step before the commit deletes the new copy and leaves the volume where it was
    (``volume.depart``'s undo, ``volume.stay``); ``waits`` (what must end first) run after ``depart``."""
    keep = ("provider", "region", "site")
    src = {k: str(source.get(k) or "") for k in keep}
    dst = {k: str(dest.get(k) or "") for k in keep}
    at = {"workload_id": workload_id}
    before = [
        Step("depart", "volume.depart", {**at, "source": src, "dest": dst}, compensate="volume.stay",
             detail=f"storage {name} from {src['site']} to {dst['site']}"),
        *waits,
        Step("export", "volume.export", {**at, **src}, compensate="scratch.clean", weight=3, site=src["site"]),
        Step("convert", "disk.convert", {"to_format": volume_format}, compensate="scratch.clean", weight=2),
        Step("import", "volume.import", {**at, **dst, "name": name, "size_gib": size_gib},
             compensate="volume.discard", weight=3, site=dst["site"]),
        Step("switch", "volume.switch", {**at, "dest": dst}),
    ]
    after = [Step("discard-source", "volume.discard", {**at, **src}, site=src["site"]),
             Step("clean-scratch", "scratch.clean", {})]
    return before, after


def volume_format(kind: str) -> str:
    """The disk format the ``kind`` driver's volumes leave and arrive in (qcow2 when its SDK is missing: the
    import step then says what it lacks)."""
    from metavmm.drivers.registry import driver_class

    try:
        return str(driver_class(kind).volume_format)
    except ConfigError:
        return "qcow2"


MOVES = ("resource.move", "volume.depart")
"""The first step of each way a link's target moves to the compute's site (the attach plan's ``moves``)."""


def attach_steps(link_id: str, *, compute_id: str, target_id: str, target_kind: str,
                 mac: str | None = None, reserve: Mapping[str, str] | None = None) -> list[Step]:
    """Attach a volume or network to a compute: wait until both ends are placed (their own create
    operations may still run), attach at the provider, mark the link active (the commit). ``mac``: the
    interface's MAC, where the link asks for one (the provider gives it otherwise, and the record step
    writes the one the VM really has). ``reserve``: the ``ip`` and ``hostname`` the network's DHCP gives
    that MAC (a class seat's), reserved before the interface appears and released if the attach rolls back."""
    verb = RESOURCE_VERB[WorkloadKind(target_kind)]
    ends = {"link_id": link_id, "compute_id": compute_id, "target_id": target_id}
    attach = {**ends, "mac": mac} if verb == "network" and mac else ends
    steps = [Step("wait-ends", "link.wait_ends", {**ends, "timeout_s": 600}, compensate="link.failed")]
    if reserve and mac and verb == "network":
        steps.append(Step("reserve", "network.reserve", {**ends, "mac": mac, **reserve}, compensate="network.release"))
    return [*steps, Step("attach", f"{verb}.attach", attach, compensate=f"{verb}.detach", weight=2),
            Step("record", "link.record", ends, commit=True)]


def detach_steps(link_id: str, *, compute_id: str, target_id: str, target_kind: str,
                 reserved_mac: str | None = None) -> list[Step]:
    verb = RESOURCE_VERB[WorkloadKind(target_kind)]
    ends = {"link_id": link_id, "compute_id": compute_id, "target_id": target_id}
    steps = [Step("detach", f"{verb}.detach", ends, commit=True, weight=2)]
    if reserved_mac:
        steps.append(Step("release", "network.release", {**ends, "mac": reserved_mac}))
    return [*steps, Step("forget", "link.forget", ends)]


def reservation(link: WorkloadLink) -> dict[str, str] | None:
    """The DHCP reservation a network interface asks for (a class seat's ``address`` and ``hostname``)."""
    attrs = link.attributes or {}
    if link.kind != "networkinterface" or not attrs.get("address") or not attrs.get("mac"):
        return None
    return {"ip": str(attrs["address"]).split("/")[0], "hostname": str(attrs.get("hostname") or "")}


def release_steps(links: Sequence[WorkloadLink]) -> list[Step]:
    """Remove the DHCP reservations of a compute's interfaces (its delete: the VM's NICs go with the VM,
    the network's reservations would stay)."""
    return [Step(f"release-{i}", "network.release", {"target_id": lk.target_id, "mac": lk.attributes["mac"]})
            for i, lk in enumerate(lk for lk in links if reservation(lk))]


async def _link(session: AsyncSession, link_id: str) -> tuple[WorkloadLink, str]:
    link = await session.get(WorkloadLink, link_id)
    target = await session.get(Workload, link.target_id) if link is not None else None
    if link is None or target is None:
        raise NotFound(f"no link {link_id}")
    return link, target.kind


async def attach_plan(session: AsyncSession, link_id: str, *, first: Sequence[Step] = (),
                      after: Sequence[Step] = ()) -> PlanSpec:
    """Apply a link row (storagelink or networkinterface) at the provider; ``first``: steps before the
    attach (the move of a target to the compute's site, :func:`move_step` or :func:`volume_copy_steps`),
    ``after``: steps after the link's commit (what such a move leaves to clean). With a move, a first
    ``pending`` step's undo marks the link failed whichever step rolls back."""
    link, kind = await _link(session, link_id)
    ends = {"link_id": link.id, "compute_id": link.source_id, "target_id": link.target_id}
    guard = [Step("pending", "link.pending", ends, compensate="link.failed")] if first else []
    steps = [*guard, *first, *attach_steps(link.id, compute_id=link.source_id, target_id=link.target_id,
                                           target_kind=kind, mac=link.attributes.get("mac"),
                                           reserve=reservation(link)), *after]
    moves = [s.args["workload_id"] for s in first if s.action in MOVES]
    return PlanSpec("attach", steps, link.id, link.project_id,
                    {"compute": link.source_id, **({"moves": moves[0]} if moves else {})})


async def detach_plan(session: AsyncSession, link_id: str) -> PlanSpec:
    """Detach at the provider, then remove the link row."""
    link, kind = await _link(session, link_id)
    held = reservation(link)
    steps = detach_steps(link.id, compute_id=link.source_id, target_id=link.target_id, target_kind=kind,
                         reserved_mac=link.attributes["mac"] if held else None)
    return PlanSpec("detach", steps, link.id, link.project_id, {"compute": link.source_id})


async def attach(engine: Engine, link_id: str, *, idempotency_key: str | None = None) -> Operation:
    async with engine.sessions() as session:
        plan = await attach_plan(session, link_id)
    return await engine.submit(**plan.args(), idempotency_key=idempotency_key)


async def detach(engine: Engine, link_id: str, *, idempotency_key: str | None = None) -> Operation:
    async with engine.sessions() as session:
        plan = await detach_plan(session, link_id)
    return await engine.submit(**plan.args(), idempotency_key=idempotency_key)


def fingerprint(*request: Any) -> str:
    """What a caller asked for, as the idempotency check compares it: a key reused for another request
    (another target host, another image) is a conflict, not the earlier operation."""
    return hashlib.sha256(json.dumps(request, default=str).encode()).hexdigest()


async def power_plan(session: AsyncSession, workload_id: str, verb: str) -> PlanSpec:
    if verb not in POWER_TARGET:
        raise ValidationError(f"unknown action {verb!r}; expected one of {', '.join(POWER_TARGET)}")
    workload, provider, first = await behind(session, workload_id)
    at = {"provider": provider, "workload_id": workload.id}
    steps = [*first, Step(verb, "vm.power", {**at, "verb": verb}),
             Step("wait", "vm.wait", {**at, "state": POWER_TARGET[verb], "timeout_s": 120}),
             Step("observe", "workload.observe", at)]
    return PlanSpec(verb, steps, workload.id, workload.project_id)


async def power(engine: Engine, workload_id: str, verb: str, *, idempotency_key: str | None = None) -> Operation:
    async with engine.sessions() as session:
        plan = await power_plan(session, workload_id, verb)
    return await engine.submit(**plan.args(), idempotency_key=idempotency_key)


async def delete_plan(session: AsyncSession, workload_id: str, *, purge: bool = False) -> PlanSpec:
    """Delete a compute's VM, or a volume or network (refused while a compute still links to it).
    ``purge``: remove the row at the end (OCCI entities are gone once deleted; REST keeps history).
    A create still running is waited for, whatever its end: a rolled-back create leaves nothing to delete."""
    workload, provider, first = await behind(session, workload_id, tuple(TERMINAL))
    at = {"provider": provider, "workload_id": workload.id}
    if workload.kind in RESOURCE_VERB:
        await refuse_if_linked(session, workload)
        steps = [*first, Step("delete", f"{RESOURCE_VERB[WorkloadKind(workload.kind)]}.delete", at, commit=True),
                 Step("forget-links", "link.forget_target", at)]
    else:
        links = (await session.exec(select(WorkloadLink).where(WorkloadLink.source_id == workload.id))).all()
        steps = [*first, Step("delete", "vm.delete", at, commit=True), *release_steps(links)]
    owned = workload.spec.get("owned_image")  # an image a migration imported for this workload alone
    if owned:
        steps.append(Step("delete-image", "image.delete", owned))
    steps.append(Step("forget", "workload.gone", at))
    steps.append(Step("free-quota", "quota.free", {"workload_id": workload.id}))
    if purge:
        steps.append(Step("purge", "workload.purge", at))
    return PlanSpec("delete", steps, workload.id, workload.project_id)


async def delete(engine: Engine, workload_id: str, *, idempotency_key: str | None = None,
                 purge: bool = False) -> Operation:
    async with engine.sessions() as session:
        plan = await delete_plan(session, workload_id, purge=purge)
    return await engine.submit(**plan.args(), idempotency_key=idempotency_key)


async def refuse_if_linked(session: AsyncSession, workload: Workload) -> None:
    """A volume or network still attached to a live compute cannot go (the provider would refuse too)."""
    rows = (await session.exec(select(WorkloadLink, Workload).join(Workload, WorkloadLink.source_id == Workload.id)
                               .where(WorkloadLink.target_id == workload.id))).all()
    live = [f"{link.kind} {link.id} from compute {src.name}" for link, src in rows if src.present]
    if live:
        raise Conflict(f"{workload.kind} {workload.name} is still linked: {'; '.join(live)}; remove the links first")


async def save_plan(session: AsyncSession, workload_id: str, *, name: str | None = None,
                    config: Any = None) -> PlanSpec:
    """Save the VM's disk as a marketplace image of its project (OCCI's ``save``): a VM that is not
    stopped is stopped for the copy and started again; the image is named and given its id now, so
    retries reuse it and the answer can name the new OS template (its os_tpl) before the export ends.
    A provider that cannot export a disk is refused here, the one place every front end's save passes
    (``config``: the federation file, whose entry may grant what the kind lacks: a VM at a partner
    metavmm with ``image_download`` is saved there by the partner's own ``save``, its disk downloaded,
    and recorded here as any save's image)."""
    workload, provider, first = await behind(session, workload_id)
    await refuse_unexportable(session, workload, provider, config)
    at = {"provider": provider, "workload_id": workload.id}
    image = name or f"saved-{workload.id[:8]}-{uuid.uuid4().hex[:6]}"
    image_id = str(uuid.uuid4())
    was_running = workload.observed_state != "stopped"  # a create still running ends running
    steps = [*first]
    if was_running:
        steps += [Step("stop", "vm.power", {**at, "verb": "stop"}, compensate="vm.start"),
                  Step("wait-stopped", "vm.wait", {**at, "state": "stopped", "timeout_s": 120})]
    steps += [Step("export", "disk.export", at, compensate="scratch.clean", weight=3),
              Step("publish", "image.publish", {"workload_id": workload.id, "name": image, "image_id": image_id},
                   commit=True, weight=2)]
    if was_running:
        steps += [Step("start", "vm.power", {**at, "verb": "start"}),
                  Step("wait-running", "vm.wait", {**at, "state": "running", "timeout_s": 120})]
    steps += [Step("observe", "workload.observe", at), Step("clean-scratch", "scratch.clean", {})]
    return PlanSpec("save", steps, workload.id, workload.project_id, {"image_name": image, "image_id": image_id})


async def save(engine: Engine, workload_id: str, *, name: str | None = None) -> Operation:
    async with engine.sessions() as session:
        plan = await save_plan(session, workload_id, name=name, config=engine.config)
    return await engine.submit(**plan.args())


async def live_migrate_plan(engine: Engine, workload_id: str, *, target_provider: str,
                            target_host: str | None = None, offer: dict[str, Any] | None = None) -> PlanSpec:
    """Move a running VM without stopping it: between two libvirt daemons, or to a host of its region.
    ``offer``: the flavor and price the scheduler found at the target (a planned move's), which the record
    step writes into the placement summary (:func:`metavmm.scheduler.summary.relocated`)."""
    workload, provider = await _workload_at(engine, workload_id)
    target_cfg = _known_provider(engine, target_provider)
    if target_provider != provider and target_cfg.kind != _known_provider(engine, provider).kind:
        raise ValidationError("live migration stays within one kind of hypervisor; use a cold migration")
    src = {"provider": provider, "workload_id": workload.id}
    dst = {"provider": target_provider, "workload_id": workload.id}
    ram_mib = int(workload.spec.get("ram_mib") or 0)  # 0: not known (a flavor's shape): the dirty rate decides
    link = link_rate(engine.config.scheduler, same_provider=target_provider == provider)
    offered = _live_modes(engine, provider, target_provider)
    choice = live_mode.by_size(ram_mib, link, offered)
    steps: list[Step] = []
    if choice is None:  # the memory size does not settle it: measure the dirty rate first
        steps.append(Step("measure", "vm.live_mode", {**src, "ram_mib": ram_mib, "link_mib_per_s": link,
                                                      "offered": sorted(offered)}))
        why = {"live_mode": "by dirty rate", "why_live_mode": f"its {ram_mib} MiB take {ram_mib / link:.1f} s "
               f"over the {link:g} MiB/s link: the dirty rate, measured first, decides"}
    else:
        why = choice.as_params()
    steps += [Step("migrate", "vm.live_migrate", {**src, "target_provider": target_provider,
                                                   "target_host": target_host,
                                                   "mode": choice.as_params() if choice else None}, weight=5),
              Step("verify-target", "vm.wait", {**dst, "state": "running", "timeout_s": 120}),
              Step("record", "workload.record", {**dst, **priced(offer)}, commit=True)]
    return PlanSpec("live_migrate", steps, workload.id, workload.project_id,
                    {"from": provider, "to": target_provider, **why},
                    fingerprint=fingerprint(workload.id, target_provider, target_host))


def _live_modes(engine: Engine, source: str, target: str) -> frozenset[str]:
    """The live migration modes beyond pre-copy that both providers declare; none when the source cannot
    measure a dirty rate (the rule that picks one needs it)."""
    views = [declared(name, _known_provider(engine, name).kind) for name in {source, target}]
    caps = frozenset.intersection(*(v.capabilities if v else frozenset() for v in views))
    if Capability.DIRTY_RATE not in caps:
        return frozenset()
    return frozenset(mode for mode, cap in ((live_mode.AUTO_CONVERGE, Capability.LIVE_AUTO_CONVERGE),
                                            (live_mode.POSTCOPY, Capability.LIVE_POSTCOPY)) if cap in caps)


async def live_migrate(engine: Engine, workload_id: str, *, target_provider: str, target_host: str | None = None,
                       idempotency_key: str | None = None) -> Operation:
    """:func:`live_migrate_plan` submitted on its own."""
    plan = await live_migrate_plan(engine, workload_id, target_provider=target_provider, target_host=target_host)
    return await plan.submit(engine, idempotency_key=idempotency_key)


def priced(offer: dict[str, Any] | None) -> dict[str, Any]:
    """A record step's params for a move that knows its target's flavor and price (none: it does not, and
    the record drops the old site's, see :func:`metavmm.scheduler.summary.relocated`). The offer's
    ``egress`` (what the move's transfer costs, :attr:`metavmm.scheduler.migration.Move.offer`) becomes the
    step's ``charge``: the record writes it in the spend ledger as the move lands."""
    offer = dict(offer or {})
    egress = offer.pop("egress", None)
    return {"spec_update": {"placement": offer} if offer else {}, **({"charge": egress} if egress else {})}


def new_mac(taken: set[str], kind: str = "") -> str:
    """A unicast MAC in the target kind's range (``ProviderKindInfo.mac_range``) that no workload uses."""
    info = KINDS.get(kind)
    prefix, top = info.mac_range if info else QEMU_MACS
    while True:
        mac = f"{prefix}:{random.randrange(top + 1):02x}:" + ":".join(f"{random.randrange(256):02x}" for _ in range(2))
        if mac not in taken:
            return mac


def clone_hostname(name: str) -> str:
    """The workload's name as a host name (RFC 1123 label) with a fresh suffix: the clone's own."""
    return f"{host_label(name)[:56].strip('-')}-{uuid.uuid4().hex[:6]}"


def declared(name: str, kind: str, config: Any = None) -> ProviderView | None:
    """The provider as the scheduler's move rules read it: what its kind's driver declares
    (:mod:`metavmm.scheduler.filters.movable`), for its ``config`` where given (an OCCI partner's image
    upload). None when the kind's SDK is not installed: the first step that needs it says so."""
    from metavmm.drivers.registry import driver_class
    from metavmm.scheduler.snapshot import ProviderView

    try:
        cls = driver_class(kind)
        caps = frozenset(str(c) for c in (cls.capabilities_for(config) if config is not None else cls.capabilities))
    except ConfigError:
        return None
    return ProviderView(0, name, kind, False, caps)


def refuse_unmovable(engine: Engine, source: str, target: str) -> None:
    """A cold migration between two providers that cannot make one (see
    :func:`metavmm.scheduler.filters.movable.move_refusal`) is a 409 before anything stops."""
    from metavmm.scheduler.filters.movable import move_refusal

    source_view, target_view = (declared(name, (cfg := _known_provider(engine, name)).kind, cfg)
                                 for name in (source, target))
    if source_view is None or target_view is None:
        return
    why = move_refusal(source_view, target_view)
    if why is not None:
        raise Conflict(why)


@functools.lru_cache(maxsize=256)
def _kind_export_refused(provider: str, kind: str) -> str | None:
    from metavmm.scheduler.filters.movable import export_refusal

    view = declared(provider, kind)
    return export_refusal(view) if view is not None else None


def export_refused(provider: str, kind: str, config: Any = None) -> str | None:
    """Why no VM's disk can leave ``provider`` (the export half of the move rule,
    :func:`metavmm.scheduler.filters.movable.export_refusal`); None when it can, or when its kind's SDK
    is not installed (the export step then says so). What the kind's driver class declares decides (cached:
    OCCI asks it for every compute it renders); where the kind refuses, the provider's entry in the
    federation file ``config`` may still grant the export (a partner metavmm with ``image_download``)."""
    why = _kind_export_refused(provider, kind)
    if why is None or config is None:
        return why
    try:
        entry = config.provider(provider)
    except KeyError:
        return why
    from metavmm.scheduler.filters.movable import export_refusal

    view = declared(provider, kind, entry)
    return export_refusal(view) if view is not None else None


async def refuse_unexportable(session: AsyncSession, workload: Workload, provider: str, config: Any = None) -> None:
    """A save of a VM whose provider cannot hand out its disk is a 409 before any row is written: without
    it the plan would stop the VM, fail at its export step and roll back."""
    row = (await session.exec(select(Provider).where(Provider.name == provider))).first()
    why = export_refused(provider, row.kind, config) if row is not None else None
    if why is not None:
        raise Conflict(f"{why}, so compute {workload.name} cannot be saved as an image")


def boot_check(engine: Engine, target_kind: str, marker: str | None, timeout_s: float) -> dict[str, Any]:
    """The boot-check step's arguments (:func:`metavmm.scheduler.provision.boot_check_args`): "running and
    stable for 2 s", plus, when a marker regex is known (the request's, else the workload spec's
    ``boot_marker``, else ``operations.boot_marker``) and the target declares a console, that regex on
    the clone's serial console: proof that the guest booted from the converted disk. A marker for a
    target without a console is dropped (nothing to read)."""
    from metavmm.drivers.registry import driver_class
    from metavmm.foundation.records import Capability
    from metavmm.services.operations.vm_actions import console_pattern

    marker = marker or engine.config.operations.boot_marker
    if marker is not None:
        console_pattern(marker)  # a bad regex is the request's error, before any step runs
    try:
        console = Capability.CONSOLE in driver_class(target_kind).capabilities
    except ConfigError:
        console = False
    return boot_check_args(marker, console, timeout_s)


def data_path(source: str, source_kind: str, target: str, target_kind: str, disk_format: str) -> tuple[bool, str]:
    """Whether a cold migration streams the disk (export piped into the target's upload, one read, no
    scratch file) or stages it (export to a file, convert, upload), and why: the plan's explanation.
    It streams only where the source's driver sends ``disk_format`` as a stream, the target's takes it as
    it is, and the tools the stream needs are installed here."""
    from metavmm.drivers.registry import driver_class

    try:
        src, dst = driver_class(source_kind), driver_class(target_kind)
    except ConfigError:
        return False, "staged: a provider's SDK is not installed"
    if disk_format not in src.stream_export_formats:
        sends = ", ".join(sorted(src.stream_export_formats)) or "no stream"
        return False, (f"staged: {source} ({source_kind}) streams {sends}, not {disk_format}: the export is "
                       f"written to the scratch directory and converted to {disk_format} there")
    if disk_format not in dst.stream_import_formats:
        takes = (f"takes {', '.join(sorted(dst.stream_import_formats))} from a stream, not {disk_format}"
                 if dst.stream_import_formats else "imports from a file only")
        return False, f"staged: {target} ({target_kind}) {takes}: the disk goes through the scratch directory"
    missing = [t for t in getattr(src, "stream_tools", ()) if shutil.which(t) is None]
    if missing:
        return False, f"staged: {', '.join(missing)} not installed on this broker (Debian package libnbd-bin)"
    return True, (f"streamed: {source} sends the disk as {disk_format} and {target} imports {disk_format} as it "
                  "is, so the export feeds the upload in one read (hashed on the way), with no scratch file")


async def cold_migrate_plan(engine: Engine, workload_id: str, *, target_provider: str,
                            target_region: str | None = None, disk_format: str = "raw", boot_marker: str | None = None,
                            boot_timeout_s: float = 300, drawn: list[AddressLease] | None = None,
                            offer: dict[str, Any] | None = None) -> PlanSpec:
    """Stop, export, convert, import, boot and verify at the target; only then remove the source.
    ``offer`` as for :func:`live_migrate_plan`.

    The boot check (see :func:`boot_check`) waits ``boot_timeout_s`` for the clone to run and, where a
    ``boot_marker`` regex is known and the target has a console, to print it.

    The clone gets its own hostname, MAC and, when the target site has a ``clone_network``, an address
    of it (all drawn now, so retries reuse them; the address is leased in the plan's transaction, see
    addresses.py: the lease is drawn into ``drawn`` and is one of the plan's ``rows``); without one its IP
    comes from the target's DHCP. The guest learns them through
    cloud-init (translators/cloudinit.py). The commit step (recording the target in the catalog) is the
    point of no return: before it a failure or a cancel restores the source, after it the source is
    cleaned up.
    """
    workload, provider = await _workload_at(engine, workload_id)
    target_cfg = _known_provider(engine, target_provider)
    if target_provider == provider:
        raise ValidationError("a cold migration needs another provider as its target")
    refuse_unmovable(engine, provider, target_provider)
    from metavmm.drivers.registry import import_target

    disk_format = import_target(target_cfg.kind, disk_format)  # what the target takes (Azure: vpc:azure)
    sites, regions = getattr(target_cfg, "sites", None), getattr(target_cfg, "regions", None)
    async with engine.sessions() as session:
        macs = {w.spec.get("mac") for w in (await session.exec(select(Workload))).all() if w.spec.get("mac")}
        known = (await session.exec(select(Site.region).join(Provider, col(Site.provider_id) == col(Provider.id))
                                    .where(Provider.name == target_provider, col(Site.present))
                                    .order_by(Site.region))).first()  # a provider whose config names no region
    region = target_region or (sites[0].region if sites else regions[0] if regions else known or "local")
    if offer is None:  # not planned by the scheduler (a target named by its provider, perhaps its region)
        offer = await _egress_offer(engine, workload.id, target_provider, region)
    assigned = target_cfg.kind in KINDS and KINDS[target_cfg.kind].assigns_mac  # neutron gives the port its MAC
    mac = None if assigned else new_mac(macs, target_cfg.kind)
    hostname = clone_hostname(workload.name)
    image_name = f"migrate-{workload.id[:8]}-{uuid.uuid4().hex[:6]}"
    src = {"provider": provider, "workload_id": workload.id}
    dst = {"provider": target_provider, "workload_id": workload.id}
    spec = workload.spec
    net = addresses.clone_network(target_cfg, region)
    check = boot_check(engine, target_cfg.kind, boot_marker or spec.get("boot_marker"), boot_timeout_s)
    identity: dict[str, Any] = {"mac": mac, "hostname": hostname, "instance_id": f"{workload.id}-{hostname}"}
    lease = ip = None
    if net is not None:
        lease = await addresses.draw_lease(engine.sessions, net, where=f"{target_provider}/{region}",
                                           workload_id=workload.id, drawn=[] if drawn is None else drawn)
        ip = lease.address
        identity.update(address=f"{ip}/{net.cidr.prefixlen}", gateway=str(net.gateway or "") or None,
                        dns=[str(d) for d in net.dns])
    streamed, why = data_path(provider, _known_provider(engine, provider).kind, target_provider, target_cfg.kind,
                              disk_format)
    image = {"provider": target_provider, "region": region, "name": image_name}
    if streamed:
        moves = [Step("stream", "disk.stream", {**image, "source_provider": provider, "workload_id": workload.id,
                                                "format": disk_format}, compensate="image.delete", weight=9,
                      detail=why)]
    else:
        moves = [Step("export", "disk.export", {**src, "to_format": disk_format}, compensate="scratch.clean",
                      weight=3, detail=why),
                 Step("convert", "disk.convert", {"to_format": disk_format}, compensate="scratch.clean", weight=3),
                 Step("import", "image.import", {**image, "source_provider": provider}, compensate="image.delete",
                      weight=3)]
    checked = [] if streamed or not _checks_export(_known_provider(engine, provider).kind) else [
        Step("check-source", "disk.export_check", src, detail="the source says up front whether the disk can "
             "leave it, before anything stops")]
    steps = [
        *checked,
        Step("stop-source", "vm.power", {**src, "verb": "stop"}, compensate="vm.start"),
        *moves,
        Step("create-target", "vm.create", {**dst, "name": hostname, "region": region,
                                            "image_from": "target_image", "vcpus": spec.get("vcpus", 1),
                                            "ram_mib": spec.get("ram_mib", 512), "extra": identity,
                                            "save_as": "target_vm"},
             compensate="vm.delete", weight=2),
        Step("boot-check", "vm.wait", {**dst, **check}),
        Step("record", "workload.record", {**dst, **(moved := priced(offer)), "spec_update": {
            "mac": mac, "hostname": hostname, "ip": ip,
            "owned_image": dict(image), **moved["spec_update"]}}, commit=True),
        Step("remove-source", "vm.delete", src),
        *([] if streamed else [Step("clean-scratch", "scratch.clean", {})]),
    ]
    if spec.get("owned_image"):  # the image an earlier migration made for the source's disk
        steps.append(Step("remove-source-image", "image.delete", spec["owned_image"]))
    params = {"from": provider, "to": target_provider, "format": disk_format, "hostname": hostname, "mac": mac,
              "ip": ip, "boot_marker": check.get("console_marker"), "data_path": why}
    return PlanSpec("cold_migrate", steps, workload.id, workload.project_id, params,
                    fingerprint=fingerprint(workload.id, target_provider, target_region, disk_format),
                    rows=(lease,) if lease is not None else (),
                    operation_id=lease.operation_id if lease is not None else None)


def _checks_export(kind: str) -> bool:
    """Whether a source of ``kind`` can say before a cold migration stops the VM that its disk cannot leave
    (its driver's ``ex_export_check``: a partner broker asked what its query interface offers)."""
    from metavmm.drivers.registry import driver_class

    try:
        return hasattr(driver_class(kind), "ex_export_check")
    except ConfigError:
        return False


async def _egress_offer(engine: Engine, workload_id: str, provider: str, region: str) -> dict[str, Any] | None:
    """What a move the scheduler did not plan pays for its disk to leave its site for ``provider``/``region``
    (:func:`metavmm.scheduler.migration.egress_charge`, the figure a planned move charges), as the offer whose
    ``egress`` the record step charges; None when it pays nothing or either site is not in the catalog."""
    snap = await service.snapshot(engine.sessions, engine.config)
    w = next((x for x in snap.workloads if x.id == workload_id), None)
    target = next((s for s in snap.sites if s.provider.name == provider and s.region == region), None)
    charge = egress_charge(snap, w, target) if w is not None and target is not None else None
    return {"egress": charge} if charge is not None else None


async def cold_migrate(engine: Engine, workload_id: str, *, target_provider: str, target_region: str | None = None,
                       disk_format: str = "raw", boot_marker: str | None = None, boot_timeout_s: float = 300,
                       idempotency_key: str | None = None) -> Operation:
    """:func:`cold_migrate_plan` submitted on its own, with its address lease; drawn again when a
    concurrent migration took the address first."""
    async def attempt(drawn: list[AddressLease]) -> Operation:
        plan = await cold_migrate_plan(engine, workload_id, target_provider=target_provider,
                                       target_region=target_region, disk_format=disk_format,
                                       boot_marker=boot_marker, boot_timeout_s=boot_timeout_s, drawn=drawn)
        return await plan.submit(engine, idempotency_key=idempotency_key)

    return await addresses.with_leases(engine.sessions, attempt, where=target_provider)


def resize_steps(workload_id: str, *, provider: str, running: bool, vcpus: int, ram_mib: int, flavor: str | None,
                 old: dict[str, Any], shrink: dict[str, str]) -> list[Step]:
    """Stop (if running), resize, start (if it was running), verify, record the shape, settle the quota."""
    at = {"provider": provider, "workload_id": workload_id}
    new = {"vcpus": vcpus, "ram_mib": ram_mib, "flavor": flavor}
    target = flavor or f"{vcpus} vCPU / {ram_mib} MiB"
    steps = [Step("hold-quota", "quota.hold", {"workload_id": workload_id}, compensate="quota.release_delta"),
             Step("note", "workload.note", {"workload_id": workload_id, "message": f"resizing to {target}"})]
    if running:
        steps += [Step("stop", "vm.power", {**at, "verb": "stop"}, compensate="vm.start"),
                  Step("wait-stopped", "vm.wait", {**at, "state": "stopped", "timeout_s": 300})]
    steps.append(Step("resize", "vm.resize", {**at, **new, "old_vcpus": old["vcpus"], "old_ram_mib": old["ram_mib"],
                                               "old_flavor": old.get("flavor")}, compensate="vm.unresize", weight=2))
    if running:
        steps += [Step("start", "vm.power", {**at, "verb": "start"}),
                  Step("wait-running", "vm.wait", {**at, "state": "running", "timeout_s": 300, "stable_s": 1.0})]
    steps += [Step("verify", "vm.check_shape", {**at, **new}),
              Step("record", "workload.record", {**at, "spec_update": new}, commit=True),
              Step("commit-quota", "quota.commit_delta", {"workload_id": workload_id, "shrink": shrink})]
    return steps


async def resize_plan(session: AsyncSession, workload_id: str, *, vcpus: int, ram_mib: int,
                      flavor: str | None = None) -> tuple[PlanSpec, dict[str, Decimal]]:
    """Change a placed compute workload's shape (vCPUs and RAM, or a provider flavor that has them): the
    plan, and the quota growth the caller reserves in the same transaction, under the plan's operation id
    (the plan commits it once the new shape is recorded, its rollback gives it back)."""
    if vcpus < 1 or ram_mib < 1:
        raise ValidationError("a resize needs at least 1 vCPU and 1 MiB of RAM")
    workload, provider = await placed_at(session, workload_id)
    if workload.kind != WorkloadKind.COMPUTE:
        raise Conflict(f"resize applies to compute workloads, not {workload.kind}")
    spec = workload.spec
    old = {"vcpus": int(spec.get("vcpus") or 1), "ram_mib": int(spec.get("ram_mib") or 512),
           "flavor": spec.get("flavor")}
    if (old["vcpus"], old["ram_mib"], old["flavor"]) == (vcpus, ram_mib, flavor):
        raise Conflict(f"workload {workload_id} already has {vcpus} vCPU / {ram_mib} MiB")
    if await _busy(session, workload_id):
        raise Conflict(f"workload {workload_id} has an operation in progress; resize it when that ends")
    delta = {"vcpus": vcpus - old["vcpus"], "ram_mib": ram_mib - old["ram_mib"]}
    grow = {k: Decimal(v) for k, v in delta.items() if v > 0}
    # a workload outside any project (made by the CLI or adopted) counts against no quota
    shrink = {k: str(-v) for k, v in delta.items() if v < 0} if workload.project_id is not None else {}
    steps = resize_steps(workload_id, provider=provider, running=workload.observed_state == "running", vcpus=vcpus,
                         ram_mib=ram_mib, flavor=flavor, old=old, shrink=shrink)
    params = {"from": old, "to": {"vcpus": vcpus, "ram_mib": ram_mib, "flavor": flavor}, "provider": provider}
    return PlanSpec("resize", steps, workload_id, workload.project_id, params), grow


async def resize(engine: Engine, workload_id: str, *, vcpus: int, ram_mib: int, flavor: str | None = None,
                 idempotency_key: str | None = None) -> Operation:
    """:func:`resize_plan` submitted on its own, with the growth reserved against the project's quota in
    the transaction that writes the plan (QuotaExceeded leaves nothing behind)."""
    from metavmm.catalog.db import session_scope
    from metavmm.catalog.models import new_uuid
    from metavmm.services import quotas

    if idempotency_key:
        async with engine.sessions() as session:
            query = select(Operation).where(Operation.idempotency_key == idempotency_key)
            earlier = (await session.exec(query)).first()
        if earlier is not None:
            if earlier.kind != "resize" or earlier.target_id != workload_id:
                raise IdempotencyKeyReused(f"idempotency key already used by operation {earlier.id} ({earlier.kind})")
            return earlier
    workload, _ = await _workload_at(engine, workload_id)
    op_id = new_uuid()
    async with session_scope(engine.sessions) as session:
        if workload.project_id is not None:
            await quotas.lock_project(session, workload.project_id)  # first statement (SQLite)
        plan, grow = await resize_plan(session, workload_id, vcpus=vcpus, ram_mib=ram_mib, flavor=flavor)
        if grow and workload.project_id is not None:
            await quotas.reserve(session, workload.project_id, grow, workload_id=workload_id, operation_id=op_id)
        op = await store.write_plan(session, **plan.args(), idempotency_key=idempotency_key, operation_id=op_id)
    await engine.wake(op.id)
    return op


async def _busy(session: Any, workload_id: str) -> bool:
    """Another operation on the workload is still running (two shape changes must not interleave)."""
    active = [str(s) for s in store.ACTIVE]
    query = select(Operation.id).where(Operation.target_id == workload_id, col(Operation.state).in_(active))
    return (await session.exec(query)).first() is not None
