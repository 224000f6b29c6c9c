"""messages: partitioned by month of occasion_date, keeping every row

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04

The table is rebuilt as a partitioned one (PostgreSQL cannot partition a table in place):
renamed aside, a partitioned `messages` made LIKE it (the same columns, defaults, NOT NULLs and
CHECKs, whatever earlier revisions added), one partition per month that holds rows plus this
month and the next three, and a DEFAULT partition; then every row is copied and the old table
dropped, and the keys and indexes are built on the full partitions (faster than keeping them up
while copying). It all runs in the migration's one transaction: a failure leaves the old table
as it was. docs/partitions.md says why the keys are what they are.

Self-contained on purpose (no import from bday): a revision must do tomorrow what it does today.
The partition names follow bday.store.partitions (messages_y2027m03, messages_default).
"""

from datetime import date

from alembic import op
from sqlalchemy import text

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

MONTHS_AHEAD = 3  # as bday.store.partitions' daily job keeps them
PLAIN = "messages_unpartitioned"

# The indexes every revision so far built on messages, by their names (dropped with the
# table they were built on, built again on the new one). The unique key and the primary key
# gain occasion_date, the partition key: a partitioned table's unique keys must include it.
_FOREIGN_KEY = (
    "ALTER TABLE messages ADD CONSTRAINT messages_user_id_fkey FOREIGN KEY (user_id) "
    "REFERENCES users (id) ON DELETE CASCADE"
)
_INDEXES = (
    (
        "CREATE INDEX ix_messages_due ON messages (status, scheduled_send_time) "
        "WHERE status IN ('PENDING', 'QUEUED', 'SENDING')"
    ),
    "CREATE INDEX ix_messages_user ON messages (user_id)",
    "CREATE INDEX ix_messages_occasion_date ON messages (occasion_date)",
    "CREATE INDEX ix_messages_failed ON messages (failed_at) WHERE status = 'FAILED'",
)


def _add_months(month: date, count: int) -> date:
    index = month.year * 12 + month.month - 1 + count
    return date(index // 12, index % 12 + 1, 1)


def _months_to_make() -> list[date]:
    """Every month that holds a row, and from the month of three days ago (the planner's
    catch-up reaches back two) to MONTHS_AHEAD after this one."""
    bind = op.get_bind()
    held = bind.execute(
        text(f"SELECT DISTINCT date_trunc('month', occasion_date)::date FROM {PLAIN}")
    ).scalars()
    first = bind.execute(text("SELECT date_trunc('month', current_date - 3)::date")).scalar_one()
    this = bind.execute(text("SELECT date_trunc('month', current_date)::date")).scalar_one()
    coming, month = [], first
    while month <= _add_months(this, MONTHS_AHEAD):
        coming.append(month)
        month = _add_months(month, 1)
    return sorted(set(held) | set(coming))


def upgrade() -> None:
    op.execute(f"ALTER TABLE messages RENAME TO {PLAIN}")
    op.execute(
        f"CREATE TABLE messages (LIKE {PLAIN} INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
        "PARTITION BY RANGE (occasion_date)"
    )
    op.execute("CREATE TABLE messages_default PARTITION OF messages DEFAULT")
    for month in _months_to_make():
        op.execute(
            f"CREATE TABLE messages_y{month.year:04d}m{month.month:02d} PARTITION OF messages "
            f"FOR VALUES FROM ('{month}') TO ('{_add_months(month, 1)}')"
        )
    op.execute(f"INSERT INTO messages SELECT * FROM {PLAIN}")  # LIKE: the same column order
    op.execute(f"DROP TABLE {PLAIN}")
    op.execute("ALTER TABLE messages ADD CONSTRAINT messages_pkey PRIMARY KEY (id, occasion_date)")
    op.execute(_FOREIGN_KEY)
    op.execute(
        "CREATE UNIQUE INDEX uq_messages_idempotency_key ON messages "
        "(idempotency_key, occasion_date) WHERE status <> 'CANCELLED'"
    )
    for statement in _INDEXES:
        op.execute(statement)
    op.execute("ANALYZE messages")


def downgrade() -> None:
    partitioned = "messages_partitioned"
    op.execute(f"ALTER TABLE messages RENAME TO {partitioned}")
    op.execute(
        f"CREATE TABLE messages (LIKE {partitioned} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
    )
    op.execute(f"INSERT INTO messages SELECT * FROM {partitioned}")
    op.execute(f"DROP TABLE {partitioned}")  # and its partitions with it
    op.execute("ALTER TABLE messages ADD CONSTRAINT messages_pkey PRIMARY KEY (id)")
    op.execute(_FOREIGN_KEY)
    op.execute(
        "CREATE UNIQUE INDEX uq_messages_idempotency_key ON messages (idempotency_key) "
        "WHERE status <> 'CANCELLED'"
    )
    for statement in _INDEXES:
        op.execute(statement)
