"""clusters: classes of identical computes created in one request, and their seats

Revision ID: 0009_clusters
Revises: 0008_schools
Create Date: 2026-12-06 00:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0009_clusters'
down_revision = '0008_schools'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('cluster',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
    sa.Column('template', sa.JSON(), nullable=False),
    sa.Column('network_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True),
    sa.Column('site', sqlmodel.sql.sqltypes.AutoString(length=160), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['network_id'], ['workload.id'], ),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('project_id', 'name')
    )
    with op.batch_alter_table('cluster', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_cluster_project_id'), ['project_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_cluster_expires_at'), ['expires_at'], unique=False)
    op.create_table('cluster_seat',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('cluster_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('serial', sa.Integer(), nullable=False),
    sa.Column('workload_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('hostname', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
    sa.Column('address', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('mac', sqlmodel.sql.sqltypes.AutoString(length=17), nullable=False),
    sa.Column('owner', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.ForeignKeyConstraint(['cluster_id'], ['cluster.id'], ),
    sa.ForeignKeyConstraint(['workload_id'], ['workload.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('cluster_id', 'serial'),
    sa.UniqueConstraint('cluster_id', 'hostname'),
    sa.UniqueConstraint('mac')
    )
    with op.batch_alter_table('cluster_seat', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_cluster_seat_cluster_id'), ['cluster_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_cluster_seat_workload_id'), ['workload_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('cluster_seat', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cluster_seat_workload_id'))
        batch_op.drop_index(batch_op.f('ix_cluster_seat_cluster_id'))
    op.drop_table('cluster_seat')
    with op.batch_alter_table('cluster', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cluster_expires_at'))
        batch_op.drop_index(batch_op.f('ix_cluster_project_id'))
    op.drop_table('cluster')
