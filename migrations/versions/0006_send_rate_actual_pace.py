"""pacing: the theoretical time of the next actual send, so late sends cannot bunch

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # GCRA over the sends that actually go (bday.delivery.pacing): a send may go when
    # sent_tat - EMAIL_SERVICE_BURST / rate has passed, and moves it 1 / rate on.
    op.add_column("send_rates", sa.Column("sent_tat", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("send_rates", "sent_tat")
