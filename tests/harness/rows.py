"""The rows end-to-end and chaos tests start from (users and due messages, inserted directly,
bypassing the hooks) and read back, and the heartbeat that says an enqueue run has happened."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import text

from bday.core.occasions import Kind
from bday.devtools import factories
from bday.store import db
from bday.store.db import transaction
from bday.store.models import Message


def add_user(
    name: str = "Ada",
    *,
    zone: str = "UTC",
    birthday: date | None = None,
    owed_from: datetime | None = None,
    anniversary: date | None = None,
) -> uuid.UUID:
    """Insert a user directly (bypassing hooks), owed from `owed_from` (default: long ago)."""
    user = factories.user_row(
        name,
        birthday=birthday or date(1990, 1, 1),
        anniversary=anniversary,
        timezone=zone,
        owed_from=owed_from or factories.LONG_AGO,
    )
    with transaction() as session:
        factories.insert(session, [user])
    return user["id"]


def add_due_messages(
    count: int, at: datetime, kind: Kind = Kind.BIRTHDAY, prefix: str = "u"
) -> list[uuid.UUID]:
    """`count` users with one PENDING message each, scheduled at `at` (bulk insert)."""
    users = [factories.user_row(f"{prefix}{index}") for index in range(count)]
    messages = [factories.message_row(user["id"], at, kind=kind) for user in users]
    with transaction() as session:
        factories.insert(session, users, messages)
    return [m["id"] for m in messages]


def rows() -> list[Message]:
    with transaction() as session:
        return list(session.query(Message).order_by(Message.scheduled_send_time))


def next_instant(min_ahead_s: float = 3.0) -> datetime:
    """A whole second at least `min_ahead_s` from now."""
    now = datetime.now(UTC)
    return (now + timedelta(seconds=min_ahead_s + 1)).replace(microsecond=0)


def enqueue_ran_after(instant: datetime) -> bool:
    """Has an enqueue run (beat's, a worker's start-up one, or a test's) started after
    `instant`? Its heartbeat holds the start of the latest run."""
    with db.engine().connect() as connection:
        beat_at = connection.execute(
            text("SELECT beat_at FROM heartbeats WHERE name = 'enqueue'")
        ).scalar()
    return beat_at is not None and beat_at > instant


def heartbeat_detail(name: str) -> dict | None:
    """What the job `name` last recorded in its heartbeat, or None if it never ran."""
    with db.engine().connect() as connection:
        detail: dict | None = connection.execute(
            text("SELECT detail FROM heartbeats WHERE name = :name"), {"name": name}
        ).scalar()
    return detail
