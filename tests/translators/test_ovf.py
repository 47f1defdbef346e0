"""OVF envelopes: generated ones validate against the DMTF XSDs; real tools' shapes import; hostile XML is refused."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from metavmm.foundation.errors import UntrustedImage, ValidationError
from metavmm.translators import ovf
from tests.translators.conftest import OVF_REFERENCE

SCHEMAS = {1: OVF_REFERENCE / "1.1", 2: OVF_REFERENCE / "2.0"}
MAIN_XSD = {1: "dsp8023_1.1.1.xsd", 2: "dsp8023_2.0.1.xsd"}
VBOX = Path(__file__).parent / "data" / "virtualbox-export.ovf"


def envelope(disks: int = 2) -> ovf.Envelope:
    return ovf.Envelope(
        files=[ovf.OvfFile(f"file{i}", f"web-disk{i}.vmdk", 1000 + i) for i in range(1, disks + 1)],
        disks=[ovf.OvfDisk(f"vmdisk{i}", f"file{i}", i * 2**30, "vmdk", 2**20) for i in range(1, disks + 1)],
        networks=[ovf.OvfNetwork("public", "Internet-facing"), ovf.OvfNetwork("backend")],
        systems=[ovf.VirtualSystem("web", "web", vcpus=4, memory_mib=8192,
                                   disk_ids=[f"vmdisk{i}" for i in range(1, disks + 1)],
                                   nics=[ovf.OvfNic("public"), ovf.OvfNic("backend", "E1000")], os_id=96,
                                   os_description="Debian 12 (64-bit)")])


@pytest.mark.parametrize("version", [1, 2])
def test_generated_envelopes_validate_against_the_dmtf_schema(version: int, tmp_path: Path) -> None:
    data = ovf.render(envelope(), version)
    assert ovf.validate(data, SCHEMAS[version], version) == []
    # the same check with libxml2's own tool, offline, as an operator would run it
    path = tmp_path / "web.ovf"
    path.write_bytes(data)
    res = subprocess.run(["xmllint", "--nonet", "--noout", "--schema", MAIN_XSD[version], str(path)],
                         cwd=SCHEMAS[version], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert f"{path} validates" in res.stderr


def test_validation_catches_a_broken_envelope() -> None:
    data = ovf.render(envelope(), 1).replace(b"<ovf:References", b"<ovf:Bogus/><ovf:References", 1)
    if b"<ovf:Bogus/>" not in data:  # the default namespace is used for elements
        data = ovf.render(envelope(), 1).replace(b"<References>", b"<Bogus/><References>", 1)
    errors = ovf.validate(data, SCHEMAS[1], 1)
    assert errors and "Bogus" in errors[0]
    # an envelope/1 document is not an OVF 2 document
    assert ovf.validate(ovf.render(envelope(), 1), SCHEMAS[2], 2)


@pytest.mark.parametrize("version", [1, 2])
def test_render_and_parse_round_trip(version: int) -> None:
    env = envelope()
    back = ovf.parse(ovf.render(env, version))
    assert back.version == version
    assert back.files == env.files and back.disks == env.disks and back.networks[0] == env.networks[0]
    vs = back.systems[0]
    assert (vs.vcpus, vs.memory_mib, vs.disk_ids, vs.os_id) == (4, 8192, ["vmdisk1", "vmdisk2"], 96)
    assert [n.network for n in vs.nics] == ["public", "backend"]


def test_vmware_export_imports() -> None:
    env = ovf.parse((OVF_REFERENCE / "samples" / "test-i-ova.ovf").read_bytes())
    assert env.files == [ovf.OvfFile("file1", "test-ova.vmdk", 349405696)]
    assert env.disks[0].capacity_bytes == 32 * 2**30 and env.disks[0].format == "vmdk"
    vs = env.systems[0]
    assert (vs.name, vs.vcpus, vs.memory_mib, vs.system_type) == ("TestOva", 1, 2048, "vmx-08")
    assert vs.nics == [ovf.OvfNic("VM Network", "E1000")]
    assert vs.ignored == ["VirtualVMCIDevice (ResourceType 1)"]  # optional, so skipped and reported


def test_vmware_two_disk_export_imports() -> None:
    env = ovf.parse((OVF_REFERENCE / "samples" / "test-i-ova-two-disks.ovf").read_bytes())
    assert len(env.disks) == 2 and len(env.systems[0].disk_ids) == 2


def test_virtualbox_export_imports() -> None:
    """VirtualBox writes RASD children out of schema order and sizes in MegaBytes; it still imports."""
    data = VBOX.read_bytes()
    assert ovf.validate(data, SCHEMAS[1], 1), "the VirtualBox shape is known not to be schema-valid"
    env = ovf.parse(data)
    vs = env.systems[0]
    assert (vs.name, vs.vcpus, vs.memory_mib, vs.os_id) == ("debian12", 2, 2048, 96)
    assert vs.system_type == "virtualbox-2.2"
    assert env.disks[0].capacity_bytes == 10 * 2**30
    assert vs.disk_ids == ["vmdisk1"] and vs.nics == [ovf.OvfNic("NAT", "E1000")]


def test_required_section_it_cannot_apply_is_refused() -> None:
    data = VBOX.read_bytes().replace(b'<vbox:Machine ovf:required="false"', b"<vbox:Machine")
    with pytest.raises(ValidationError, match=r"Machine marked ovf:required, which metavmm cannot apply"):
        ovf.parse(data)


def test_required_hardware_item_it_cannot_apply_is_refused() -> None:
    data = (OVF_REFERENCE / "samples" / "test-i-ova.ovf").read_bytes().replace(b'<Item ovf:required="false">\n'
                                                                               b"        <rasd:AutomaticAllocation>"
                                                                               b"false</rasd:AutomaticAllocation>\n"
                                                                               b"        <rasd:ElementName>VirtualVMCI",
                                                                               b"<Item>\n        <rasd:ElementName>"
                                                                               b"VirtualVMCI", 1)
    assert b"<Item>\n        <rasd:ElementName>VirtualVMCI" in data
    with pytest.raises(ValidationError, match=r"'VirtualVMCIDevice' \(ResourceType 1\) is required"):
        ovf.parse(data)
    vendor = (OVF_REFERENCE / "samples" / "test-i-ova.ovf").read_bytes().replace(
        b'<vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="bios" />',
        b'<vmw:Config vmw:key="firmware" vmw:value="efi" />')
    with pytest.raises(ValidationError, match="Config is marked ovf:required"):
        ovf.parse(vendor)


XXE = b"""<?xml version="1.0"?>
<!DOCTYPE Envelope [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"><References/><VirtualSystem><Name>&secret;</Name>
</VirtualSystem></Envelope>"""
LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE Envelope [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"><References/><VirtualSystem><Name>&b;</Name>
</VirtualSystem></Envelope>"""
EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE Envelope SYSTEM "http://203.0.113.9/ovf.dtd">
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"><References/></Envelope>"""


@pytest.mark.parametrize("doc", [XXE, LAUGHS, EXTERNAL_DTD], ids=["external-entity", "entity-expansion", "dtd"])
def test_dtd_and_entities_are_refused(doc: bytes) -> None:
    with pytest.raises(UntrustedImage, match=r"DTD \(DOCTYPE\) is refused"):
        ovf.parse(doc)


def test_oversized_ovf_is_refused() -> None:
    with pytest.raises(UntrustedImage, match="over the limit of 1000"):
        ovf.parse(ovf.render(envelope()), max_bytes=1000)


@pytest.mark.parametrize("href", ["/etc/passwd", "../../etc/passwd", "http://203.0.113.9/disk.vmdk"])
def test_file_reference_outside_the_package_is_refused(href: str) -> None:
    data = ovf.render(envelope(1)).replace(b'href="web-disk1.vmdk"', f'href="{href}"'.encode())
    with pytest.raises(UntrustedImage, match="points outside the package"):
        ovf.parse(data)


def test_not_an_envelope_and_broken_xml_are_clear_errors() -> None:
    with pytest.raises(ValidationError, match="not an OVF envelope"):
        ovf.parse(b"<domain type='kvm'/>")
    with pytest.raises(ValidationError, match="not well-formed XML"):
        ovf.parse(b"<Envelope")
    bad_disk = ovf.render(envelope(1)).replace(b"vmdk.html#streamOptimized", b"unknown-format")
    with pytest.raises(ValidationError, match="unknown format"):
        ovf.parse(bad_disk)
