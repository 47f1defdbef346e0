"""The fuzzers' input counts at the end of the run (see tests/api/fuzzcount.py)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from tests.api.fuzzcount import COUNTS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not COUNTS:
        return
    terminalreporter.write_sep("-", f"fuzz inputs run: {sum(COUNTS.values())}")
    for name, n in sorted(COUNTS.items()):
        terminalreporter.write_line(f"{n:>9}  {name}")
    if os.environ.get("METAVMM_FUZZ_LOG"):
        with open(os.environ["METAVMM_FUZZ_LOG"], "a", encoding="utf-8") as out:
            out.write(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **COUNTS}) + "\n")
