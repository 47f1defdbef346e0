"""operations engine: plan parameters, outputs, lease, backoff, cancel flag, event history

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21 06:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('operation', schema=None) as batch_op:
        batch_op.add_column(sa.Column('params', sa.JSON(), nullable=False, server_default='{}'))
        batch_op.add_column(sa.Column('outputs', sa.JSON(), nullable=False, server_default='{}'))
        batch_op.add_column(sa.Column('message', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column('cancel_requested', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column('owner', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True))
        batch_op.add_column(sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('not_before', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('started_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_operation_lease_until'), ['lease_until'], unique=False)
    with op.batch_alter_table('operation', schema=None) as batch_op:
        batch_op.alter_column('params', server_default=None)
        batch_op.alter_column('outputs', server_default=None)
        batch_op.alter_column('cancel_requested', server_default=None)

    op.create_table('operation_event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('operation_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('step', sa.Integer(), nullable=True),
    sa.Column('level', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('message', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.ForeignKeyConstraint(['operation_id'], ['operation.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('operation_event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_operation_event_operation_id'), ['operation_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('operation_event', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_operation_event_operation_id'))
    op.drop_table('operation_event')
    with op.batch_alter_table('operation', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_operation_lease_until'))
        for col in ('finished_at', 'started_at', 'not_before', 'lease_until', 'owner', 'cancel_requested',
                    'message', 'outputs', 'params'):
            batch_op.drop_column(col)
