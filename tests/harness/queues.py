"""The run's queues and message rows as counts, for unit and end-to-end tests alike.

Shared by tests/scheduling (which publishes without a worker) and tests/e2e and tests/chaos
(which run real workers), so no unit test imports from the end-to-end suite.
"""

from __future__ import annotations

from collections import Counter

from kombu import Connection
from sqlalchemy import text

from bday.broker.topology import topology
from bday.config import get_settings
from bday.store import db


def statuses() -> Counter:
    with db.engine().connect() as connection:
        return Counter(
            dict(
                connection.execute(
                    text("SELECT status, count(*) FROM messages GROUP BY status")
                ).all()
            )
        )


_UNFINISHED = text(
    """SELECT id, status, retry_count, deferrals, next_attempt_at, lease_expires_at,
              dispatch_token, last_error
         FROM messages WHERE status NOT IN ('SENT', 'FAILED', 'CANCELLED')
        ORDER BY scheduled_send_time LIMIT 3"""
)


def left_over() -> str:
    """What a timed-out wait left behind: rows by status, the first unfinished ones, the
    queues. Best effort: a test may have stopped the database or the broker on purpose."""
    parts = []
    try:
        parts.append(f"rows {dict(statuses())}")
        with db.engine().connect() as connection:
            parts += [
                f"{r.id} {r.status} retries={r.retry_count} deferrals={r.deferrals}"
                f" next={r.next_attempt_at} lease={r.lease_expires_at}"
                f" token={r.dispatch_token} error={r.last_error!r}"
                for r in connection.execute(_UNFINISHED)
            ]
        parts.append(f"queues {queue_counts()}")
    except Exception as exc:  # a diagnosis must not hide the timeout
        parts.append(f"(could not look further: {type(exc).__name__})")
    return "; ".join(parts)


def queue_counts() -> dict[str, int]:
    """Ready messages in the send queue and the DLQ (passive declares, never creating them)."""
    parts = topology(get_settings())
    counts = {}
    with Connection(get_settings().rabbitmq_url) as connection:
        channel = connection.channel()
        for key, queue in (("queue", parts.send_queue), ("dlq", parts.dead_letter_queue)):
            try:
                counts[key] = queue.bind(channel).queue_declare(passive=True).message_count
            except Exception:
                channel = connection.channel()
                counts[key] = 0
    return counts


def ready_send_jobs() -> int:
    """Send jobs waiting in the broker: ready in the send queue, or waiting out their delay
    in a celery_delayed_* queue (passive declares, never creating a queue). Jobs a worker has
    received and not yet settled are not counted here: the worker reports those."""
    from kombu.transport.native_delayed_delivery import level_name

    names = [topology(get_settings()).send_queue.name]
    names += [level_name(level) for level in range(28)]
    waiting = 0
    with Connection(get_settings().rabbitmq_url) as connection:
        for name in names:
            channel = connection.channel()
            try:
                waiting += channel.queue_declare(name, passive=True).message_count
            except Exception:  # not declared in this vhost: nothing waits there
                pass
    return waiting


def purge_all() -> None:
    """Empty every bday and celery_delayed_* queue in this run's vhost."""
    from kombu.transport.native_delayed_delivery import level_name

    parts = topology(get_settings())
    names = [q.name for q in (*parts.consumed_queues, parts.dead_letter_queue)]
    names += [level_name(level) for level in range(28)]
    with Connection(get_settings().rabbitmq_url) as connection:
        for name in names:
            channel = connection.channel()
            try:
                channel.queue_purge(name)
            except Exception:  # not declared yet in this vhost
                pass


def declare_topology() -> None:
    """Declare bday's exchanges and queues in this run's vhost (what a worker does at start)."""
    from bday.broker.topology import declare_all

    with Connection(get_settings().rabbitmq_url) as connection:
        declare_all(connection)
