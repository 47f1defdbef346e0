"""ui_sessions: dashboard sessions kept in the catalog (survive a restart, shared by every broker)

Revision ID: 0024_ui_sessions
Revises: 0022_spend_ledger
Create Date: 2026-12-06 21:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0024_ui_sessions'
down_revision = '0022_spend_ledger'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ui_session',
    sa.Column('id_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('token_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True),
    sa.Column('role', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('via', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('csrf', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ),
    sa.ForeignKeyConstraint(['token_id'], ['api_token.id'], ),
    sa.ForeignKeyConstraint(['user_id'], ['user_account.id'], ),
    sa.PrimaryKeyConstraint('id_sha256')
    )
    with op.batch_alter_table('ui_session', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ui_session_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_ui_session_project_id'), ['project_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_ui_session_token_id'), ['token_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_ui_session_user_id'), ['user_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('ui_session', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ui_session_user_id'))
        batch_op.drop_index(batch_op.f('ix_ui_session_token_id'))
        batch_op.drop_index(batch_op.f('ix_ui_session_project_id'))
        batch_op.drop_index(batch_op.f('ix_ui_session_expires_at'))
    op.drop_table('ui_session')
