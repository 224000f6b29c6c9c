"""Tables. PostgreSQL is the source of truth for who is owed what; the broker only carries work.

The schema is created by Alembic migrations only (`migrations/versions`); these classes
describe it for queries and must stay in step with the newest revision.
"""

from __future__ import annotations

import enum
import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bday.core.occasions import Kind


class Status(enum.StrEnum):
    """A message's life: PENDING -> QUEUED -> SENDING -> SENT, or FAILED / CANCELLED."""

    PENDING = "PENDING"  # row exists, no job published yet
    QUEUED = "QUEUED"  # a job is on the broker (possibly delayed until its instant)
    SENDING = "SENDING"  # a worker holds it, under a lease
    SENT = "SENT"
    FAILED = "FAILED"  # permanent error, retries exhausted, or expired
    CANCELLED = "CANCELLED"  # user deleted, or date/zone changed before sending


UNFINISHED = (Status.PENDING, Status.QUEUED, Status.SENDING)
UNSENT = (Status.PENDING, Status.QUEUED)
FINISHED = (Status.SENT, Status.FAILED, Status.CANCELLED)


class FailureReason(enum.StrEnum):
    PERMANENT = "permanent"  # the service refused the request (4xx other than 429)
    RETRIES_EXHAUSTED = "retries_exhausted"
    EXPIRED = "expired"  # more than CATCH_UP_HOURS late


def month_day(column: Any) -> Any:
    """SQL for month * 100 + day of a date column; the planner's index expression."""
    return func.bday_month_day(column)


def _values(enum_type: type[enum.Enum]) -> str:
    return ", ".join(f"'{member.value}'" for member in enum_type)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    first_name: Mapped[str] = mapped_column(String(100))
    last_name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column(String(320))
    birthday: Mapped[date] = mapped_column(Date)
    anniversary: Mapped[date | None] = mapped_column(Date)
    timezone: Mapped[str] = mapped_column(String(64))
    # A BCP 47 tag (`de-AT`) choosing the greeting's template; NULL: the default one.
    locale: Mapped[str | None] = mapped_column(String(35))
    # Greetings are owed only for instants after the user held their current date and zone
    # (docs/contract.md, behaviour 2); these record since when each combination has held.
    birthday_owed_from: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    anniversary_owed_from: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Opted out of that greeting type since this instant; NULL means greetings are on.
    birthday_opted_out_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    anniversary_opted_out_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    erased_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    def opted_out(self) -> frozenset[Kind]:
        """The greeting types this user asked not to receive."""
        stamps = {
            Kind.BIRTHDAY: self.birthday_opted_out_at,
            Kind.ANNIVERSARY: self.anniversary_opted_out_at,
        }
        return frozenset(kind for kind, stamp in stamps.items() if stamp is not None)

    __table_args__ = (
        Index(
            "uq_users_email_live",
            func.lower(text("email")),
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
        ),
        # The id second: a fanned-out plan's id range is an index condition (migration 0010).
        Index(
            "ix_users_birthday_month_day_id",
            month_day(text("birthday")),
            "id",
            postgresql_where=text("deleted_at IS NULL"),
        ),
        Index(
            "ix_users_anniversary_month_day_id",
            month_day(text("anniversary")),
            "id",
            postgresql_where=text("deleted_at IS NULL AND anniversary IS NOT NULL"),
        ),
        Index("ix_users_erased_at", "erased_at", postgresql_where=text("erased_at IS NOT NULL")),
    )


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE")
    )
    message_type: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=Status.PENDING)
    # The occasion's local date, the date in its idempotency key, and the partition key:
    # `messages` is partitioned by month of it (docs/partitions.md), so it is in the primary
    # key and the unique key, which PostgreSQL requires of a partitioned table.
    occasion_date: Mapped[date] = mapped_column(Date, primary_key=True)
    scheduled_send_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    idempotency_key: Mapped[str] = mapped_column(String(120))
    retry_count: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    deferrals: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    dispatch_token: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    failure_reason: Mapped[str | None] = mapped_column(String(32))
    provider_status: Mapped[int | None] = mapped_column(Integer)
    provider_response: Mapped[str | None] = mapped_column(Text)
    # The words a sent greeting carried (personal data: erasure clears them).
    subject: Mapped[str | None] = mapped_column(Text)
    body: Mapped[str | None] = mapped_column(Text)
    sent_via: Mapped[str | None] = mapped_column(String(16))
    send_deadline: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint(f"message_type IN ({_values(Kind)})", name="ck_messages_type"),
        CheckConstraint(f"status IN ({_values(Status)})", name="ck_messages_status"),
        # One live row per occasion. A CANCELLED row keeps its key for the record and no
        # longer blocks the row that replaces it (a zone change on the same local date).
        # The key ends with the occasion's date, so (key, date) is as unique as the key alone.
        Index(
            "uq_messages_idempotency_key",
            "idempotency_key",
            "occasion_date",
            unique=True,
            postgresql_where=text("status <> 'CANCELLED'"),
        ),
        Index(
            "ix_messages_due",
            "status",
            "scheduled_send_time",
            postgresql_where=text("status IN ('PENDING', 'QUEUED', 'SENDING')"),
        ),
        Index("ix_messages_user", "user_id"),
        Index("ix_messages_occasion_date", "occasion_date"),
        Index("ix_messages_failed", "failed_at", postgresql_where=text("status = 'FAILED'")),
        {"postgresql_partition_by": "RANGE (occasion_date)"},
    )


def idempotency_key(user_id: uuid.UUID, kind: Kind | str, local_date: date) -> str:
    """`{user_id}:{TYPE}:{local date}`: one occasion, one key (docs/contract.md, Statuses)."""
    return f"{user_id}:{Kind(kind).value}:{local_date.isoformat()}"


class Heartbeat(Base):
    """When beat last ticked and each periodic job last ran (read by health and status)."""

    __tablename__ = "heartbeats"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    beat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)


class CircuitBreaker(Base):
    """The email-service breaker, shared by every worker through this one row."""

    __tablename__ = "circuit_breakers"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default="closed")
    opened_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    open_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cooldown_s: Mapped[float] = mapped_column(Float, default=0.0)
    trips: Mapped[int] = mapped_column(Integer, default=0)
    cold_failures: Mapped[int] = mapped_column(Integer, default=0)  # see breaker.py, "cold"
    probe_token: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    probe_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_success_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_failure_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class SendRate(Base):
    """The shared send rate of one service (bday.delivery.pacing), one row for every worker."""

    __tablename__ = "send_rates"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float, default=0.0)  # < 0: slots promised ahead
    refilled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    epoch: Mapped[int] = mapped_column(Integer, default=0)  # + 1 when a 429 lowers the rate
    adaptive_rate: Mapped[float | None] = mapped_column(Float)  # only after a 429
    decreased_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    throttled: Mapped[int] = mapped_column(Integer, default=0)  # decreases so far
    sent_tat: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # next actual send
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
