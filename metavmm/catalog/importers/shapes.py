"""Instance-type tables: the shape (vCPU, RAM, GPU, arch) behind a provider's flavor name.

Price sources name flavors but rarely their shapes (Libcloud's pricing.json, Azure's Retail
Prices). An importer looks names up in a :class:`ShapeTable` read from a file the user points at:
either Libcloud's EC2 instance-type table (``ec2_instance_types.json``: ``ram`` in MiB and AWS
price-list attributes in ``extra``), or a small YAML/JSON file of our own::

    shapes:
      Standard_E4s_v6: {vcpus: 4, ram_gib: 32}
      ND96isr_H100_v5: {vcpus: 96, ram_gib: 1900, gpu: "H100:8"}
      c2d-highmem-4:   {vcpus: 4, ram_gib: 32, family: c2d}
    kind: azure   # optional: the provider kind these names belong to

Libcloud's EC2 table applies to ``aws`` prices only.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from metavmm.foundation.prices import PriceFileError, Shape, normalise_arch

# The AWS price list states a GPU count but not the model; the instance family does.
AWS_GPU_MODELS = {
    "p5": "H100", "p5e": "H200", "p5en": "H200", "p4d": "A100", "p4de": "A100", "p3": "V100", "p3dn": "V100",
    "p2": "K80", "g6": "L4", "g6e": "L40S", "g5": "A10G", "g5g": "T4G", "g4dn": "T4", "g4ad": "V520",
    "g3": "M60", "g3s": "M60", "gr6": "L4",
}


def shape_key(name: str) -> str:
    """One spelling per flavor name: Azure's ``Standard_E4s_v6``, ``standarde4sv6`` and ``E4s_v6`` agree."""
    key = re.sub(r"[^a-z0-9.]", "", name.lower())
    return key.removeprefix("standard") or key


@dataclass
class ShapeTable:
    """Flavor name -> shape (case-insensitive), plus the family of names that have one."""

    shapes: dict[str, Shape] = field(default_factory=dict)
    families: dict[str, str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # key -> the name as written
    source: str = ""
    kind: str | None = None  # the provider kind the names belong to (None: any)

    def applies_to(self, kind: str) -> bool:
        return self.kind is None or self.kind == kind

    def get(self, name: str) -> Shape | None:
        return self.shapes.get(shape_key(name))

    def family(self, name: str) -> str | None:
        return self.families.get(shape_key(name))

    def add(self, name: str, shape: Shape, family: str | None = None) -> None:
        self.shapes[shape_key(name)] = shape
        self.names[shape_key(name)] = name
        if family:
            self.families[shape_key(name)] = family

    def __len__(self) -> int:
        return len(self.shapes)


def _gib_to_mib(value: Any) -> int:
    return int((Decimal(str(value)) * 1024).to_integral_value())


def _aws_shape(name: str, entry: dict[str, Any]) -> Shape:
    extra = entry.get("extra") or {}
    vcpus = int(str(extra.get("vcpu") or entry.get("vcpus") or "0"))
    ram_mib = int(entry.get("ram") or 0)
    gpus = str(extra.get("gpu") or "0")
    gpu_count = int(gpus) if gpus.isdigit() else 0
    family = name.split(".")[0]
    processor = str(extra.get("physicalProcessor") or "")
    arch = "aarch64" if "graviton" in processor.lower() or re.match(r"^[a-z]+\d+g", family) else "x86_64"
    gpu_model = AWS_GPU_MODELS.get(family) if gpu_count else None
    return Shape(vcpus, ram_mib, gpu_model or ("GPU" if gpu_count else None), gpu_count, arch)


def _own_shape(name: str, entry: Any, where: str) -> tuple[Shape, str | None]:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: {name}: expected a mapping with vcpus and ram_gib")
    unknown = set(entry) - {"vcpus", "ram_gib", "gpu", "arch", "family"}
    if unknown:
        raise ValueError(f"{where}: {name}: unknown keys {sorted(unknown)}")
    try:
        vcpus = int(entry["vcpus"])
        ram_mib = _gib_to_mib(entry["ram_gib"])
    except (KeyError, ValueError, TypeError, InvalidOperation):
        raise ValueError(f"{where}: {name}: needs integer vcpus and numeric ram_gib") from None
    if vcpus < 1 or ram_mib < 1:
        raise ValueError(f"{where}: {name}: vcpus and ram_gib must be positive")
    gpu_model, gpu_count = None, 0
    if entry.get("gpu"):
        model, _, count = str(entry["gpu"]).partition(":")
        if not count.isdigit() and count:
            raise ValueError(f"{where}: {name}: gpu must look like H100:8")
        gpu_model, gpu_count = model, int(count or 1)
    family = entry.get("family") or name.split("-")[0].split(".")[0]
    return Shape(vcpus, ram_mib, gpu_model, gpu_count, normalise_arch(entry.get("arch"))), family


def load_shapes(path: str | Path) -> ShapeTable:
    """Read an instance-type table (Libcloud's EC2 JSON, or our ``shapes:`` YAML/JSON)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PriceFileError([f"{path}: cannot read the instance-type table: {exc.strerror}"]) from None
    try:
        data = json.loads(text)  # Libcloud's table is JSON: 20x faster than the YAML parser
    except json.JSONDecodeError:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise PriceFileError([f"{path}:{mark.line + 1 if mark else 1}: not valid YAML/JSON"]) from None
    table = ShapeTable(source=str(path))
    if isinstance(data, dict) and isinstance(data.get("shapes"), dict):
        table.kind = data.get("kind")
        problems = []
        lines = _key_lines(text)
        for name, entry in data["shapes"].items():
            try:
                shape, family = _own_shape(str(name), entry, f"{path}:{lines.get(str(name), '?')}")
            except ValueError as exc:
                problems.append(str(exc))
                continue
            table.add(str(name), shape, family)
        if problems:
            raise PriceFileError(problems)
    elif isinstance(data, dict) and all(isinstance(v, dict) and "ram" in v for v in data.values()):
        table.kind = "aws"
        for name, entry in data.items():
            table.add(name, _aws_shape(name, entry), name.split(".")[0])
    else:
        raise PriceFileError([f"{path}:1: not an instance-type table (expected 'shapes:' or Libcloud's EC2 table)"])
    return table


def _key_lines(text: str) -> dict[str, int]:
    """Line of each mapping key under ``shapes:`` (for error messages)."""
    out: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^\s+[\"']?([^\"':]+)[\"']?\s*:", line)
        if m:
            out.setdefault(m.group(1).strip(), number)
    return out
