"""address leases: a site's clone-network addresses given to migrated workloads

Revision ID: 0007_address_lease
Revises: 0006
Create Date: 2026-11-21 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0007_address_lease'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('address_lease',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('network', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('address', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('workload_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('operation_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['workload_id'], ['workload.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('network', 'address')
    )
    with op.batch_alter_table('address_lease', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_address_lease_workload_id'), ['workload_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('address_lease', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_address_lease_workload_id'))
    op.drop_table('address_lease')
