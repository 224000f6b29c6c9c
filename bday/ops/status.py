"""What state bday is in, read from PostgreSQL and RabbitMQ. Used by `bday status`,
`bday health` and the metrics exporter, so all three always agree."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kombu import Connection
from sqlalchemy import text

from bday.broker.topology import topology
from bday.config import get_settings
from bday.store.db import engine


@dataclass
class DatabaseState:
    by_status: Counter = field(default_factory=Counter)
    by_type_status: Counter = field(default_factory=Counter)
    oldest_overdue_s: float | None = None
    oldest_overdue_id: str | None = None
    heartbeats: dict[str, datetime] = field(default_factory=dict)
    breaker_state: str = "closed"
    breaker_open_s: float = 0.0
    breaker_trips: int = 0
    breaker_last_error: str | None = None


@dataclass
class BrokerState:
    queue_depth: int
    dlq_depth: int
    consumers: int
    scheduler_depth: int


_COUNTS = text("SELECT message_type, status, count(*) FROM messages GROUP BY 1, 2")
_OLDEST = text(
    """SELECT id, scheduled_send_time FROM messages
        WHERE status IN ('PENDING', 'QUEUED', 'SENDING') AND scheduled_send_time < :now
        ORDER BY scheduled_send_time LIMIT 1"""
)
_HEARTBEATS = text("SELECT name, beat_at FROM heartbeats")
_BREAKER = text(
    "SELECT state, opened_at, trips, last_error FROM circuit_breakers WHERE name = 'email-service'"
)


def read_database(now: datetime | None = None) -> DatabaseState:
    now = now or datetime.now(UTC)
    state = DatabaseState()
    with engine().connect() as connection:
        for message_type, status, count in connection.execute(_COUNTS):
            state.by_status[status] += count
            state.by_type_status[(message_type, status)] += count
        oldest = connection.execute(_OLDEST, {"now": now}).first()
        if oldest:
            state.oldest_overdue_id = str(oldest.id)
            state.oldest_overdue_s = (now - oldest.scheduled_send_time).total_seconds()
        state.heartbeats = dict(connection.execute(_HEARTBEATS).all())
        breaker = connection.execute(_BREAKER).first()
    if breaker:
        state.breaker_state, opened_at, state.breaker_trips, state.breaker_last_error = breaker
        if state.breaker_state != "closed" and opened_at:
            state.breaker_open_s = (now - opened_at).total_seconds()
    return state


def read_broker() -> BrokerState:
    """Depths and consumers by passive declares: reading never creates a queue."""
    parts = topology()
    with Connection(get_settings().rabbitmq_url, connect_timeout=5) as connection:
        connection.ensure_connection(max_retries=1)
        channel = connection.channel()
        send = parts.send_queue.bind(channel).queue_declare(passive=True)
        dlq = parts.dead_letter_queue.bind(channel).queue_declare(passive=True)
        scheduler = parts.scheduler_queue.bind(channel).queue_declare(passive=True)
    return BrokerState(
        send.message_count, dlq.message_count, send.consumer_count, scheduler.message_count
    )
