"""provider sync failures: consecutive failed inventory syncs, so HA restart can tell a lost host from a blip

Revision ID: 0012_sync_failures
Revises: 0010_protection
Create Date: 2026-12-06 03:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012_sync_failures'
down_revision = '0010_protection'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('provider', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sync_failures', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('sync_failed_since', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('provider', schema=None) as batch_op:
        batch_op.drop_column('sync_failed_since')
        batch_op.drop_column('sync_failures')
