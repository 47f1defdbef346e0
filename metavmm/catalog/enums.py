"""Enums of catalog columns that front ends offer as choices before any table is loaded.

They live apart from :mod:`metavmm.catalog.models` (which re-exports them) so that a command's
``--help`` (``click.Choice`` of the operation states or roles) does not import SQLModel and SQLAlchemy.
"""

from __future__ import annotations

import enum


class OperationState(enum.StrEnum):
    QUEUED = "queued"  # recorded from a REST request, waiting to be planned; the engine does not run it
    PENDING = "pending"
    RUNNING = "running"
    ROLLING_BACK = "rolling_back"  # a step failed or a cancel came: compensations run in reverse
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ROLLED_BACK = "rolled_back"


class Role(enum.StrEnum):
    ADMIN = "admin"
    PROJECT_ADMIN = "project_admin"
    MEMBER = "member"
    READER = "reader"
