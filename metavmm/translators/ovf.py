"""OVF envelopes (DMTF DSP0243 1.x and 2.x): generate, parse safely, validate against the DSP8023 schemas.

One plain model (:class:`Envelope`) sits between the XML and the rest of metavmm. :func:`render` writes
what the DMTF schema requires (sections with their ``Info``, RASD children in the schema's order), so
generated envelopes validate. :func:`parse` reads the shapes VMware and VirtualBox export, which are
often *not* schema-valid (VirtualBox writes RASD children out of order), so parsing is lenient about
layout but strict about meaning: a section or hardware item marked ``ovf:required`` (the default)
that metavmm cannot apply makes the import fail with its name, as the specification demands.

An OVF comes from outside: the parser never loads a DTD, resolves no entity and touches no network;
a document that carries a DOCTYPE at all is refused, as is one over the size limit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from metavmm.foundation.errors import UntrustedImage, ValidationError

MAX_OVF_BYTES = 8 * 1024 * 1024

NS1 = "http://schemas.dmtf.org/ovf/envelope/1"
NS2 = "http://schemas.dmtf.org/ovf/envelope/2"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
CIM = "http://schemas.dmtf.org/wbem/wscim/1/common"
XSI = "http://www.w3.org/2001/XMLSchema-instance"

# ovf:format URIs of the DiskSection, and the qemu-img format each means.
DISK_FORMAT_URIS = {
    "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized": "vmdk",
    "http://www.vmware.com/interfaces/specifications/vmdk.html#sparse": "vmdk",
    "http://www.vmware.com/specifications/vmdk.html#sparse": "vmdk",
    "http://www.vmware.com/specifications/vmdk.html#compressed": "vmdk",
    "http://www.microsoft.com/technet/virtualserver/downloads/vhdspecs.mspx": "vpc",
    "http://go.microsoft.com/fwlink/?LinkId=137171": "vhdx",
    "http://www.virtualbox.org/manual/ch05.html#vdidetails": "vdi",
    "http://www.gnome.org/~markmc/qcow-image-format.html": "qcow2",
    "http://www.qemu.org/qcow2": "qcow2",
    "http://en.wikipedia.org/wiki/Byte": "raw",
}
FORMAT_URI = {"vmdk": "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized",
              "vpc": "http://www.microsoft.com/technet/virtualserver/downloads/vhdspecs.mspx",
              "vhdx": "http://go.microsoft.com/fwlink/?LinkId=137171",
              "vdi": "http://www.virtualbox.org/manual/ch05.html#vdidetails",
              "qcow2": "http://www.gnome.org/~markmc/qcow-image-format.html",
              "raw": "http://en.wikipedia.org/wiki/Byte"}

# CIM ResourceType codes (DSP1041/CIM_ResourceAllocationSettingData) metavmm can map to a KVM guest.
RT_CPU, RT_MEMORY, RT_IDE, RT_SCSI, RT_ETHERNET, RT_DISK, RT_OTHER_STORAGE = 3, 4, 5, 6, 10, 17, 20
APPLIED_TYPES = {RT_CPU: "processor", RT_MEMORY: "memory", RT_IDE: "IDE controller", RT_SCSI: "SCSI controller",
                 RT_ETHERNET: "ethernet adapter", 14: "floppy drive", 15: "CD drive", 16: "DVD drive",
                 RT_DISK: "disk drive", RT_OTHER_STORAGE: "storage controller (SATA/NVMe)", 23: "USB controller",
                 24: "graphics controller", 35: "sound card"}
SECTIONS_APPLIED = {"DiskSection", "NetworkSection", "OperatingSystemSection", "VirtualHardwareSection"}
SECTIONS_INFORMATIONAL = {"AnnotationSection", "ProductSection", "EulaSection", "StartupSection"}
# CIM_OperatingSystem.OSType codes for what metavmm writes; parsing keeps whatever code it reads.
OS_TYPES = {"other": 1, "linux": 36, "ubuntu-64": 94, "debian-64": 96, "linux-64": 101}
_CIM_CLASSES = {RASD, *(f"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_{c}AllocationSettingData"
                        for c in ("EthernetPort", "Storage"))}
_UNITS = re.compile(r"^\s*byte\s*(?:\*\s*(\d+)\s*\^\s*(\d+))?\s*$", re.IGNORECASE)
_NAMED_UNITS = {"bytes": 1, "kilobytes": 1024, "megabytes": 1024**2, "gigabytes": 1024**3, "kb": 1024,
                "mb": 1024**2, "gb": 1024**3}


@dataclass(frozen=True, slots=True)
class OvfFile:
    id: str
    href: str
    size: int | None = None
    compression: str | None = None  # "gzip" when the file is stored compressed


@dataclass(frozen=True, slots=True)
class OvfDisk:
    disk_id: str
    file_ref: str | None
    capacity_bytes: int
    format: str  # qemu-img format name ("vmdk", ...), from the ovf:format URI
    populated_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class OvfNetwork:
    name: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class OvfNic:
    network: str
    model: str = "virtio"  # rasd:ResourceSubType: E1000, VmxNet3, virtio ...


@dataclass(slots=True)
class VirtualSystem:
    id: str
    name: str
    vcpus: int = 1
    memory_mib: int = 512
    disk_ids: list[str] = field(default_factory=list)  # in the order the hardware section attaches them
    nics: list[OvfNic] = field(default_factory=list)
    os_id: int = OS_TYPES["other"]
    os_description: str = ""
    system_type: str = "metavmm-1"  # vssd:VirtualSystemType: vmx-08, virtualbox-2.2 ...
    ignored: list[str] = field(default_factory=list)  # optional parts metavmm did not apply, for the user


@dataclass(slots=True)
class Envelope:
    files: list[OvfFile]
    disks: list[OvfDisk]
    networks: list[OvfNetwork]
    systems: list[VirtualSystem]
    version: int = 1  # the envelope namespace: 1 (OVF 1.x) or 2 (OVF 2.x)

    def file(self, file_id: str) -> OvfFile:
        for f in self.files:
            if f.id == file_id:
                return f
        raise ValidationError(f"OVF: ovf:fileRef {file_id!r} is not in References")


# --- rendering ---------------------------------------------------------------------------------------


def render(env: Envelope, version: int | None = None) -> bytes:
    """The envelope as OVF ``version`` (1 or 2) XML, valid against DSP8023 1.1.1 or 2.0.1."""
    version = version or env.version
    if version not in (1, 2):
        raise ValidationError(f"OVF version {version} is not supported (1 or 2)")
    ns = NS1 if version == 1 else NS2
    o = f"{{{ns}}}"
    root = etree.Element(o + "Envelope", nsmap={None: ns, "ovf": ns, "rasd": RASD, "vssd": VSSD, "cim": CIM,
                                                 "xsi": XSI})
    root.set(o + "version", "1.1.1" if version == 1 else "2.0.1")
    refs = etree.SubElement(root, o + "References")
    for f in env.files:
        el = etree.SubElement(refs, o + "File", {o + "id": f.id, o + "href": f.href})
        if f.size is not None:
            el.set(o + "size", str(f.size))
        if f.compression:
            el.set(o + "compression", f.compression)
    disks = _section(root, o, "DiskSection", "Virtual disk information")
    for d in env.disks:
        el = etree.SubElement(disks, o + "Disk", {o + "diskId": d.disk_id, o + "capacity": str(d.capacity_bytes),
                                                  o + "capacityAllocationUnits": "byte",
                                                  o + "format": FORMAT_URI[d.format]})
        if d.file_ref:
            el.set(o + "fileRef", d.file_ref)
        if d.populated_bytes is not None:
            el.set(o + "populatedSize", str(d.populated_bytes))
    nets = _section(root, o, "NetworkSection", "The list of logical networks")
    for n in env.networks:
        el = etree.SubElement(nets, o + "Network", {o + "name": n.name})
        etree.SubElement(el, o + "Description").text = n.description or n.name
    if len(env.systems) != 1:
        raise ValidationError("metavmm writes one VirtualSystem per envelope")
    _render_system(root, o, env.systems[0])
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def _section(parent: etree._Element, o: str, name: str, info: str) -> etree._Element:
    el = etree.SubElement(parent, o + name)
    etree.SubElement(el, o + "Info").text = info
    return el


def _render_system(root: etree._Element, o: str, vs: VirtualSystem) -> None:
    sys_el = etree.SubElement(root, o + "VirtualSystem", {o + "id": vs.id})
    etree.SubElement(sys_el, o + "Info").text = "A virtual machine"
    etree.SubElement(sys_el, o + "Name").text = vs.name
    os_el = _section(sys_el, o, "OperatingSystemSection", "The kind of installed guest operating system")
    os_el.set(o + "id", str(vs.os_id))
    if vs.os_description:
        etree.SubElement(os_el, o + "Description").text = vs.os_description
    hw = _section(sys_el, o, "VirtualHardwareSection", "Virtual hardware requirements")
    system = etree.SubElement(hw, o + "System")
    for tag, text in (("ElementName", "Virtual Hardware Family"), ("InstanceID", "0"),
                      ("VirtualSystemIdentifier", vs.name), ("VirtualSystemType", vs.system_type)):
        etree.SubElement(system, f"{{{VSSD}}}{tag}").text = text
    items: list[dict[str, str]] = [
        {"ResourceType": str(RT_CPU), "VirtualQuantity": str(vs.vcpus), "ElementName": f"{vs.vcpus} virtual CPU(s)",
         "AllocationUnits": "hertz * 10^6"},
        {"ResourceType": str(RT_MEMORY), "VirtualQuantity": str(vs.memory_mib), "AllocationUnits": "byte * 2^20",
         "ElementName": f"{vs.memory_mib} MiB of memory"},
        {"ResourceType": str(RT_SCSI), "ResourceSubType": "virtio-scsi", "ElementName": "SCSI controller 0",
         "Address": "0"},
    ]
    controller = "3"
    for unit, disk_id in enumerate(vs.disk_ids):
        items.append({"ResourceType": str(RT_DISK), "HostResource": f"ovf:/disk/{disk_id}", "Parent": controller,
                      "AddressOnParent": str(unit), "ElementName": f"disk {unit}"})
    for i, nic in enumerate(vs.nics):
        items.append({"ResourceType": str(RT_ETHERNET), "Connection": nic.network, "ResourceSubType": nic.model,
                      "AutomaticAllocation": "true", "ElementName": f"ethernet {i}"})
    for instance, fields in enumerate(items, start=1):
        fields["InstanceID"] = str(instance)
        item = etree.SubElement(hw, o + "Item")
        for tag in sorted(fields):  # CIM RASD children are an xs:sequence in alphabetical order
            etree.SubElement(item, f"{{{RASD}}}{tag}").text = fields[tag]


# --- parsing -----------------------------------------------------------------------------------------


def safe_xml(data: bytes, *, max_bytes: int = MAX_OVF_BYTES, what: str = "OVF") -> etree._Element:
    """Parse untrusted XML: no DTD, no entities, no network, bounded size. Refusals raise UntrustedImage."""
    if len(data) > max_bytes:
        raise UntrustedImage(f"{what} of {len(data)} bytes is over the limit of {max_bytes}")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                             huge_tree=False, remove_comments=True, remove_pis=True)
    try:
        tree = etree.fromstring(data, parser).getroottree()
    except etree.XMLSyntaxError as exc:
        raise ValidationError(f"{what} is not well-formed XML: {exc}") from exc
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise UntrustedImage(f"{what} with a DTD (DOCTYPE) is refused: entities could read host files or expand "
                             "without bound")
    return tree.getroot()


def parse(data: bytes, *, max_bytes: int = MAX_OVF_BYTES) -> Envelope:
    """An Envelope from OVF 1.x or 2.x XML, refusing required parts metavmm cannot apply."""
    root = safe_xml(data, max_bytes=max_bytes)
    ns = etree.QName(root).namespace
    if etree.QName(root).localname != "Envelope" or ns not in (NS1, NS2):
        raise ValidationError(f"not an OVF envelope: root element is {root.tag}")
    o = f"{{{ns}}}"
    files = [OvfFile(id=_attr(f, o, "id"), href=_href(_attr(f, o, "href")), size=_int(f.get(o + "size")),
                     compression=f.get(o + "compression") or None)
             for f in root.findall(f"{o}References/{o}File")]
    disks: list[OvfDisk] = []
    networks: list[OvfNetwork] = []
    for section in _sections(root, o, "Envelope"):
        name = etree.QName(section).localname
        if name == "DiskSection":
            disks = [_disk(d, o) for d in section.findall(o + "Disk")]
        elif name == "NetworkSection":
            networks = [OvfNetwork(_attr(n, o, "name"), (n.findtext(o + "Description") or "").strip())
                        for n in section.findall(o + "Network")]
    content = [c for c in root if etree.QName(c).localname in ("VirtualSystem", "VirtualSystemCollection")]
    if len(content) != 1:
        raise ValidationError("OVF: the envelope must hold one VirtualSystem or VirtualSystemCollection")
    systems = [_system(vs, o) for vs in content[0].iter(o + "VirtualSystem")]
    env = Envelope(files, disks, networks, systems, version=1 if ns == NS1 else 2)
    for d in env.disks:
        if d.file_ref:
            env.file(d.file_ref)
    known = {d.disk_id for d in env.disks}
    for vs in systems:
        for disk_id in vs.disk_ids:
            if disk_id not in known:
                raise ValidationError(f"OVF: VirtualSystem {vs.id} uses disk {disk_id!r}, not in the DiskSection")
    return env


def _sections(parent: etree._Element, o: str, where: str) -> Iterable[etree._Element]:
    """The parent's sections; one marked ovf:required that metavmm cannot apply raises ValidationError."""
    for child in parent:
        if not isinstance(child.tag, str):
            continue
        name = etree.QName(child).localname
        if not name.endswith("Section") and etree.QName(child).namespace in (NS1, NS2):
            continue
        if name in SECTIONS_APPLIED or name in SECTIONS_INFORMATIONAL:
            yield child
        elif _required(child, o):
            raise ValidationError(f"OVF: {where} has section {child.tag} marked ovf:required, which metavmm cannot "
                                  "apply: refusing the import")


