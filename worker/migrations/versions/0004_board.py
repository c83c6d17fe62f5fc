"""the board's queries: open hot leads by cadence start, re-alerts fired by time

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 13:40:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

OPEN = sa.text("current AND claimed_at IS NULL")


def upgrade() -> None:
    # only the unclaimed current assignments: a few thousand rows however many leads there are
    op.create_index('ix_assignments_open_start', 'assignments', ['start_at', 'id'], unique=False,
                    postgresql_where=OPEN, sqlite_where=OPEN)
    op.create_index('ix_alert_steps_fired', 'alert_steps', ['fired_at'], unique=False)
    op.create_index('ix_hot_episodes_opened', 'hot_episodes', ['opened_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_hot_episodes_opened', table_name='hot_episodes')
    op.drop_index('ix_alert_steps_fired', table_name='alert_steps')
    op.drop_index('ix_assignments_open_start', table_name='assignments')
