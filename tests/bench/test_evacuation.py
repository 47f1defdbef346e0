"""bench.evacuation runs (it called the removed ``flows.provision`` and raised before measuring anything):
a small run of both ways of evacuating, on the sim provider, moves every workload of the host."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import evacuation


async def test_both_ways_move_every_workload_of_the_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAVMM_STATE_DIR", str(tmp_path))  # the bench points it at each run's own state
    _, batch_moves = await evacuation.batch(tmp_path, 2, 3)
    _, single_moves = await evacuation.one_by_one(tmp_path, 2, 3)
    assert (batch_moves, single_moves) == (3, 3)
