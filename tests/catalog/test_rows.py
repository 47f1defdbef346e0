"""Rows written without the ORM (:func:`row_values`, :func:`detached`): the model stays the table's one
definition, so a Core INSERT of these values leaves the row the ORM would have left."""

from __future__ import annotations

import pytest
from sqlalchemy import insert

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Operation, OperationState, Workload, detached, row_values


def test_row_values_fill_every_column_with_the_models_defaults() -> None:
    values = row_values(Operation, kind="create", target_id="w")
    assert set(values) == set(Operation.model_fields)
    assert values["state"] == OperationState.PENDING and values["steps"] == [] and values["outputs"] == {}
    assert len(values["id"]) == 36 and values["created_at"].tzinfo is not None
    assert row_values(Operation, kind="create")["id"] != values["id"]  # each default factory called anew
    assert row_values(Workload, kind="compute", name="n", id="fixed")["id"] == "fixed"
    with pytest.raises(TypeError, match="kind is required"):
        row_values(Operation)


def test_detached_objects_read_like_the_orms() -> None:
    values = row_values(Workload, kind="compute", name="web", spec={"vcpus": 2}, project_id=3)
    w = detached(Workload, values)
    assert (w.id, w.name, w.spec, w.project_id, w.version, w.present) == (values["id"], "web", {"vcpus": 2}, 3, 1,
                                                                          True)


async def test_a_core_insert_of_row_values_reads_back_as_the_orm_writes_it(sessions) -> None:  # type: ignore[no-untyped-def]
    core = row_values(Operation, kind="create", steps=[{"name": "a"}], params={"request": "x"}, message="queued")
    orm = Operation(kind="create", steps=[{"name": "a"}], params={"request": "x"}, message="queued")
    async with session_scope(sessions) as s:
        await s.exec(insert(Operation.__table__), params=[core])  # type: ignore[call-overload,attr-defined]
        s.add(orm)
    async with sessions() as s:
        a, b = await s.get(Operation, core["id"]), await s.get(Operation, orm.id)
    assert a is not None and b is not None
    skip = {"id", "created_at", "updated_at"}
    assert a.model_dump(exclude=skip) == b.model_dump(exclude=skip)
