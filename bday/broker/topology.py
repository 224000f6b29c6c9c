"""RabbitMQ topology: names, queue arguments, and the declarations Celery does not make itself.

* `birthday.messages` (topic exchange) routes `birthday.send` to the quorum queue
  `birthday.messages.queue` and `birthday.scheduler` to `birthday.scheduler.queue` (the periodic
  jobs, kept apart so a backlog of greetings never delays the minute enqueue).
* The send queue dead-letters to the fanout exchange `birthday.messages.dlx`, bound to the
  quorum queue `birthday.messages.dlq`. A job lands there when a task rejects it (permanent failure,
  retries exhausted, malformed or unknown), or when it was delivered more than the delivery limit
  times (a crash loop).
* Quorum queues on a topic exchange let Celery (>= 5.5) hold countdowns in the broker
  ("native delayed delivery", the `celery_delayed_*` queues) instead of in worker memory, where
  RabbitMQ's consumer timeout (30 min) would close the channel on long ETAs.

RabbitMQ refuses to re-declare a queue with other arguments; every declaration goes through the
`Queue` objects built here so publishers and workers always agree.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from kombu import Connection, Exchange, Queue
from kombu.transport.native_delayed_delivery import (
    bind_queue_to_native_delayed_delivery_exchange,
    declare_native_delayed_delivery_exchanges_and_queues,
)

from bday.config import Settings, get_settings

SEND_ROUTING_KEY = "birthday.send"
SCHEDULER_ROUTING_KEY = "birthday.scheduler"
SCHEDULER_TTL_MS = 10 * 60 * 1000
# Type of Celery's `celery_delayed_*` queues; celeryconfig passes the same value to Celery, and
# both sides must agree or RabbitMQ refuses the second declaration.
DELAYED_QUEUE_TYPE = "quorum"


@dataclass(frozen=True)
class Topology:
    exchange: Exchange
    send_queue: Queue
    scheduler_queue: Queue
    dead_letter_exchange: Exchange
    dead_letter_queue: Queue

    @property
    def consumed_queues(self) -> list[Queue]:
        return [self.send_queue, self.scheduler_queue]


def _quorum_arguments(settings: Settings, dead_letter_exchange: str) -> dict:
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": dead_letter_exchange,
        # at-least-once dead-lettering: the broker keeps the message until the DLQ confirms it.
        # RabbitMQ requires reject-publish overflow for that strategy.
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        # A job redelivered this often is crashing its workers; park it in the DLQ. The row in
        # PostgreSQL still says what is owed, so recovery republishes it later.
        "x-delivery-limit": settings.queue_delivery_limit,
    }


@functools.cache
def _topology(settings: Settings) -> Topology:
    exchange = Exchange(settings.exchange_name, type="topic", durable=True)
    dlx = Exchange(settings.dead_letter_exchange_name, type="fanout", durable=True)
    arguments = _quorum_arguments(settings, dlx.name)
    return Topology(
        exchange=exchange,
        send_queue=Queue(
            settings.queue_name,
            exchange,
            routing_key=SEND_ROUTING_KEY,
            durable=True,
            queue_arguments=arguments,
        ),
        # Periodic jobs are cheap to repeat and superseded by the next tick: a stale one simply
        # expires (no dead-lettering), so a day without workers leaves no pile of old ticks.
        scheduler_queue=Queue(
            settings.scheduler_queue_name,
            exchange,
            routing_key=SCHEDULER_ROUTING_KEY,
            durable=True,
            queue_arguments={"x-queue-type": "quorum", "x-message-ttl": SCHEDULER_TTL_MS},
        ),
        dead_letter_exchange=dlx,
        dead_letter_queue=Queue(
            settings.dead_letter_queue_name,
            dlx,
            routing_key="#",
            durable=True,
            queue_arguments={"x-queue-type": "quorum"},
        ),
    )


def topology(settings: Settings | None = None) -> Topology:
    return _topology(settings or get_settings())


def declare_all(connection: Connection, settings: Settings | None = None) -> None:
    """Declare exchanges, queues and bindings: dead-letter side, and Celery's delayed-delivery
    exchanges with our queues bound to them (a publisher may run before any worker has ever
    started; publishing a countdown to an undeclared `celery_delayed_27` fails). Idempotent."""
    settings = settings or get_settings()
    parts = topology(settings)
    channel = connection.default_channel
    for queue in (parts.dead_letter_queue, *parts.consumed_queues):
        queue.bind(channel).declare()
    declare_native_delayed_delivery_exchanges_and_queues(connection, DELAYED_QUEUE_TYPE)
    for queue in parts.consumed_queues:
        bind_queue_to_native_delayed_delivery_exchange(connection, queue)
    _declared.add((settings.rabbitmq_url, os.getpid()))


def ensure_declared(connection: Connection, settings: Settings | None = None) -> None:
    """`declare_all` once per process and broker."""
    settings = settings or get_settings()
    if (settings.rabbitmq_url, os.getpid()) not in _declared:
        declare_all(connection, settings)


_declared: set[tuple[str, int]] = set()
