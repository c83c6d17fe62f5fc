"""outbound webhooks: the outbox of lead events for CRM webhooks and Slack

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 10:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import worker.adapters.db

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('outbound_webhooks',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('event_id', sa.String(length=40), nullable=False),
    sa.Column('event', sa.String(length=40), nullable=False),
    sa.Column('lead_id', sa.String(length=220), nullable=False),
    sa.Column('receiver', sa.String(length=1000), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', worker.adapters.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('lease_until', worker.adapters.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_status', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', worker.adapters.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('delivered_at', worker.adapters.db.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('event_id', 'receiver', name='uq_outbound_webhooks_event_receiver')
    )
    with op.batch_alter_table('outbound_webhooks', schema=None) as batch_op:
        batch_op.create_index('ix_outbound_webhooks_due', ['status', 'next_attempt_at'], unique=False)
        batch_op.create_index('ix_outbound_webhooks_order', ['receiver', 'lead_id', 'status'], unique=False)
        batch_op.create_index(batch_op.f('ix_outbound_webhooks_lead_id'), ['lead_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('outbound_webhooks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbound_webhooks_lead_id'))
        batch_op.drop_index('ix_outbound_webhooks_order')
        batch_op.drop_index('ix_outbound_webhooks_due')
    op.drop_table('outbound_webhooks')
