"""Words of the services that front ends need before any service loads: a command's option default
or ``click.Choice`` is built when its module is imported, and ``metavmm <group> --help`` should not
import SQLAlchemy, the scheduler or the engine to print them. Each name is re-exported where it
belongs (:mod:`metavmm.services.identity`, :mod:`metavmm.services.workloads.requests`); keep this
module free of imports.
"""

from __future__ import annotations

DEFAULT_PROJECT = "default"
"""The project an operator's command creates in when it names none (created on first use)."""

POWER_ACTIONS = ("start", "stop", "restart", "suspend", "resume")
COMPUTE_ACTIONS = (*POWER_ACTIONS, "save")

MIGRATION_MODES = ("auto", "live", "cold")
"""How a workload moves (:func:`metavmm.services.operations.migrations.migrate_workload`)."""

DR_MAX_INTERVAL_S = 30 * 86400
"""The longest replication interval a DR policy may have (:mod:`metavmm.services.protection.dr`)."""
DR_MAX_RETENTION = 100
"""The most recovery points a DR policy may keep."""
