"""The graph-based scheduler over an immutable catalog snapshot (filters, costs, plans).

Entry points: :class:`~metavmm.scheduler.pipeline.Scheduler` (single placement),
:class:`~metavmm.scheduler.batch.BatchPlanner`, :class:`~metavmm.scheduler.migration.MigrationPlanner`,
:class:`~metavmm.scheduler.burst.BurstReplay`; :mod:`metavmm.scheduler.service` is what the broker calls.
See docs/scheduler.md.
"""
