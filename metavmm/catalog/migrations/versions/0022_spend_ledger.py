"""spend_ledger: the spend accrual ledger (what each compute cost as it ran, per month; issue 17, 18), and
an index on a project's workloads by state (the burst creates in transit a budget counts)

Revision ID: 0022_spend_ledger
Revises: 0020_image_list_status
Create Date: 2026-12-06 21:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0022_spend_ledger'
down_revision = '0020_image_list_status'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'spend_accrual',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('project_id', sa.Integer(), nullable=True),
        sa.Column('workload_id', sa.String(length=36), nullable=False),
        sa.Column('workload_name', sa.String(length=255), nullable=False),
        sa.Column('provider', sa.String(length=128), nullable=True),
        sa.Column('site', sa.String(length=255), nullable=True),
        sa.Column('flavor', sa.String(length=128), nullable=True),
        sa.Column('period_start', sa.DateTime(timezone=True), nullable=False),
        sa.Column('period_end', sa.DateTime(timezone=True), nullable=True),
        sa.Column('hours', sa.Numeric(20, 10), nullable=False),
        sa.Column('price_per_hour', sa.Numeric(20, 10), nullable=True),
        sa.Column('currency', sa.String(length=3), nullable=True),
        sa.Column('amount', sa.Numeric(20, 10), nullable=False),
        sa.Column('price_source', sa.String(length=32), nullable=False),
        sa.Column('burst_policy', sa.String(length=63), nullable=True),
        sa.Column('accrued_at', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index('ix_spend_accrual_project_period', 'spend_accrual', ['project_id', 'period_start'])
    op.create_index('ix_spend_accrual_workload_id', 'spend_accrual', ['workload_id'])
    op.create_index('ix_spend_accrual_open', 'spend_accrual', ['period_end', 'project_id'])
    op.create_index('ix_workload_project_state', 'workload', ['project_id', 'observed_state'])


def downgrade() -> None:
    op.drop_index('ix_workload_project_state', table_name='workload')
    op.drop_table('spend_accrual')
