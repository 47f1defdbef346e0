"""Plans as the engine stores them: the ordered steps of an operation, written whole before the first runs.

The step type itself, :class:`~metavmm.scheduler.plan.Step`, lives with the scheduler, which produces
plans (the engine consumes them). Here each step becomes a plain JSON object in the operation row, so
a restarted broker (or another worker) reads exactly what the crashed one was doing. Its ``action``
names an entry of the action registry (:mod:`metavmm.services.operations.actions`); ``compensate``
names the action that undoes it during a rollback; ``commit`` marks the point of no return (once it
is done, a failure or a cancel no longer rolls back: the operation pushes forward, e.g. the source of
a migration is cleaned up only after the target was verified, and after that the target is the truth).
The row keeps the scheduler's ``detail`` of a step (why it is there) when it has one.
"""

from __future__ import annotations

import enum
from typing import Any

from metavmm.scheduler.plan import Step

__all__ = ["MAX_LOG_LINES", "Step", "StepState", "overall_progress", "plan_rows", "step_row", "transfer_of",
           "transfer_text"]


class StepState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"  # failed transiently; retried after a backoff
    DONE = "done"
    FAILED = "failed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"


MAX_LOG_LINES = 50
"""Log lines kept per step in the row (the full history is in operation_event)."""


def step_row(step: Step) -> dict[str, Any]:
    """A step as its operation row holds it, pending."""
    row = {
        "name": step.name, "action": step.action, "args": dict(step.args), "compensate": step.compensate,
        "commit": step.commit, "weight": step.weight, "state": StepState.PENDING.value, "attempts": 0,
        "started_at": None, "finished_at": None, "error": None, "log": [], "progress": 0.0,
    }
    if step.detail:
        row["detail"] = step.detail
    return row


def plan_rows(steps: list[Step]) -> list[dict[str, Any]]:
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise ValueError(f"step names must be unique within a plan: {names}")
    return [step_row(s) for s in steps]


def transfer_of(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The bytes figures (:meth:`StepContext.transfer`) of the step moving data now, with its name; None
    when no running step reports any (what the dashboard and the event stream show as throughput)."""
    for s in steps:
        if s["state"] in (StepState.RUNNING, StepState.WAITING) and s.get("transfer"):
            return {"step": s["name"], **s["transfer"]}
    return None


def transfer_text(transfer: dict[str, object]) -> str:
    """A step's bytes as people read them: "12.0 of 64.0 MiB · 30.5 MiB/s · 2 s left" (the dashboard's
    ui.js writes the same words when an event moves them; the CLI's ``operations show`` prints them)."""
    def mib(n: object) -> str:
        return f"{float(n) / 2**20:.1f}" if isinstance(n, int | float) else "?"

    rate, eta = transfer.get("bytes_per_s"), transfer.get("eta_s")
    return (f"{mib(transfer.get('bytes'))} of {mib(transfer.get('total_bytes'))} MiB"
            + (f" · {mib(rate)} MiB/s" if rate else "") + (f" · {float(eta):.0f} s left" if eta is not None
                                                           and isinstance(eta, int | float) else ""))


def overall_progress(steps: list[dict[str, Any]]) -> float:
    """0..1: done steps count whole, the running step by its own progress, weighted."""
    total = sum(float(s.get("weight", 1.0)) for s in steps) or 1.0
    done = 0.0
    for s in steps:
        w = float(s.get("weight", 1.0))
        if s["state"] in (StepState.DONE, StepState.COMPENSATED, StepState.COMPENSATING):
            done += w
        elif s["state"] in (StepState.RUNNING, StepState.WAITING):
            done += w * float(s.get("progress", 0.0))
    return round(min(done / total, 1.0), 4)
