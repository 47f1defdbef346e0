"""autoscale: auto-scaling groups, their members and every scaling decision

Revision ID: 0011_autoscale
Revises: 0012_sync_failures (main already has 0012; the lead assigned 0011 on 0010)
Create Date: 2026-12-06 03:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0011_autoscale'
down_revision = '0012_sync_failures'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('autoscale_group',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
    sa.Column('template', sa.JSON(), nullable=False),
    sa.Column('min_size', sa.Integer(), nullable=False),
    sa.Column('max_size', sa.Integer(), nullable=False),
    sa.Column('base_desired', sa.Integer(), nullable=False),
    sa.Column('desired', sa.Integer(), nullable=False),
    sa.Column('rules', sa.JSON(), nullable=False),
    sa.Column('cooldown_out_s', sa.Integer(), nullable=False),
    sa.Column('cooldown_in_s', sa.Integer(), nullable=False),
    sa.Column('scale_in_order', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('last_scale_out_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_scale_in_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('next_serial', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('project_id', 'name')
    )
    with op.batch_alter_table('autoscale_group', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_autoscale_group_project_id'), ['project_id'], unique=False)
    op.create_table('autoscale_member',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('group_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('workload_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('serial', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['autoscale_group.id'], ),
    sa.ForeignKeyConstraint(['workload_id'], ['workload.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('group_id', 'serial')
    )
    with op.batch_alter_table('autoscale_member', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_autoscale_member_group_id'), ['group_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_autoscale_member_workload_id'), ['workload_id'], unique=True)
    op.create_table('autoscale_decision',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('group_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('trigger', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('rule', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=True),
    sa.Column('metric', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=True),
    sa.Column('value', sa.Float(), nullable=True),
    sa.Column('threshold', sa.Float(), nullable=True),
    sa.Column('desired_before', sa.Integer(), nullable=False),
    sa.Column('desired_after', sa.Integer(), nullable=False),
    sa.Column('members', sa.JSON(), nullable=False),
    sa.Column('operations', sa.JSON(), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['autoscale_group.id'], ),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('autoscale_decision', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_autoscale_decision_group_id'), ['group_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_autoscale_decision_project_id'), ['project_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_autoscale_decision_at'), ['at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('autoscale_decision', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_autoscale_decision_at'))
        batch_op.drop_index(batch_op.f('ix_autoscale_decision_project_id'))
        batch_op.drop_index(batch_op.f('ix_autoscale_decision_group_id'))
    op.drop_table('autoscale_decision')
    with op.batch_alter_table('autoscale_member', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_autoscale_member_workload_id'))
        batch_op.drop_index(batch_op.f('ix_autoscale_member_group_id'))
    op.drop_table('autoscale_member')
    with op.batch_alter_table('autoscale_group', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_autoscale_group_project_id'))
    op.drop_table('autoscale_group')
