"""How many inputs the fuzzers ran (issue 16 item 10 asks for the counts): each fuzzed function counts
its calls; the totals are printed at the end of the pytest run (tests/api/conftest.py) and, when
$METAVMM_FUZZ_LOG names a file, appended to it as JSON lines."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
COUNTS: Counter[str] = Counter()


def counted(fn: F) -> F:
    """Count each call of ``fn`` (put it under @given, so every example counts once)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        COUNTS[fn.__name__] += 1
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def add(name: str, n: int = 1) -> None:
    COUNTS[name] += n
