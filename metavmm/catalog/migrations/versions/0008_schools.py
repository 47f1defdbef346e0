"""schools and publisher namespaces: school membership and who owns a publisher name

Revision ID: 0008_schools
Revises: 0007_address_lease
Create Date: 2026-12-05 18:30:00

Existing namespaces are claimed for the project of their oldest entry (the broker's when it has none),
so publishing keeps working for whoever published first and nobody else can take a name over.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0008_schools'
down_revision = '0007_address_lease'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('school',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('school', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_school_name'), ['name'], unique=True)
    op.create_table('school_member',
    sa.Column('school_id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ),
    sa.ForeignKeyConstraint(['school_id'], ['school.id'], ),
    sa.PrimaryKeyConstraint('school_id', 'project_id')
    )
    with op.batch_alter_table('school_member', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_school_member_project_id'), ['project_id'], unique=False)
    op.create_table('publisher',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=True),
    sa.Column('granted_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ),
    sa.PrimaryKeyConstraint('name')
    )
    with op.batch_alter_table('publisher', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_publisher_project_id'), ['project_id'], unique=False)
    op.execute(
        "INSERT INTO publisher (name, project_id, created_at) "
        "SELECT i.publisher, (SELECT o.project_id FROM image o WHERE o.publisher = i.publisher "
        "ORDER BY o.created_at, o.id LIMIT 1), MIN(i.created_at) "
        "FROM image i WHERE i.publisher <> '' GROUP BY i.publisher"
    )


def downgrade() -> None:
    with op.batch_alter_table('publisher', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_publisher_project_id'))
    op.drop_table('publisher')
    with op.batch_alter_table('school_member', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_school_member_project_id'))
    op.drop_table('school_member')
    with op.batch_alter_table('school', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_school_name'))
    op.drop_table('school')
