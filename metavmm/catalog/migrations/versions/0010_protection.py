"""protection: HA restart and disaster-recovery policies per workload, and their recovery points

Revision ID: 0010_protection
Revises: 0009_clusters
Create Date: 2026-12-06 03:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0010_protection'
down_revision = '0009_clusters'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('protection',
    sa.Column('workload_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('ha', sa.Boolean(), nullable=False),
    sa.Column('replica_target', sqlmodel.sql.sqltypes.AutoString(length=160), nullable=True),
    sa.Column('replica_interval_s', sa.Integer(), nullable=True),
    sa.Column('replica_retention', sa.Integer(), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('message', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('last_replica_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ),
    sa.ForeignKeyConstraint(['workload_id'], ['workload.id'], ),
    sa.PrimaryKeyConstraint('workload_id')
    )
    with op.batch_alter_table('protection', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_protection_project_id'), ['project_id'], unique=False)
    op.create_table('recovery_point',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('workload_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('provider_id', sa.Integer(), nullable=False),
    sa.Column('site_id', sa.Integer(), nullable=True),
    sa.Column('location', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
    sa.Column('disk_format', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('base_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('taken_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ),
    sa.ForeignKeyConstraint(['provider_id'], ['provider.id'], ),
    sa.ForeignKeyConstraint(['site_id'], ['site.id'], ),
    sa.ForeignKeyConstraint(['workload_id'], ['workload.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('recovery_point', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_recovery_point_workload_id'), ['workload_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_recovery_point_project_id'), ['project_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_recovery_point_provider_id'), ['provider_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_recovery_point_taken_at'), ['taken_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('recovery_point', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_recovery_point_taken_at'))
        batch_op.drop_index(batch_op.f('ix_recovery_point_provider_id'))
        batch_op.drop_index(batch_op.f('ix_recovery_point_project_id'))
        batch_op.drop_index(batch_op.f('ix_recovery_point_workload_id'))
    op.drop_table('recovery_point')
    with op.batch_alter_table('protection', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_protection_project_id'))
    op.drop_table('protection')
