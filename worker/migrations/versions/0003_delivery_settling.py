"""deliveries: how a "maybe sent" delivery was settled, and when one confirmed unsent was sent again

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 09:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import worker.adapters.db

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('settled_by', sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column('resent_at', worker.adapters.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_deliveries_unsettled', ['status', 'updated_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_deliveries_unsettled')
        batch_op.drop_column('resent_at')
        batch_op.drop_column('settled_by')
