"""workload listing index: a project's collection of a kind in its listing order, covering OCCI's location listing

A text/uri-list page of 1000 of a project's 10,000 computes sorted the project's rows each time (a temporary
B-tree) and skipped the offset row by row; with this index a page is a range of the index and nothing else
(issue 16 item 14).

Revision ID: 0038_workload_listing_index
Revises: 0024_ui_sessions
Create Date: 2026-12-07 05:00:00
"""

from __future__ import annotations

from alembic import op

revision = '0038_workload_listing_index'
down_revision = '0026_spend_charges'
branch_labels = None
depends_on = None

COLUMNS = ['project_id', 'kind', 'created_at', 'id', 'desired_state', 'observed_state']


def upgrade() -> None:
    with op.batch_alter_table('workload', schema=None) as batch_op:
        batch_op.create_index('ix_workload_listing', COLUMNS, unique=False)


def downgrade() -> None:
    with op.batch_alter_table('workload', schema=None) as batch_op:
        batch_op.drop_index('ix_workload_listing')
