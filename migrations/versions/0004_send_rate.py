"""pacing: the shared send rate (a token bucket and its adaptive rate) in one row

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One row per rate-limited service (bday.delivery.pacing). `tokens` below zero are slots
    # already promised to deferred sends; `adaptive_rate` exists only after a 429.
    op.create_table(
        "send_rates",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("tokens", sa.Float, nullable=False, server_default="0"),
        sa.Column("refilled_at", sa.DateTime(timezone=True)),
        sa.Column("epoch", sa.Integer, nullable=False, server_default="0"),
        sa.Column("adaptive_rate", sa.Float),
        sa.Column("decreased_at", sa.DateTime(timezone=True)),
        sa.Column("throttled", sa.Integer, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("send_rates")
