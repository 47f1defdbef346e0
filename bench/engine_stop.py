"""How long ``Engine.stop()`` takes, before and after issue 24, side by side in one run.

Run: .venv/bin/python -m bench.engine_stop [--rounds 5] [--steps 1 4 16] [--grace 2]

"before" is the engine and executor of commit ``BEFORE`` (loaded from git into this process, beside the
current ones, on the same catalog code); "after" is the working tree. Each round starts an engine on a
fresh SQLite catalog, lets it take ``N`` operations whose first step is running, stops it and times
``stop()``; a fresh (current) engine then resumes the operations, and the table says how long that took
and how many steps ran a second time. Situations:

- idle: no operation;
- N steps that end within the grace (0.5 s) / that outlive it (60 s);
- one step that swallows a cancellation, as ``asyncio.wait_for`` can on Python 3.11 (issue 24): before,
  ``stop()`` never returns (cut off here after ``--hang-cap`` seconds and counted as such).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from metavmm.catalog import db
from metavmm.catalog.models import OperationState
from metavmm.foundation.config import FederationConfig, OperationsConfig
from metavmm.services.operations import store
from metavmm.services.operations.actions import action
from metavmm.services.operations.context import StepContext
from metavmm.services.operations.engine import Engine
from metavmm.services.operations.plan import Step

BEFORE = "b2ac9a5"
"""The spine commit the issue was filed against (Engine.stop cancelled the executor and awaited it)."""
REPO = Path(__file__).resolve().parents[1]
STARTED: dict[str, int] = {}  # "operation:step" -> how many times the step started


@action("bench.sleep")
async def sleep(ctx: StepContext, *, seconds: float, stubborn: bool = False, **_: Any) -> dict[str, Any]:
    """Sleep; ``stubborn`` loses the first cancellation (what wait_for can do on 3.11)."""
    key = f"{ctx.operation_id}:{ctx.step_index}"
    STARTED[key] = STARTED.get(key, 0) + 1
    if ctx.operation_id in RESUMING:
        return {}
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        if not stubborn:
            raise
        await asyncio.sleep(seconds)
    return {}


RESUMING: set[str] = set()  # operations the resuming engine runs quickly


def before_engine() -> type | None:
    """The Engine class of BEFORE (its executor too), or None when git cannot show it."""
    sources = {}
    for name in ("executor", "engine"):
        shown = subprocess.run(["git", "show", f"{BEFORE}:metavmm/services/operations/{name}.py"], cwd=REPO,
                               capture_output=True, text=True)
        if shown.returncode != 0:
            return None
        sources[name] = shown.stdout
    sources["engine"] = sources["engine"].replace("from metavmm.services.operations.executor import",
                                                  "from bench_before_executor import")
    for name in ("executor", "engine"):
        module = ModuleType(f"bench_before_{name}")
        sys.modules[module.__name__] = module
        exec(compile(sources[name], f"{BEFORE}:{name}.py", "exec"), module.__dict__)
    return sys.modules["bench_before_engine"].Engine  # type: ignore[no-any-return]


def config(concurrency: int, grace: float) -> FederationConfig:
    return FederationConfig(operations=OperationsConfig(concurrency=max(concurrency, 1), stop_grace_s=grace,
                                                        lease_s=2.0, reconcile_interval_s=0))


async def one_round(engine_class: Callable[..., Any], sessions: Any, cfg: FederationConfig, n: int, seconds: float,
                    stubborn: bool, hang_cap_s: float) -> tuple[float | None, float, int]:
    """(stop seconds or None when it did not return, resume seconds, steps run twice)."""
    engine = engine_class(sessions, cfg, "")
    await engine.start(**({"poll_s": 0.05} if engine_class is Engine else {}))  # before: woken below
    ids = []
    for _ in range(n):
        op, _ = await store.submit(sessions, kind="bench", steps=[
            Step("work", "bench.sleep", {"seconds": seconds, "stubborn": stubborn}), Step("then", "bench.sleep",
                                                                                          {"seconds": 0})])
        ids.append(op.id)
    if engine.executor is not None:
        engine.executor.notify()
    while any(STARTED.get(f"{i}:0", 0) == 0 for i in ids):
        await asyncio.sleep(0.01)
    started = time.perf_counter()
    stopping = asyncio.create_task(engine.stop())
    done, _ = await asyncio.wait({stopping}, timeout=hang_cap_s)
    took = time.perf_counter() - started if done else None
    if not done:  # a stop that never returns: cancel it again and again, as the test run's teardown cannot
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task() and task.get_name().startswith(("operation-", "operations-")):
                task.cancel()
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.gather(stopping, return_exceptions=True)
    RESUMING.update(ids)
    resumed_at = time.perf_counter()
    resumer = Engine(sessions, config(n, 0), "")
    await resumer.start(poll_s=0.05)
    try:
        while [op for i in ids if (op := await store.get(sessions, i)).state not in store.TERMINAL]:
            await asyncio.sleep(0.02)
    finally:
        await resumer.stop()
    resume_s = time.perf_counter() - resumed_at
    assert [(await store.get(sessions, i)).state for i in ids] == [OperationState.SUCCEEDED] * n
    return took, resume_s, sum(1 for i in ids for step in (0, 1) if STARTED.get(f"{i}:{step}", 0) > 1)


async def main(rounds: int, steps: list[int], grace: float, hang_cap_s: float) -> None:
    before = before_engine()
    if before is None:
        print(f"git cannot show {BEFORE}: only the current engine is measured")
    situations: list[tuple[str, int, float, bool]] = [("idle", 0, 0.0, False)]
    for n in steps:
        situations += [(f"{n} steps ending within the grace (0.5 s)", n, 0.5, False),
                       (f"{n} steps outliving the grace (60 s)", n, 60.0, False)]
    situations.append(("1 step swallowing a cancellation", 1, 60.0, True))
    print(f"stop_grace_s {grace}, lease_s 2, {rounds} rounds each; stop: median (max); "
          f"resume: until the next engine ended them; rerun: steps run a second time\n")
    print(f"{'situation':<44} {'':6} {'stop':>16} {'resume':>8} {'rerun':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, n, seconds, stubborn in situations:
            for name, engine_class in (("before", before), ("after", Engine)):
                if engine_class is None:
                    continue
                stops: list[float | None] = []
                resumes, reruns = [], 0
                for r in range(rounds):
                    url = f"sqlite:///{Path(tmp) / f'{name}-{len(label)}-{n}-{r}.db'}"
                    await db.upgrade_async(url)
                    sql = db.make_engine(url)
                    try:
                        took, resume_s, rerun = await one_round(engine_class, db.make_sessionmaker(sql),
                                                                config(n, grace), n, seconds, stubborn, hang_cap_s)
                    finally:
                        await sql.dispose()
                    stops.append(took)
                    if n:
                        resumes.append(resume_s)
                    reruns += rerun
                returned = [s for s in stops if s is not None]
                stop = f"{statistics.median(returned):.3f} ({max(returned):.3f})" if returned else ""
                if len(returned) < len(stops):
                    stop = f"{stop} HUNG {len(stops) - len(returned)}/{len(stops)}".strip()
                resume = f"{statistics.median(resumes):.2f}" if resumes else "-"
                print(f"{label if name == 'before' or before is None else '':<44} {name:6} {stop:>16} {resume:>8} "
                      f"{reruns if n else '-':>6}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--grace", type=float, default=2.0)
    parser.add_argument("--hang-cap", type=float, default=10.0, help="a stop not returned by then counts as hung")
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.steps, args.grace, args.hang_cap))
