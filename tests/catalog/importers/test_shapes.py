"""Instance-type tables: Libcloud's EC2 table and our shapes: YAML, with located errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from metavmm.catalog.importers.shapes import load_shapes
from metavmm.foundation.prices import PriceFileError


def test_libcloud_ec2_table(pricing_dir: Path) -> None:
    table = load_shapes(pricing_dir / "ec2_instance_types.json")
    assert len(table) == 648 and table.kind == "aws" and table.applies_to("aws") and not table.applies_to("gcp")
    p5 = table.get("p5.48xlarge")
    assert (p5.vcpus, p5.ram_mib, p5.gpu_model, p5.gpu_count, p5.arch) == (192, 2097152, "H100", 8, "x86_64")
    assert table.get("r7gd.xlarge").arch == "aarch64" and table.family("r7gd.xlarge") == "r7gd"


def test_azure_names_match_in_every_spelling(fixtures: Path) -> None:
    table = load_shapes(fixtures / "shapes_azure.yaml")
    for name in ("Standard_E4s_v6", "standarde4sv6", "E4s_v6"):
        assert table.get(name).vcpus == 4
    assert table.get("Standard_E2s_v6") is None


def test_bad_entries_are_located(tmp_path: Path) -> None:
    path = tmp_path / "shapes.yaml"
    path.write_text("shapes:\n  ok: {vcpus: 2, ram_gib: 4}\n  bad: {vcpus: two, ram_gib: 4}\n"
                    "  odd: {vcpus: 2, ram_gib: 4, disks: 3}\n")
    with pytest.raises(PriceFileError) as err:
        load_shapes(path)
    assert err.value.problems == [f"{path}:3: bad: needs integer vcpus and numeric ram_gib",
                                  f"{path}:4: odd: unknown keys ['disks']"]
    path.write_text("[1, 2]")
    with pytest.raises(PriceFileError, match="not an instance-type table"):
        load_shapes(path)
