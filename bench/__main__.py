"""List the benchmarks (each is a module of this package with its own ``main``)."""

import pkgutil
from pathlib import Path

for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
    if not info.name.startswith("_"):
        print(f"python -m bench.{info.name}")
