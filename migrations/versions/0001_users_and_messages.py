"""users and messages

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Month * 100 + day of a date. IMMUTABLE so it can back an expression index; the planner
    # inlines it, so `bday_month_day(birthday) = ANY(...)` uses that index.
    op.execute(
        """
        CREATE FUNCTION bday_month_day(d date) RETURNS integer
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
        RETURN (extract(month FROM d) * 100 + extract(day FROM d))::integer
        """
    )
    op.create_table(
        "users",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("first_name", sa.String(100), nullable=False),
        sa.Column("last_name", sa.String(100), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("birthday", sa.Date, nullable=False),
        sa.Column("anniversary", sa.Date),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("birthday_owed_from", TS, nullable=False),
        sa.Column("anniversary_owed_from", TS, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("deleted_at", TS),
    )
    op.execute(
        "CREATE UNIQUE INDEX uq_users_email_live ON users (lower(email)) WHERE deleted_at IS NULL"
    )
    op.execute(
        "CREATE INDEX ix_users_birthday_month_day ON users (bday_month_day(birthday)) "
        "WHERE deleted_at IS NULL"
    )
    op.execute(
        "CREATE INDEX ix_users_anniversary_month_day ON users (bday_month_day(anniversary)) "
        "WHERE deleted_at IS NULL AND anniversary IS NOT NULL"
    )
    op.create_table(
        "messages",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "user_id",
            UUID(as_uuid=True),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("message_type", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="PENDING"),
        sa.Column("occasion_date", sa.Date, nullable=False),
        sa.Column("scheduled_send_time", TS, nullable=False),
        sa.Column("idempotency_key", sa.String(120), nullable=False),
        sa.Column("retry_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("deferrals", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", TS),
        sa.Column("lease_expires_at", TS),
        sa.Column("dispatch_token", UUID(as_uuid=True)),
        sa.Column("queued_at", TS),
        sa.Column("sent_at", TS),
        sa.Column("failed_at", TS),
        sa.Column("cancelled_at", TS),
        sa.Column("last_error", sa.Text),
        sa.Column("failure_reason", sa.String(32)),
        sa.Column("provider_status", sa.Integer),
        sa.Column("provider_response", sa.Text),
        sa.Column("sent_via", sa.String(16)),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("message_type IN ('BIRTHDAY', 'ANNIVERSARY')", name="ck_messages_type"),
        sa.CheckConstraint(
            "status IN ('PENDING', 'QUEUED', 'SENDING', 'SENT', 'FAILED', 'CANCELLED')",
            name="ck_messages_status",
        ),
    )
    # One live row per occasion; a CANCELLED row keeps its key without blocking its successor.
    op.execute(
        "CREATE UNIQUE INDEX uq_messages_idempotency_key ON messages (idempotency_key) "
        "WHERE status <> 'CANCELLED'"
    )
    op.execute(
        "CREATE INDEX ix_messages_due ON messages (status, scheduled_send_time) "
        "WHERE status IN ('PENDING', 'QUEUED', 'SENDING')"
    )
    op.create_index("ix_messages_user", "messages", ["user_id"])
    op.execute("CREATE INDEX ix_messages_failed ON messages (failed_at) WHERE status = 'FAILED'")


def downgrade() -> None:
    op.drop_table("messages")
    op.drop_table("users")
    op.execute("DROP FUNCTION bday_month_day(date)")
