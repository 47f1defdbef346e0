"""The executor on a real catalog (SQLite and PostgreSQL): order, outputs, retries with backoff,
rollback in reverse, cancel, idempotency keys, and leases that keep two executors off one step."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from metavmm.catalog.models import OperationState, aware, utcnow
from metavmm.foundation.config import FederationConfig, OperationsConfig
from metavmm.foundation.errors import Conflict, ProviderUnavailable, ValidationError
from metavmm.services.operations import store
from metavmm.services.operations.actions import action
from metavmm.services.operations.context import StepContext
from metavmm.services.operations.executor import Executor
from metavmm.services.operations.plan import Step
from tests.polling import polls

CALLS: list[tuple[str, str]] = []
FAILURES: dict[str, int] = {}  # step name -> transient failures still to raise
GATES: dict[str, asyncio.Event] = {}


@action("test.note")
async def note(ctx: StepContext, *, tag: str, fail: str | None = None) -> dict[str, Any]:
    """Record the call; fail transiently while FAILURES says so, or for good when ``fail`` is set."""
    CALLS.append((ctx.operation_id, tag))
    if FAILURES.get(tag, 0) > 0:
        FAILURES[tag] -= 1
        raise ProviderUnavailable("busy", provider="test", operation=tag)
    if fail:
        raise ValidationError(fail)
    if tag in GATES:
        await GATES[tag].wait()
    await ctx.log(f"noted {tag}")
    return {tag: len(CALLS), "seen": sorted(ctx.outputs)}


@action("test.undo")
async def undo(ctx: StepContext, *, tag: str, **_: Any) -> None:
    """Compensation: record that ``tag`` was undone."""
    CALLS.append((ctx.operation_id, f"undo:{tag}"))


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()
    FAILURES.clear()
    GATES.clear()


def config(**ops: Any) -> FederationConfig:
    return FederationConfig(operations=OperationsConfig(**{"retry_base_s": 0.01, "lease_s": 5, **ops}))


def steps(*tags: str, fail_at: str | None = None) -> list[Step]:
    return [Step(t, "test.note", {"tag": t, "fail": "bad input" if t == fail_at else None}, compensate="test.undo")
            for t in tags]


def calls(op_id: str) -> list[str]:
    return [tag for oid, tag in CALLS if oid == op_id]


async def test_steps_run_in_order_and_outputs_flow_forward(sessions) -> None:
    op, created = await store.submit(sessions, kind="test", steps=steps("a", "b", "c"))
    assert created and op.state == OperationState.PENDING and len(op.steps) == 3
    assert await Executor(sessions, config()).run(op.id)
    done = await store.get(sessions, op.id)
    assert done.state == OperationState.SUCCEEDED and done.progress == 1.0 and done.current_step == 3
    assert calls(op.id) == ["a", "b", "c"]
    assert done.outputs["seen"] == ["a", "b", "seen"]  # c saw what a and b produced
    assert [s["state"] for s in done.steps] == ["done"] * 3
    assert done.steps[1]["log"] == ["noted b"]
    messages = [e.message for e in await store.events(sessions, op.id)]
    assert messages[0].startswith("test planned: a, b, c") and messages[-1] == "succeeded"


async def test_transient_errors_are_retried_with_backoff(sessions) -> None:
    FAILURES["b"] = 2
    op, _ = await store.submit(sessions, kind="test", steps=steps("a", "b"))
    await Executor(sessions, config(max_attempts=3)).run(op.id)
    done = await store.get(sessions, op.id)
    assert done.state == OperationState.SUCCEEDED
    assert done.steps[1]["attempts"] == 3 and calls(op.id) == ["a", "b", "b", "b"]
    assert sum("retry in" in e.message for e in await store.events(sessions, op.id)) == 2


async def test_retries_exhausted_roll_back_in_reverse(sessions) -> None:
    FAILURES["c"] = 5
    op, _ = await store.submit(sessions, kind="test", steps=steps("a", "b", "c", "d"))
    await Executor(sessions, config(max_attempts=2)).run(op.id)
    done = await store.get(sessions, op.id)
    assert done.state == OperationState.ROLLED_BACK and "busy" in (done.error or "")
    assert calls(op.id) == ["a", "b", "c", "c", "undo:c", "undo:b", "undo:a"]
    assert [s["state"] for s in done.steps] == ["compensated"] * 3 + ["pending"]


async def test_permanent_error_is_not_retried(sessions) -> None:
    op, _ = await store.submit(sessions, kind="test", steps=steps("a", "b", fail_at="b"))
    await Executor(sessions, config(max_attempts=5)).run(op.id)
    done = await store.get(sessions, op.id)
    assert done.state == OperationState.ROLLED_BACK and done.error == "bad input"
    assert calls(op.id) == ["a", "b", "undo:b", "undo:a"]


async def test_errors_are_told_plainly_and_logged_whole(sessions, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 16.6: an operation's error, step error, message and events carry no SQL, no parameters and no
    file path of the broker; the broker's log keeps the whole text for the admin."""
    raw = ("cannot write /var/lib/metavmm/scratch/f00d.qcow2: (sqlite3.OperationalError) disk I/O error\n"
           "[SQL: UPDATE operations SET token=? WHERE id=?]\n[parameters: ('s3cret', 'x')]\n"
           "(Background on this error at: https://sqlalche.me/e/20/e3q8)")
    plan = [Step("a", "test.note", {"tag": "a"}, compensate="test.undo"),
            Step("b", "test.note", {"tag": "b", "fail": raw}, compensate="test.undo")]
    op, _ = await store.submit(sessions, kind="test", steps=plan)
    with caplog.at_level("WARNING", logger="metavmm.services.operations.executor"):
        await Executor(sessions, config()).run(op.id)
    done = await store.get(sessions, op.id)
    told = "cannot write f00d.qcow2: OperationalError: disk I/O error"
    assert done.state == OperationState.ROLLED_BACK and done.error == told
    assert done.steps[1]["error"] == told and done.message == f"rolled back: {told}"
    events = " ".join(e.message for e in await store.events(sessions, op.id))
    for secret in ("[SQL:", "s3cret", "/var/lib/metavmm", "sqlite3."):
        assert secret not in events and secret not in (done.error or "")
    assert "[parameters: ('s3cret', 'x')]" in caplog.text and "/var/lib/metavmm/scratch/f00d.qcow2" in caplog.text


