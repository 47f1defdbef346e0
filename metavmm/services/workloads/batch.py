"""Concurrent creates of one project written in one transaction: a group commit (issue 23 item 15).

Every create of a project takes the project's write lock (the quota's, and on SQLite the database's
single writer lock) for the statements that decide it: the quota, the in-transit placements, the
writes. Thirty-two clients creating at once therefore waited in line for one transaction each, and
the line, not the CPU, set the rate. Here the creates that arrive while a project's transaction runs
queue up, and the next transaction takes them all (up to :data:`MAX_BATCH`): the lock, the quota and
the placement ledger are read once, each create is decided in turn against what the ones before it
took (:class:`~metavmm.services.quotas.Limits`, :meth:`~metavmm.services.placement.Placer.hold`), and
the rows are written with one statement per table.

Each create keeps its own answer: one refused (quota, no placement, a bad request) is refused alone and
writes nothing. If the transaction itself fails (a lock timeout, a constraint), nothing of it was
written and each of its creates runs again on its own, as an unbatched create does, so its error is
its own. Only the plain case is batched (a compute without links, a client-chosen id or an
Idempotency-Key); the rest takes the one-create path.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert

from metavmm.catalog import spend
from metavmm.catalog.models import Image, Workload, WorkloadKind, detached
from metavmm.foundation.config import FederationConfig
from metavmm.foundation.errors import CatalogBusy, MetavmmError
from metavmm.foundation.logs import REQUEST_ID
from metavmm.services import quotas
from metavmm.services.operations import flows
from metavmm.services.operations import store as op_store
from metavmm.services.workloads.requests import Accepted, CreateRequest

if TYPE_CHECKING:
    from metavmm.services.workloads.service import Shape, WorkloadService

log = logging.getLogger(__name__)
MAX_BATCH = 64
"""Creates per transaction: bounds how long one transaction holds the lock."""


@dataclass
class Queued:
    req: CreateRequest
    fingerprint: str
    ready: tuple[Shape, Image | None]
    request_id: str | None  # the request's, for its operation (the batch runs in a task of its own)
    done: asyncio.Future[Accepted]


def batchable(req: CreateRequest, key: str | None, ready: tuple[Shape, Image | None] | None,
              config: FederationConfig) -> bool:
    """The plain case. Not with a burst policy's monthly budget: the month's burst spend is read from the
    written workloads, so each create must see the ones before it written (one per transaction)."""
    if any(getattr(p, "monthly_budget", None) is not None for p in config.policies):
        return False
    return (key is None and ready is not None and req.kind == WorkloadKind.COMPUTE and not req.links
            and req.workload_id is None)


class CreateBatches:
    """One queue and at most one writer task per project."""

    def __init__(self, service: WorkloadService) -> None:
        self.service = service
        self.queues: dict[int, list[Queued]] = {}
        self.writers: dict[int, asyncio.Task[None]] = {}
        self.transactions = 0  # how many batch transactions committed, and how many creates they wrote
        self.written = 0

    async def submit(self, project_id: int, req: CreateRequest, fingerprint: str,
                     ready: tuple[Shape, Image | None]) -> Accepted:
        done: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self.queues.setdefault(project_id, []).append(Queued(req, fingerprint, ready, REQUEST_ID.get(), done))
        if project_id not in self.writers:
            self.writers[project_id] = asyncio.create_task(self._drain(project_id), name=f"creates-{project_id}")
        return await done

    async def _drain(self, project_id: int) -> None:
        """Write the project's queued creates, a batch per transaction, until none is left."""
        try:
            while items := self.queues.pop(project_id, None):
                for start in range(0, len(items), MAX_BATCH):
                    chunk = items[start:start + MAX_BATCH]
                    try:
                        await self._batch(project_id, chunk)
                    except Exception as exc:  # a bug, not a refusal: every caller of the chunk hears of it
                        log.exception("a batch of %d creates failed", len(chunk))
                        for q in chunk:
                            _fail(q, exc)
                    for q in chunk:  # no caller waits forever, whatever happened above
                        _fail(q, CatalogBusy("the create was not decided; nothing was changed, send it again"))
        finally:
            self.writers.pop(project_id, None)
            for q in self.queues.pop(project_id, []):  # only when cancelled (shutdown): nothing was written
                _fail(q, CatalogBusy(STOPPING))

    async def _batch(self, project_id: int, items: list[Queued]) -> None:
        svc = self.service
        written: list[tuple[Queued, Any, Any]] = []
        refused: list[tuple[Queued, MetavmmError]] = []  # answered once the transaction ended, like the rest
        try:
            async with svc._transaction(project_id) as session:
                limits = await quotas.Limits.read(session, project_id)
                round_ = await svc.placer.round(session)
                decided = []
                for q in items:
                    shape, image = q.ready
                    try:
                        draft = svc._draft(project_id, q.req, svc._valid(q.req), shape, image)
                        need = await limits.check(session, draft.need, flavor=shape.flavor)
                        steps, where = await svc._place_compute(session, draft.workload, shape, image, q.req, round_)
                    except MetavmmError as exc:  # this create's own refusal: the others go on
                        refused.append((q, exc))
                        continue
                    limits.add(need)
                    spec = {**draft.spec, "placement": where}
                    svc.placer.hold(round_, draft.workload.id, spec)
                    values = {**draft.values, "spec": spec, "state_message": f"creating at {where['site']}"}
                    decided.append((q, values, draft.op_id, steps, where, need))
                if decided:
                    # Core INSERTs of plain column values, one statement per table, no ORM object built or
                    # flushed (issue 16 item 13). A new pending compute accrues no spend (the ledger's flush
                    # hook, metavmm.catalog.spend, would write nothing for it): checked, not assumed.
                    workloads = [detached(Workload, values) for _, values, _, _, _, _ in decided]
                    if any(spend.rate_of(w) is not None for w in workloads):
                        raise AssertionError("a new workload with a spend rate needs the ORM's flush hook")
                    await session.exec(insert(Workload.__table__),  # type: ignore[call-overload,attr-defined]
                                       params=[values for _, values, _, _, _, _ in decided])
                    await quotas.hold_many(session, project_id, [(need, values["id"], op_id)
                                                                 for _, values, op_id, _, _, need in decided])
                    ops = await op_store.insert_plans(session, [op_store.plan_values(
                        kind="create", steps=flows.with_quota(values["id"], steps), target_id=values["id"],
                        project_id=project_id, fingerprint=q.fingerprint, params={**where, "holds_quota": True},
                        operation_id=op_id, request_id=q.request_id) for q, values, op_id, steps, where, _ in decided])
                    written = [(q, w, op) for (q, *_), w, op in zip(decided, workloads, ops, strict=True)]
        except asyncio.CancelledError:
            for q, exc in refused:
                _fail(q, exc)
            raise
        except Exception as exc:  # nothing of the batch was written: each create on its own, its error its own
            log.info("a batch of %d creates failed (%s); writing them one by one", len(items),
                     exc.__class__.__name__)
            for q, own in refused:
                _fail(q, own)
            await self._one_by_one(project_id, [q for q in items if not q.done.done()])
            return
        for q, own in refused:
            _fail(q, own)
        self.transactions += 1
        self.written += len(written)
        for q, workload, op in written:
            if not q.done.done():  # (a caller that went away still has its create)
                q.done.set_result(Accepted(workload, op, (), ()))
        await svc.wake(*(op for _, _, op in written))

    async def _one_by_one(self, project_id: int, items: list[Queued]) -> None:
        for q in items:
            token = REQUEST_ID.set(q.request_id)
            try:
                done = await self.service._create_alone(project_id, q.req, q.fingerprint, q.ready)
                if not q.done.done():
                    q.done.set_result(done)
            except asyncio.CancelledError:
                for rest in items:
                    _fail(rest, CatalogBusy(STOPPING))
                raise
            except Exception as exc:
                _fail(q, exc)
            finally:
                REQUEST_ID.reset(token)


STOPPING = "the broker is stopping; nothing was changed, send the request again"


def _fail(q: Queued, exc: BaseException) -> None:
    if not q.done.done():
        q.done.set_exception(exc)
