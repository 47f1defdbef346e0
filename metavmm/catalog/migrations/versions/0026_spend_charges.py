"""spend_charges: the spend ledger holds volumes and one-off charges (egress of a move or a replication):
a row's GiB (a volume's size, the GiB a charge moved) and what caused a charge (``ref``: an operation's step,
so a retried step charges once)

Revision ID: 0026_spend_charges
Revises: 0024_ui_sessions
Create Date: 2026-12-07 04:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0026_spend_charges'
down_revision = '0024_ui_sessions'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('spend_accrual') as batch:
        batch.add_column(sa.Column('gib', sa.Numeric(20, 10), nullable=True))
        batch.add_column(sa.Column('ref', sa.String(length=80), nullable=True))
    op.create_index('ix_spend_accrual_ref', 'spend_accrual', ['ref'])


def downgrade() -> None:
    op.drop_index('ix_spend_accrual_ref', table_name='spend_accrual')
    with op.batch_alter_table('spend_accrual') as batch:
        batch.drop_column('ref')
        batch.drop_column('gib')
