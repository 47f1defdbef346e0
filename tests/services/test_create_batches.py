"""Concurrent creates of one project share a transaction (issue 23 item 15): each keeps its own answer
(a quota or placement refusal is that create's alone, counted against the ones before it in the same
transaction), and a batch whose write fails leaves nothing and writes each create on its own."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from metavmm.api import keys
from metavmm.catalog.models import Operation, OperationEvent, QuotaReservation, Workload
from metavmm.foundation.errors import NoPlacement, QuotaExceeded
from metavmm.services import quotas
from metavmm.services.identity import Identity
from metavmm.services.workloads.requests import CreateRequest


def _member(w: Any) -> Identity:
    return Identity(w.ids["user_alpha_member"], "alpha_member", w.ids["alpha"], "alpha", "member", "token")


async def _rows(w: Any, ids: list[str]) -> tuple[Counter[str], Counter[str], Counter[str]]:
    async with w.app[keys.SESSIONS]() as s:
        workloads = Counter((await s.exec(select(Workload.id).where(Workload.id.in_(ids)))).all())  # type: ignore[attr-defined]
        held = Counter((await s.exec(select(QuotaReservation.workload_id).where(
            QuotaReservation.workload_id.in_(ids), QuotaReservation.resource == "instances"))).all())  # type: ignore[union-attr]
        ops = Counter((await s.exec(select(Operation.target_id).where(Operation.target_id.in_(ids),  # type: ignore[union-attr]
                                                                      Operation.kind == "create"))).all())
    return workloads, held, ops


async def test_one_transaction_each_create_its_own_answer(world: Any) -> None:
    _, w = world
    svc = w.app[keys.WORKLOADS]
    assert svc.resolved is not None and svc.batches is not None
    svc.resolved.ttl_s = 3600  # the creates below find their shape in the cache: none waits before queueing
    ident = _member(w)
    await svc.create(ident, CreateRequest(name="warm", vcpus=1, ram_mib=64))  # alpha: 2 of 10 instances now
    too_big = CreateRequest(name="too-big", vcpus=100_000, ram_mib=64)  # no host has it
    with pytest.raises(NoPlacement):
        await svc.create(ident, too_big)
    before = svc.batches.transactions
    reqs = [CreateRequest(name=f"b{i}", vcpus=1, ram_mib=64) for i in range(10)]
    reqs.insert(3, too_big)
    answers = await asyncio.gather(*(svc.create(ident, r) for r in reqs), return_exceptions=True)
    assert svc.batches.transactions == before + 1  # all eleven were decided in one transaction
    assert isinstance(answers[3], NoPlacement)
    rest = answers[:3] + answers[4:]
    accepted = [a for a in rest if not isinstance(a, BaseException)]
    refused = [a for a in rest if isinstance(a, BaseException)]
    assert len(accepted) == 8 and all(isinstance(e, QuotaExceeded) for e in refused) and len(refused) == 2
    assert [a.workload.name for a in accepted] == [f"b{i}" for i in range(8)]  # in the order they came
    ids = [a.workload.id for a in accepted]
    assert len({a.operation.id for a in accepted}) == 8
    assert await _rows(w, ids) == (Counter(ids), Counter(ids), Counter(ids))
    async with w.app[keys.SESSIONS]() as s:  # each operation's "planned" line, written in one statement
        events = (await s.exec(select(OperationEvent).where(
            col(OperationEvent.operation_id).in_([a.operation.id for a in accepted])))).all()
    assert sorted(e.operation_id for e in events if e.message.startswith("create planned: hold-quota")) == \
        sorted(a.operation.id for a in accepted)
    assert all(e.id is not None and e.at is not None and e.level == "info" for e in events)


async def test_a_failed_batch_writes_nothing_then_each_create_alone(world: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _, w = world
    svc = w.app[keys.WORKLOADS]
    svc.resolved.ttl_s = 3600
    ident = _member(w)
    await svc.create(ident, CreateRequest(name="warm", vcpus=1, ram_mib=64))
    real, calls = quotas.hold_many, []

    async def fail_first(session: Any, project_id: int, needs: Any) -> None:
        calls.append(len(needs))
        if len(calls) == 1:
            raise IntegrityError("INSERT", {}, Exception("simulated constraint failure"))
        await real(session, project_id, needs)

    monkeypatch.setattr(quotas, "hold_many", fail_first)
    answers = await asyncio.gather(*(svc.create(ident, CreateRequest(name=f"f{i}", vcpus=1, ram_mib=64))
                                     for i in range(4)))
    assert calls == [4, 1, 1, 1, 1]  # the batch, then each create on its own
    ids = [a.workload.id for a in answers]
    assert await _rows(w, ids) == (Counter(ids), Counter(ids), Counter(ids))
    async with w.app[keys.SESSIONS]() as s:  # the failed batch's rows were rolled back: one row per name
        names = Counter((await s.exec(select(Workload.name).where(Workload.name.startswith("f")))).all())  # type: ignore[attr-defined]
    assert names == {f"f{i}": 1 for i in range(4)}
