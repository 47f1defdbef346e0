"""Every benchmark still names what exists: each ``module.attribute`` a bench file reads off a module it
imports (``flows.provision``...) is there. Benchmarks run by hand, not in the suite, so a function
renamed or removed under them (seven called the removed ``flows.provision``) broke them silently; this
check finds that without running them (most need libvirt, nova or vcsim and minutes)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _imported_modules(tree: ast.Module) -> dict[str, ModuleType]:
    """Local name -> module, for every import in the file that binds a module (``from a import b`` where
    ``a.b`` is a module, ``import a.b as c``)."""
    out: dict[str, ModuleType] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    out[alias.asname] = importlib.import_module(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                try:
                    out[alias.asname or alias.name] = importlib.import_module(f"{node.module}.{alias.name}")
                except ModuleNotFoundError:
                    continue  # a class or function, not a module
    return out


def _missing(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    modules = _imported_modules(tree)
    return sorted({f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}"  # type: ignore[attr-defined]
                   for node in ast.walk(tree)
                   if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                   and node.value.id in modules and not hasattr(modules[node.value.id], node.attr)})


@pytest.mark.parametrize("path", sorted(BENCH.glob("*.py")), ids=lambda p: p.name)
def test_every_module_attribute_a_bench_reads_exists(path: Path) -> None:
    assert _missing(path) == []
