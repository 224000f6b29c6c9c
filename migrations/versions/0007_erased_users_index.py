"""erasure: a partial index on users.erased_at, so recovery finds the recently erased cheaply;
send_rates.updated_at NOT NULL, as the model always declared (0004 left it nullable)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Recovery clears answers a send in flight stored after its user was erased
    # (bday.store.messages.forget_late_answers): it looks only at recently erased users.
    op.create_index(
        "ix_users_erased_at",
        "users",
        ["erased_at"],
        postgresql_where=sa.text("erased_at IS NOT NULL"),
    )
    op.execute("UPDATE send_rates SET updated_at = now() WHERE updated_at IS NULL")
    op.alter_column("send_rates", "updated_at", nullable=False)


def downgrade() -> None:
    op.alter_column("send_rates", "updated_at", nullable=True)
    op.drop_index("ix_users_erased_at", table_name="users")
