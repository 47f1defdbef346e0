"""image_list_status: when a subscribed image list expires and when it last synced without error

Revision ID: 0020_image_list_status
Revises: 0014_host_balance
Create Date: 2026-12-06 07:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0020_image_list_status'
down_revision = '0014_host_balance'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('image_list_subscription') as batch:
        batch.add_column(sa.Column('list_expires_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('last_success_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('image_list_subscription') as batch:
        batch.drop_column('last_success_at')
        batch.drop_column('list_expires_at')
