"""What state bday is in, read from PostgreSQL and RabbitMQ. Used by `bday status`,
`bday health` and the metrics exporter, so all three always agree."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from kombu import Connection
from sqlalchemy import text

from bday.broker.topology import topology
from bday.broker.urls import connect_attempts
from bday.config import get_settings
from bday.delivery import breaker
from bday.store import messages, partitions
from bday.store.db import engine


@dataclass
class DatabaseState:
    by_status: Counter = field(default_factory=Counter)
    by_type_status: Counter = field(default_factory=Counter)
    oldest_overdue_s: float | None = None
    oldest_overdue_id: str | None = None
    table_bytes: int = 0  # the messages table with its indexes
    oldest_kept: date | None = None  # the oldest occasion date still in the table
    months_partitioned: int = 0  # consecutive months, this one first, with their own partition
    default_rows: int = 0  # rows in the DEFAULT partition (a month without one): 0 if healthy
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


_HEARTBEATS = text("SELECT name, beat_at FROM heartbeats")


def read_database(now: datetime | None = None) -> DatabaseState:
    now = now or datetime.now(UTC)
    state = DatabaseState()
    with engine().connect() as connection:
        for message_type, status, count in messages.counts(connection):
            state.by_status[status] += count
            state.by_type_status[(message_type, status)] += count
        oldest = messages.oldest_overdue(connection, now)
        if oldest:
            state.oldest_overdue_id = str(oldest.id)
            state.oldest_overdue_s = (now - oldest.scheduled_send_time).total_seconds()
        state.table_bytes, state.oldest_kept = messages.storage(connection)
        state.months_partitioned = partitions.months_covered(connection, now.date())
        state.default_rows = partitions.default_rows(connection)
        state.heartbeats = dict(connection.execute(_HEARTBEATS).all())
        shared = breaker.read(connection)
    if shared:
        state.breaker_state, state.breaker_trips = shared.state, shared.trips
        state.breaker_last_error = shared.last_error
        if shared.state != "closed" and shared.opened_at:
            state.breaker_open_s = (now - shared.opened_at).total_seconds()
    return state


def read_broker() -> BrokerState:
    """Depths and consumers by passive declares: reading never creates a queue."""
    parts = topology()
    with Connection(get_settings().rabbitmq_url, connect_timeout=5) as connection:
        connection.ensure_connection(max_retries=connect_attempts(get_settings().rabbitmq_url))
        channel = connection.channel()
        send = parts.send_queue.bind(channel).queue_declare(passive=True)
        dlq = parts.dead_letter_queue.bind(channel).queue_declare(passive=True)
        scheduler = parts.scheduler_queue.bind(channel).queue_declare(passive=True)
    return BrokerState(
        send.message_count, dlq.message_count, send.consumer_count, scheduler.message_count
    )
