"""Prices carry their shape, family and position in their source; amounts keep 10 decimals.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("price", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source_ref", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True))
        batch_op.add_column(sa.Column("family", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        batch_op.add_column(sa.Column("vcpus", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("ram_mib", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("gpu_model", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True))
        batch_op.add_column(sa.Column("gpu_count", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("arch", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True))
        batch_op.alter_column("amount", existing_type=sa.Numeric(18, 6), type_=sa.Numeric(20, 10),
                              existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("price", schema=None) as batch_op:
        batch_op.alter_column("amount", existing_type=sa.Numeric(20, 10), type_=sa.Numeric(18, 6),
                              existing_nullable=False)
        for name in ("arch", "gpu_count", "gpu_model", "ram_mib", "vcpus", "family", "source_ref"):
            batch_op.drop_column(name)