def _required(el: etree._Element, o: str) -> bool:
    return (el.get(o + "required") or "true").strip().lower() not in ("false", "0")


def _system(vs: etree._Element, o: str) -> VirtualSystem:
    out = VirtualSystem(id=_attr(vs, o, "id"), name=(vs.findtext(o + "Name") or vs.get(o + "id") or "").strip())
    for section in _sections(vs, o, f"VirtualSystem {out.id}"):
        name = etree.QName(section).localname
        if name == "OperatingSystemSection":
            out.os_id = _int(section.get(o + "id")) or OS_TYPES["other"]
            out.os_description = (section.findtext(o + "Description") or "").strip()
        elif name == "VirtualHardwareSection":
            _hardware(section, o, out)
        else:
            out.ignored.append(name)
    return out


def _hardware(hw: etree._Element, o: str, out: VirtualSystem) -> None:
    out.system_type = (hw.findtext(f"{o}System/{{{VSSD}}}VirtualSystemType") or out.system_type).strip()
    for item in hw:
        local = etree.QName(item).localname if isinstance(item.tag, str) else ""
        if local not in ("Item", "EthernetPortItem", "StorageItem"):
            if local not in ("Info", "System", "") and _required(item, o):
                raise ValidationError(f"OVF: hardware element {item.tag} is marked ovf:required and metavmm cannot "
                                      "apply it: refusing the import")
            continue
        fields = {etree.QName(c).localname: (c.text or "").strip() for c in item if isinstance(c.tag, str)}
        for c in item:
            if isinstance(c.tag, str) and etree.QName(c).namespace not in _CIM_CLASSES and _required(c, o):
                raise ValidationError(f"OVF: hardware item setting {c.tag} is marked ovf:required and metavmm cannot "
                                      "apply it: refusing the import")
        rtype = _int(fields.get("ResourceType"))
        label = fields.get("ElementName") or fields.get("Caption") or f"item {fields.get('InstanceID', '?')}"
        if rtype not in APPLIED_TYPES:
            if _required(item, o):
                raise ValidationError(f"OVF: hardware item {label!r} (ResourceType {rtype}) is required and "
                                      "metavmm cannot apply it: refusing the import")
            out.ignored.append(f"{label} (ResourceType {rtype})")
        elif rtype == RT_CPU:
            out.vcpus = _int(fields.get("VirtualQuantity")) or 1
        elif rtype == RT_MEMORY:
            quantity = _int(fields.get("VirtualQuantity")) or 0
            out.memory_mib = quantity * _unit_bytes(fields.get("AllocationUnits") or "byte * 2^20") // (1024 * 1024)
        elif rtype == RT_DISK and fields.get("HostResource"):
            out.disk_ids.append(fields["HostResource"].rsplit("/", 1)[-1])
        elif rtype == RT_ETHERNET:
            out.nics.append(OvfNic(fields.get("Connection", ""), fields.get("ResourceSubType") or "e1000"))


