"""Hypervisor conversion with virt-v2v: a Xen, VMware or Hyper-V guest (or a foreign disk) made to run on KVM.

Changing the disk format is not enough to move a guest between hypervisors: its kernel needs virtio
drivers in the initramfs, its bootloader and fstab must find the new disk names, VMware Tools or Xen
PV drivers must go. virt-v2v does that inside a libguestfs appliance. This module builds the command
line from a typed request (inputs ``disk``, ``ova``, ``libvirt``; outputs ``local``, ``libvirt``,
``qemu``), checks what it can before the appliance starts (inputs through the untrusted-image rules;
an OVA through metavmm's own safe unpacking), runs virt-v2v with ``--machine-readable`` so progress
and the error message arrive as JSON, and raises TranslationError with virt-v2v's own reason.

The appliance runs under TCG (``LIBGUESTFS_BACKEND_SETTINGS=force_tcg``): nested KVM breaks it on many
CI machines, and the conversion is I/O-bound anyway.
"""

from __future__ import annotations

import contextlib
import enum
import json
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from metavmm.foundation.errors import TranslationError, ValidationError
from metavmm.foundation.records import DiskRef
from metavmm.translators import ova
from metavmm.translators.costs import ConversionEdge, hypervisor_conversions
from metavmm.translators.tools import Limits, find_tool, run_tool
from metavmm.translators.untrusted import DEFAULT_LIMITS, ImageLimits, inspect, normalise_format

