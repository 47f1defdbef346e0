"""Bounded polling for tests: a loop that waits for a condition stops at a wall-clock deadline, not after a
count of iterations.

The full suite runs about 45 minutes on two loaded CPUs, where a TCG guest, a provider emulator or the
operations engine can be many times slower than on an idle machine. A wait is a bound on a hang, never an
assertion on speed: it must be generous (``WAIT_S``), and the assertion after it checks the condition.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

WAIT_S = 240.0
"""How long a test waits for something that normally takes seconds (under pytest-timeout's 300 s per test)."""


def polls(timeout_s: float = WAIT_S) -> Iterator[int]:
    """Iterations of a polling loop (0, 1, ...) until ``timeout_s`` of wall time passed; the loop's body
    sleeps between them. ``for _ in polls(): ... break`` / ``else: raise`` reads like ``range(n)`` did."""
    deadline = time.monotonic() + timeout_s
    i = 0
    while True:
        yield i
        i += 1
        if time.monotonic() > deadline:
            return