def _disk(d: etree._Element, o: str) -> OvfDisk:
    uri = d.get(o + "format", "")
    fmt = DISK_FORMAT_URIS.get(uri)
    if fmt is None:
        raise ValidationError(f"OVF: disk {d.get(o + 'diskId')!r} has unknown format {uri!r}")
    units = _unit_bytes(d.get(o + "capacityAllocationUnits") or "byte")
    capacity = _int(d.get(o + "capacity"))
    if capacity is None:
        raise ValidationError(f"OVF: disk {d.get(o + 'diskId')!r} has no numeric ovf:capacity")
    return OvfDisk(_attr(d, o, "diskId"), d.get(o + "fileRef") or None, capacity * units, fmt,
                   _int(d.get(o + "populatedSize")))


def _unit_bytes(text: str) -> int:
    m = _UNITS.match(text)
    if m:
        return int(m.group(1)) ** int(m.group(2)) if m.group(1) else 1
    named = _NAMED_UNITS.get(text.strip().lower())
    if named is None:
        raise ValidationError(f"OVF: unknown allocation units {text!r}")
    return named


def _attr(el: etree._Element, o: str, name: str) -> str:
    value = el.get(o + name)
    if value is None:
        raise ValidationError(f"OVF: {etree.QName(el).localname} has no ovf:{name}")
    return value


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text not in (None, "") else None
    except ValueError:
        return None


def _href(href: str) -> str:
    """A References href must name a file inside the package: no URL, no absolute path, no ``..``."""
    if "://" in href or href.startswith("/") or ".." in Path(href).parts or "\\" in href:
        raise UntrustedImage(f"OVF: file reference {href!r} points outside the package: refused")
    return href


# --- validation --------------------------------------------------------------------------------------


def schema(schema_dir: str | Path, version: int) -> etree.XMLSchema:
    """The DSP8023 schema of OVF ``version`` from a local folder (imports resolve from that folder)."""
    main = Path(schema_dir) / ("dsp8023_1.1.1.xsd" if version == 1 else "dsp8023_2.0.1.xsd")
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    return etree.XMLSchema(etree.parse(str(main), parser))


def validate(data: bytes, schema_dir: str | Path, version: int) -> list[str]:
    """Schema errors of an OVF document (empty when valid)."""
    xsd = schema(schema_dir, version)
    doc = safe_xml(data)
    return [] if xsd.validate(doc) else [f"line {e.line}: {e.message}" for e in xsd.error_log]
