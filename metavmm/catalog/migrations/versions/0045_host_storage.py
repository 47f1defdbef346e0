"""host.storage and workload.hardware: which storage a host reaches, and where a VM's disks and NICs are

An HA restart inside one vCenter needs to know, when a host is lost, which other hosts mount the datastore
the workload's disk is on (issue 21): the inventory now reports each host's mounted datastores
(``host.storage``) and each VM's disk paths and MACs (``workload.hardware``, written by the observer).

Revision ID: 0045_host_storage
Revises: 0040_workload_event
Create Date: 2026-12-07 15:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0045_host_storage'
down_revision = '0040_workload_event'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('host', schema=None) as batch_op:
        batch_op.add_column(sa.Column('storage', sa.JSON(), nullable=False, server_default='[]'))
    with op.batch_alter_table('workload', schema=None) as batch_op:
        batch_op.add_column(sa.Column('hardware', sa.JSON(), nullable=False, server_default='{}'))
    with op.batch_alter_table('host', schema=None) as batch_op:
        batch_op.alter_column('storage', server_default=None)
    with op.batch_alter_table('workload', schema=None) as batch_op:
        batch_op.alter_column('hardware', server_default=None)


def downgrade() -> None:
    with op.batch_alter_table('workload', schema=None) as batch_op:
        batch_op.drop_column('hardware')
    with op.batch_alter_table('host', schema=None) as batch_op:
        batch_op.drop_column('storage')
