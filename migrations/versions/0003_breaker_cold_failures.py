"""breaker: count failed start-up (cold) probes, so one random failure does not open it

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Consecutive failed probes of the cold gate (closed, nothing succeeded for BREAKER_IDLE).
    # The breaker opens when they reach BREAKER_FAILURES, as it does for failures while warm.
    op.add_column(
        "circuit_breakers",
        sa.Column("cold_failures", sa.Integer, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_column("circuit_breakers", "cold_failures")