async def test_failure_after_commit_step_does_not_roll_back(sessions) -> None:
    plan = [Step("a", "test.note", {"tag": "a"}, compensate="test.undo", commit=True),
            Step("b", "test.note", {"tag": "b", "fail": "no"}, compensate="test.undo")]
    op, _ = await store.submit(sessions, kind="test", steps=plan)
    await Executor(sessions, config()).run(op.id)
    done = await store.get(sessions, op.id)
    assert done.state == OperationState.FAILED and calls(op.id) == ["a", "b"]
    with pytest.raises(Conflict):
        await store.request_cancel(sessions, op.id)


async def test_idempotency_key_returns_the_first_operation(sessions) -> None:
    first, created = await store.submit(sessions, kind="test", steps=steps("a"), target_id="w1",
                                        idempotency_key="req-1")
    again, created_again = await store.submit(sessions, kind="test", steps=steps("a"), target_id="w1",
                                              idempotency_key="req-1")
    assert created and not created_again and again.id == first.id
    with pytest.raises(Conflict, match="already used"):
        await store.submit(sessions, kind="other", steps=steps("a"), target_id="w1", idempotency_key="req-1")
    results = await asyncio.gather(*(store.submit(sessions, kind="test", steps=steps("a"), target_id="w2",
                                                  idempotency_key="req-2") for _ in range(5)))
    assert len({op.id for op, _ in results}) == 1 and sum(c for _, c in results) == 1


