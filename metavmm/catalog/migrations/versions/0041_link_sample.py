"""link_sample: measured transfer rates between providers, for the federation map and REST

The map showed only the scheduler's configured link rates (issue 18). A finished transfer step (a cold
migration's disk, a live migration, a DR replication) now writes one row here: bytes, seconds, when, kind,
per (source provider, target provider); the newest rows of each pair are kept.

Revision ID: 0041_link_sample
Revises: 0045_host_storage
Create Date: 2026-12-07 15:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0041_link_sample'
down_revision = '0045_host_storage'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'link_sample',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column('target', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('bytes', sa.BigInteger(), nullable=False),
        sa.Column('seconds', sa.Float(), nullable=False),
        sa.Column('measured_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_link_sample_pair', 'link_sample', ['source', 'target', 'id'])


def downgrade() -> None:
    op.drop_index('ix_link_sample_pair', table_name='link_sample')
    op.drop_table('link_sample')
