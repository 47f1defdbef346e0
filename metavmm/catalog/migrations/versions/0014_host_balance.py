"""host_balance: measured host load, hysteresis state, cooldown and maintenance for the rebalance policy

Revision ID: 0014_host_balance
Revises: 0011_autoscale
Create Date: 2026-12-06 03:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0014_host_balance'
down_revision = '0011_autoscale'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('host_balance',
    sa.Column('host_id', sa.Integer(), nullable=False),
    sa.Column('maintenance', sa.Boolean(), nullable=False),
    sa.Column('maintenance_reason', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.Column('maintenance_since', sa.DateTime(timezone=True), nullable=True),
    sa.Column('cpu_pct', sa.Float(), nullable=True),
    sa.Column('mem_pct', sa.Float(), nullable=True),
    sa.Column('load_source', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
    sa.Column('measured_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('vm_load', sa.JSON(), nullable=False),
    sa.Column('override_cpu_pct', sa.Float(), nullable=True),
    sa.Column('override_mem_pct', sa.Float(), nullable=True),
    sa.Column('hot', sa.Boolean(), nullable=False),
    sa.Column('hot_since', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_move_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['host_id'], ['host.id'], ),
    sa.PrimaryKeyConstraint('host_id')
    )


def downgrade() -> None:
    op.drop_table('host_balance')
