"""marketplace: entry fields, version chains, image list subscriptions, replica timestamps

New NOT NULL columns carry server defaults so catalogs that already hold images upgrade in place.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21 06:35:48.673205
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('image_list_subscription',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('url', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('identifier', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('endorser', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('public_key_pem', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('key_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('visibility', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('last_version', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('last_synced_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('image_count', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('image_list_subscription', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_image_list_subscription_name'), ['name'], unique=True)

    with op.batch_alter_table('image', schema=None) as batch_op:
        batch_op.add_column(sa.Column('access_ports', sa.JSON(), nullable=False, server_default='[]'))
        batch_op.add_column(sa.Column('min_vcpus', sa.Integer(), nullable=False, server_default='1'))
        batch_op.add_column(sa.Column('min_ram_mib', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('min_disk_gib', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('location', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column('supersedes_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True))
        batch_op.add_column(sa.Column('superseded_by_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True))
        batch_op.add_column(sa.Column('image_list_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False,
                                      server_default=sa.func.current_timestamp()))
        batch_op.create_index(batch_op.f('ix_image_image_list_id'), ['image_list_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_image_superseded_by_id'), ['superseded_by_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_image_supersedes_id'), ['supersedes_id'], unique=False)
        batch_op.alter_column('size_bytes', existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False)
        batch_op.alter_column('virtual_size_bytes', existing_type=sa.Integer(), type_=sa.BigInteger(),
                              existing_nullable=False)
        batch_op.create_foreign_key('fk_image_image_list_id', 'image_list_subscription', ['image_list_id'], ['id'])

    with op.batch_alter_table('image_replica', schema=None) as batch_op:
        batch_op.add_column(sa.Column('created_at', sa.DateTime(timezone=True), nullable=False,
                                      server_default=sa.func.current_timestamp()))
        batch_op.add_column(sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.alter_column('size_bytes', existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False)



def downgrade() -> None:
    with op.batch_alter_table('image_replica', schema=None) as batch_op:
        batch_op.alter_column('size_bytes', existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False)
        batch_op.drop_column('last_used_at')
        batch_op.drop_column('created_at')

    with op.batch_alter_table('image', schema=None) as batch_op:
        batch_op.drop_constraint('fk_image_image_list_id', type_='foreignkey')
        batch_op.alter_column('virtual_size_bytes', existing_type=sa.BigInteger(), type_=sa.Integer(),
                              existing_nullable=False)
        batch_op.alter_column('size_bytes', existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False)
        batch_op.drop_index(batch_op.f('ix_image_supersedes_id'))
        batch_op.drop_index(batch_op.f('ix_image_superseded_by_id'))
        batch_op.drop_index(batch_op.f('ix_image_image_list_id'))
        batch_op.drop_column('updated_at')
        batch_op.drop_column('image_list_id')
        batch_op.drop_column('superseded_by_id')
        batch_op.drop_column('supersedes_id')
        batch_op.drop_column('location')
        batch_op.drop_column('min_disk_gib')
        batch_op.drop_column('min_ram_mib')
        batch_op.drop_column('min_vcpus')
        batch_op.drop_column('access_ports')

    with op.batch_alter_table('image_list_subscription', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_image_list_subscription_name'))

    op.drop_table('image_list_subscription')
