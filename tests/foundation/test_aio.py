"""The broker's periodic rounds: a failed round is logged and retried; a round the stop cuts short is quiet."""

from __future__ import annotations

import asyncio
import logging

import pytest

from metavmm.foundation.aio import being_cancelled, repeat

LOG = logging.getLogger("test.repeat")


async def test_a_failed_round_is_logged_with_its_traceback_and_the_next_one_runs(
        caplog: pytest.LogCaptureFixture) -> None:
    stopping, rounds = asyncio.Event(), []

    async def work() -> None:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise RuntimeError("provider blinked")
        stopping.set()

    with caplog.at_level(logging.INFO, logger="test.repeat"):
        await asyncio.wait_for(repeat(stopping, 0.01, work, "sync", LOG), 10)
    assert rounds == [0, 1]
    failed = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failed) == 1 and failed[0].exc_info and "sync failed" in failed[0].getMessage()


async def test_an_error_of_a_round_the_stop_cut_short_is_one_quiet_line(caplog: pytest.LogCaptureFixture) -> None:
    stopping = asyncio.Event()

    async def work() -> None:
        stopping.set()  # the broker was told to stop while this round ran
        raise RuntimeError("Can't reconnect until invalid transaction is rolled back")

    with caplog.at_level(logging.INFO, logger="test.repeat"):
        await asyncio.wait_for(repeat(stopping, 0.01, work, "sync", LOG), 10)
    assert [(r.levelno, r.exc_info) for r in caplog.records] == [(logging.INFO, None)]
    assert "cut short by the stop" in caplog.records[0].getMessage()


async def test_an_error_raised_while_cancelled_counts_as_the_cancellation() -> None:
    seen: list[bool] = []
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append(being_cancelled())
            raise RuntimeError("garbled by the cancellation") from None

    task = asyncio.create_task(repeat(asyncio.Event(), 0.01, work, "sync", LOG))
    await started.wait()
    task.cancel()
    await asyncio.wait_for(task, 10)  # ends quietly: the error was the cancellation's
    assert seen == [True]


async def test_an_interval_of_zero_runs_one_round() -> None:
    rounds: list[int] = []

    async def work() -> None:
        rounds.append(1)

    await asyncio.wait_for(repeat(asyncio.Event(), 0, work, "sync", LOG), 10)
    assert rounds == [1]