async def test_cancel_before_start_and_while_running(sessions) -> None:
    queued, _ = await store.submit(sessions, kind="test", steps=steps("a"))
    assert (await store.request_cancel(sessions, queued.id)).state == OperationState.CANCELLED
    assert not await Executor(sessions, config()).run(queued.id)  # nothing to claim
    assert calls(queued.id) == []

    GATES["b"] = asyncio.Event()
    op, _ = await store.submit(sessions, kind="test", steps=steps("a", "b", "c"))
    runner = asyncio.create_task(Executor(sessions, config()).run(op.id))
    while calls(op.id) != ["a", "b"]:
        await asyncio.sleep(0.01)
    await store.request_cancel(sessions, op.id)
    GATES["b"].set()  # the running step finishes; the next one does not start
    await runner
    done = await store.get(sessions, op.id)
    assert done.state == OperationState.CANCELLED and calls(op.id) == ["a", "b", "undo:b", "undo:a"]
    with pytest.raises(Conflict, match="already ended"):
        await store.request_cancel(sessions, op.id)


LEASE_S = 4.0
"""The lease of the lease test: its heartbeat (every third of it) must land before it runs out, so a loop or a
database stalled on a loaded machine for a fraction of a second must not lose it (0.6 s did, by chance)."""


async def test_lease_keeps_a_second_executor_off_and_expiry_resumes(sessions) -> None:
    GATES["b"] = asyncio.Event()
    op, _ = await store.submit(sessions, kind="test", steps=steps("a", "b", "c"))
    first = Executor(sessions, config(lease_s=LEASE_S), owner="first")
    runner = asyncio.create_task(first.run(op.id))
    while calls(op.id) != ["a", "b"]:
        await asyncio.sleep(0.01)
    claimed = aware((await store.get(sessions, op.id)).lease_until)
    while aware((await store.get(sessions, op.id)).lease_until) <= claimed or utcnow() <= claimed:
        await asyncio.sleep(0.05)  # until the first lease ran out and a heartbeat renewed it (not a guess at a time)
    second = Executor(sessions, config(lease_s=LEASE_S), owner="second")
    assert not await second.run(op.id)  # the heartbeat kept it
    runner.cancel()  # the first executor dies inside step b (its heartbeat dies with it)
    await asyncio.gather(runner, return_exceptions=True)
    GATES["b"].set()
    left = aware((await store.get(sessions, op.id)).lease_until)
    while utcnow() <= left:
        await asyncio.sleep(0.05)
    assert await second.run(op.id)  # the dead executor's lease ran out
    done = await store.get(sessions, op.id)
    assert done.state == OperationState.SUCCEEDED
    assert calls(op.id) == ["a", "b", "b", "c"]  # b re-ran (idempotent), a did not
    assert done.steps[1]["attempts"] == 2


async def test_a_stale_executor_cannot_write(sessions) -> None:
    op, _ = await store.submit(sessions, kind="test", steps=steps("a"))
    assert await store.claim(sessions, op.id, "old", lease_s=0.01)
    await asyncio.sleep(0.05)
    assert await store.claim(sessions, op.id, "new", lease_s=30)
    with pytest.raises(store.LeaseLost):
        await store.fenced_update(sessions, op.id, "old", message="stale")
    assert (await store.get(sessions, op.id)).message != "stale"


async def test_serve_loop_runs_submitted_operations(sessions) -> None:
    ex = Executor(sessions, config(concurrency=3))
    loop = asyncio.create_task(ex.serve(poll_s=0.1))
    ops = [(await store.submit(sessions, kind="test", steps=steps("a", "b")))[0] for _ in range(6)]
    ex.notify()
    for _ in polls():
        states = {(await store.get(sessions, o.id)).state for o in ops}
        if states == {OperationState.SUCCEEDED}:
            break
        await asyncio.sleep(0.05)
    loop.cancel()
    await asyncio.gather(loop, return_exceptions=True)
    assert states == {OperationState.SUCCEEDED}
    assert all(calls(o.id) == ["a", "b"] for o in ops)