ENV = {"LIBGUESTFS_BACKEND": "direct", "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_INPUT_URI_SCHEMES = ("qemu", "xen", "xen+ssh", "vpx", "esx", "test", "libxl")


class V2vInput(enum.StrEnum):
    DISK = "disk"  # a foreign disk image (Xen or VMware guest disk copied out, or any bootable image)
    OVA = "ova"  # a VMware/VirtualBox export
    LIBVIRT = "libvirt"  # a guest on a libvirt-managed hypervisor: xen+ssh://, vpx:// (vCenter), esx://, qemu://


class V2vOutput(enum.StrEnum):
    LOCAL = "local"  # disks and a libvirt XML in a directory
    LIBVIRT = "libvirt"  # define the guest in a libvirt daemon, disks in one of its storage pools
    QEMU = "qemu"  # disks and a shell script that boots them with qemu


@dataclass(frozen=True, slots=True)
class V2vRequest:
    """One virt-v2v run. ``storage`` is a directory (local, qemu) or a storage pool name (libvirt)."""

    input: V2vInput
    source: str
    output: V2vOutput
    storage: str
    name: str | None = None
    input_format: str | None = None  # -i disk: the disk's format (always explicit)
    input_uri: str | None = None  # -i libvirt: the source hypervisor
    output_uri: str | None = None  # -o libvirt: the target daemon
    output_format: str = "qcow2"
    networks: Mapping[str, str] = field(default_factory=dict)  # source network -> target network
    source_hypervisor: str = "xen"  # for the cost estimate: xen, esxi, hyperv

    def guest_name(self) -> str:
        if self.name:
            return self.name
        if self.input is V2vInput.LIBVIRT:
            return self.source
        return Path(self.source).name.split(".")[0] or "guest"

    def validate(self) -> None:
        """Everything that can be wrong before virt-v2v starts, as ValidationError with the reason."""
        if self.output_format not in ("qcow2", "raw"):
            raise ValidationError(f"virt-v2v writes qcow2 or raw, not {self.output_format!r}")
        if not _NAME.match(self.guest_name()):
            raise ValidationError(f"guest name {self.guest_name()!r}: use letters, digits, '.', '_' and '-'")
        if self.input is V2vInput.DISK and not self.input_format:
            raise ValidationError("-i disk needs the disk's format (input_format): metavmm never lets tools guess")
        if self.input in (V2vInput.DISK, V2vInput.OVA) and not Path(self.source).exists():
            raise ValidationError(f"{self.source}: no such file")
        if self.input is V2vInput.LIBVIRT:
            scheme = (self.input_uri or "").split(":", 1)[0]
            if scheme not in _INPUT_URI_SCHEMES:
                schemes = ", ".join(s + "://" for s in _INPUT_URI_SCHEMES)
                raise ValidationError(f"-i libvirt needs a source URI ({schemes}), got {self.input_uri!r}")
        if self.output in (V2vOutput.LOCAL, V2vOutput.QEMU) and not Path(self.storage).is_dir():
            raise ValidationError(f"output directory {self.storage} does not exist")
        if self.output is V2vOutput.LIBVIRT and not _NAME.match(self.storage):
            raise ValidationError(f"-o libvirt needs a storage pool name, got {self.storage!r}")

    def argv(self, source: str | None = None) -> list[str]:
        """The virt-v2v command line (``source`` replaces the input path, e.g. by an unpacked OVA)."""
        argv = [find_tool("virt-v2v"), "--machine-readable", "-i", self.input.value]
        if self.input is V2vInput.DISK:
            argv += ["-if", normalise_format(self.input_format or "")]
        if self.input is V2vInput.LIBVIRT:
            argv += ["-ic", self.input_uri or ""]
        argv.append(source or self.source)
        argv += ["-o", self.output.value, "-os", self.storage, "-of", self.output_format, "-on", self.guest_name()]
        if self.output is V2vOutput.LIBVIRT and self.output_uri:
            argv += ["-oc", self.output_uri]
        for src, dst in sorted(self.networks.items()):
            argv += ["--network", f"{src}:{dst}"]
        return argv

    def edge(self) -> ConversionEdge:
        """The scheduler's cost edge for this conversion."""
        for e in hypervisor_conversions():
            if e.src == f"hv:{self.source_hypervisor}":
                return e
        return hypervisor_conversions()[0]


@dataclass(frozen=True, slots=True)
class V2vResult:
    name: str
    disks: tuple[DiskRef, ...]  # for -o local and -o qemu; -o libvirt puts them in the pool
    metadata: str | None  # the libvirt XML (-o local) or boot script (-o qemu)
    seconds: float
    messages: tuple[str, ...]


async def convert_guest(req: V2vRequest, *, progress: Callable[[str], None] | None = None,
                        timeout_s: float = 3 * 3600, limits: ImageLimits = DEFAULT_LIMITS) -> V2vResult:
    """Run virt-v2v for ``req``; raise ValidationError/UntrustedImage before, TranslationError during."""
    req.validate()
    started = time.perf_counter()
    messages: list[str] = []
    errors: list[str] = []

    def on_line(line: str) -> None:
        if not line.lstrip().startswith("{"):
            return
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            return
        text = str(event.get("message", "")).strip()
        if event.get("type") == "error":
            errors.append(text)
        elif text:
            messages.append(text)
            if progress is not None:
                progress(text)

    unpack_ova = req.input is V2vInput.OVA and Path(req.source).is_file()
    scratch = tempfile.TemporaryDirectory(prefix="metavmm-v2v-", dir=_work_dir(req)) if unpack_ova else None
    with scratch or contextlib.nullcontext():
        source = req.source
        if req.input is V2vInput.DISK:
            await inspect(req.source, req.input_format, limits=limits, checksum=False)
        elif scratch is not None:  # our checks first (traversal, manifest, disk rules), then virt-v2v's
            unpacked = await ova.import_package(req.source, Path(scratch.name) / "ova")
            source = str(Path(unpacked.disks[0].path).parent) if unpacked.disks else req.source
        try:
            await run_tool(req.argv(source), limits=Limits(timeout_s=timeout_s), env=ENV, on_output=on_line,
                           what="virt-v2v")
        except TranslationError as exc:
            reason = _reason(errors[-1]) if errors else str(exc)
            raise TranslationError(f"virt-v2v could not convert {req.guest_name()}: {reason}",
                                   returncode=exc.returncode, stderr_tail=exc.stderr_tail) from None
    name = req.guest_name()
    disks: tuple[DiskRef, ...] = ()
    metadata = None
    if req.output in (V2vOutput.LOCAL, V2vOutput.QEMU):
        out = Path(req.storage)
        disks = tuple(DiskRef(str(p), req.output_format) for p in sorted(out.glob(f"{name}-sd*")))
        meta = out / (f"{name}.xml" if req.output is V2vOutput.LOCAL else f"{name}.sh")
        metadata = str(meta) if meta.exists() else None
    return V2vResult(name, disks, metadata, time.perf_counter() - started, tuple(messages))


def _reason(message: str) -> str:
    """virt-v2v's error in one line: its first paragraph, and its last when that is the actual finding."""
    paragraphs = [" ".join(p.split()) for p in message.split("\n\n") if p.strip()]
    if not paragraphs:
        return "no message"
    last = paragraphs[-1]
    useful_last = len(paragraphs) > 1 and not last.startswith(("If ", "Assuming"))
    return paragraphs[0] + (f" {last}" if useful_last else "")


def _work_dir(req: V2vRequest) -> str | None:
    """Unpack OVAs next to the output (same filesystem, room for the disks), else in the temp dir."""
    return req.storage if req.output in (V2vOutput.LOCAL, V2vOutput.QEMU) else None
