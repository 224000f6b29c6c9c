"""greetings in the user's words: users.locale (a BCP 47 tag, NULL: the default templates);
messages.subject and messages.body, the exact words a sent greeting carried

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: adding them rewrites no row, so the migration is instant at any size.
    op.add_column("users", sa.Column("locale", sa.String(35), nullable=True))
    op.add_column("messages", sa.Column("subject", sa.Text(), nullable=True))
    op.add_column("messages", sa.Column("body", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("messages", "body")
    op.drop_column("messages", "subject")
    op.drop_column("users", "locale")
