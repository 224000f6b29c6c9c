from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import text

from bday.config import get_settings
from bday.core.occasions import Kind
from bday.devtools import factories
from bday.scheduling import planner
from bday.store import db
from bday.store.db import transaction
from bday.store.models import Message
from tests.conftest import TRUNCATE
from tests.e2e.stack import FakeEmail, Stack, purge_all

# Fast, deterministic defaults for the processes under test; a test may override any of them.
STACK_ENV = {
    "QUEUE_RETRY_DELAY": "1000",
    "QUEUE_MAX_RETRIES": "3",
    "RECOVERY_GRACE_SECONDS": "10",
    "EMAIL_SERVICE_TIMEOUT": "2000",
    "BREAKER_IDLE": "0",
}


@pytest.fixture
def stack(database_url, tmp_path, monkeypatch) -> Iterator[Stack]:
    fake = FakeEmail()
    env = {
        **STACK_ENV,
        "DATABASE_URL": database_url,
        "RABBITMQ_URL": os.environ["RABBITMQ_URL"],
        "EMAIL_SERVICE_URL": fake.url,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    purge_all()
    running = Stack(tmp_path, fake, env)
    yield running
    running.stop()
    purge_all()
    with db.engine().begin() as connection:
        connection.execute(text(TRUNCATE))
    get_settings.cache_clear()


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


__all__ = ["add_due_messages", "add_user", "next_instant", "planner", "rows"]
