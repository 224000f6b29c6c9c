"""users: opt-out per greeting type and erasure; messages: an index for retention

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_STAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Opted out of a type since this instant (NULL: not opted out). Opting back in clears it
    # and sets that type's *_owed_from to the moment, so nothing is owed for the time between.
    op.add_column("users", sa.Column("birthday_opted_out_at", _STAMP, nullable=True))
    op.add_column("users", sa.Column("anniversary_opted_out_at", _STAMP, nullable=True))
    op.add_column("users", sa.Column("erased_at", _STAMP, nullable=True))
    # Retention deletes by occasion date, oldest first, and `bday status` reads the oldest
    # kept row from it. occasion_date never changes after insert, so this index costs one entry
    # per planned row and nothing on the hot path's status updates. CONCURRENTLY: a big table
    # keeps taking writes while it builds.
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_messages_occasion_date",
            "messages",
            ["occasion_date"],
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_messages_occasion_date", "messages", postgresql_concurrently=True, if_exists=True
        )
    op.drop_column("users", "erased_at")
    op.drop_column("users", "anniversary_opted_out_at")
    op.drop_column("users", "birthday_opted_out_at")