async def test_empty_plan_and_bad_key_are_refused(sessions) -> None:
    with pytest.raises(ValidationError):
        await store.submit(sessions, kind="test", steps=[])
    with pytest.raises(ValidationError):
        await store.submit(sessions, kind="test", steps=steps("a"), idempotency_key="x" * 200)


async def test_two_jobs_for_one_operation_in_one_executor_run_it_once(sessions) -> None:
    """A worker may receive two jobs for the same operation (a sweeper re-queued it): one run only."""
    GATES["a"] = asyncio.Event()
    op, _ = await store.submit(sessions, kind="test", steps=steps("a", "b"))
    ex = Executor(sessions, config())
    first = asyncio.create_task(ex.run(op.id))
    while calls(op.id) != ["a"]:
        await asyncio.sleep(0.01)
    assert not await ex.run(op.id)  # the same executor, a second job: refused by the claim
    GATES["a"].set()
    assert await first
    assert calls(op.id) == ["a", "b"]


async def test_cancel_during_a_backoff_does_not_wait_for_the_retries(sessions) -> None:
    FAILURES["b"] = 10
    op, _ = await store.submit(sessions, kind="test", steps=steps("a", "b", "c"))
    runner = asyncio.create_task(Executor(sessions, config(max_attempts=10, retry_base_s=0.5)).run(op.id))
    while calls(op.id) != ["a", "b"]:
        await asyncio.sleep(0.01)
    await store.request_cancel(sessions, op.id)
    await asyncio.wait_for(runner, 60)  # a bound on a hang: the backoffs it cuts short are minutes long
    done = await store.get(sessions, op.id)
    assert done.state == OperationState.CANCELLED and calls(op.id) == ["a", "b", "undo:b", "undo:a"]


def test_transient_errors_are_told_apart() -> None:
    from sqlalchemy.exc import IntegrityError, OperationalError

    from metavmm.foundation.errors import AuthError, DriverError, ProviderNotFound
    from metavmm.services.operations.actions import is_transient

    assert is_transient(ProviderUnavailable("down")) and is_transient(TimeoutError())
    assert is_transient(OperationalError("select", {}, Exception("server closed the connection")))
    assert is_transient(DriverError("odd answer"))
    assert not is_transient(IntegrityError("insert", {}, Exception("duplicate key")))
    assert not is_transient(ProviderNotFound("no VM")) and not is_transient(AuthError("bad key"))
    assert not is_transient(ValidationError("bad input")) and not is_transient(KeyError("x"))


async def test_retry_backoff_is_bounded(sessions) -> None:
    """A huge base (or many doublings) must not park a step for days: the next attempt is at most 5 min away."""
    from metavmm.services.operations.executor import RETRY_MAX_S

    FAILURES["a"] = 1
    op, _ = await store.submit(sessions, kind="test", steps=steps("a"))
    runner = asyncio.create_task(Executor(sessions, config(max_attempts=20, retry_base_s=1000)).run(op.id))
    while (waiting := await store.get(sessions, op.id)).not_before is None:
        await asyncio.sleep(0.02)
    delay = (aware(waiting.not_before) - aware(waiting.updated_at)).total_seconds()
    # not_before is drawn before the write stamps updated_at: on a loaded machine seconds may pass between them
    assert RETRY_MAX_S / 2 - 60 <= delay <= RETRY_MAX_S <= 300
    await store.request_cancel(sessions, op.id)  # cuts the backoff short
    await asyncio.wait_for(runner, 60)  # a bound on a hang: the backoffs it cuts short are minutes long
    assert (await store.get(sessions, op.id)).state == OperationState.CANCELLED
