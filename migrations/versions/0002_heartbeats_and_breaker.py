"""heartbeats, the shared circuit breaker, per-message send deadline

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # NULL means "scheduled_send_time + CATCH_UP_HOURS"; `bday replay --force` sets it so an
    # operator can send a message that is older than the catch-up window.
    op.add_column("messages", sa.Column("send_deadline", TS))
    # Last run of beat and of each periodic job: `bday health` and `bday status` read these.
    op.create_table(
        "heartbeats",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("beat_at", TS, nullable=False),
        sa.Column("detail", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    )
    # One row per breaker (today only "email-service"); every worker on every host shares it.
    op.create_table(
        "circuit_breakers",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False, server_default="closed"),
        sa.Column("opened_at", TS),
        sa.Column("open_until", TS),
        sa.Column("cooldown_s", sa.Float, nullable=False, server_default="0"),
        sa.Column("trips", sa.Integer, nullable=False, server_default="0"),
        sa.Column("probe_token", UUID(as_uuid=True)),
        sa.Column("probe_expires_at", TS),
        sa.Column("last_success_at", TS),
        sa.Column("last_failure_at", TS),
        sa.Column("last_error", sa.Text),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("state IN ('closed', 'open', 'half_open')", name="ck_breaker_state"),
    )


def downgrade() -> None:
    op.drop_table("circuit_breakers")
    op.drop_table("heartbeats")
    op.drop_column("messages", "send_deadline")
