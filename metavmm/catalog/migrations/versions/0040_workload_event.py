"""workload_event: a workload's observed state changed by a provider listing alone (drift), for the event stream

A sync or reconciliation that finds a VM stopped or deleted behind the broker's back wrote the row and told
nobody: the event stream reads operation history, and no operation caused this (issue 18). The observer now
writes one line here in the same transaction, and the stream reads the lines after the last it sent.

Revision ID: 0040_workload_event
Revises: 0038_workload_listing_index
Create Date: 2026-12-07 05:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0040_workload_event'
down_revision = '0038_workload_listing_index'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'workload_event',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('workload_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
        sa.Column('project_id', sa.Integer(), nullable=True),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('previous', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('message', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_workload_event_workload_id', 'workload_event', ['workload_id'])
    op.create_index('ix_workload_event_project_id', 'workload_event', ['project_id'])


def downgrade() -> None:
    op.drop_index('ix_workload_event_project_id', table_name='workload_event')
    op.drop_index('ix_workload_event_workload_id', table_name='workload_event')
    op.drop_table('workload_event')
