"""The RabbitMQ topology as the broker sees it after `declare_all`, on the run's own vhost: the
queue types and arguments, the routes, and that a rejected job lands in the dead-letter queue."""

from __future__ import annotations

import subprocess
import time

import pytest
from kombu import Connection, Consumer, Producer

from bday.broker import topology
from bday.config import get_settings

pytestmark = pytest.mark.broker


@pytest.fixture
def broker():
    settings = get_settings()
    with Connection(settings.rabbitmq_url) as connection:
        topology.declare_all(connection, settings)
        parts = topology.topology(settings)
        for queue in (parts.dead_letter_queue, *parts.consumed_queues):
            queue.bind(connection.default_channel).purge()
        yield connection, parts


def _queues(vhost: str) -> dict[str, str]:
    """Queue name -> its `rabbitmqctl list_queues` line (type and arguments)."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "type", "arguments"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return {line.split("\t")[0]: line for line in listed.splitlines() if "\t" in line}


def test_send_queue_is_a_quorum_queue_that_dead_letters_at_least_once_with_a_delivery_limit(
    broker, rabbitmq_vhost
):
    _, parts = broker
    settings = get_settings()
    queues = _queues(rabbitmq_vhost)
    send = queues[parts.send_queue.name]
    assert "quorum" in send and settings.dead_letter_exchange_name in send
    assert "at-least-once" in send and "reject-publish" in send
    assert str(settings.queue_delivery_limit) in send
    assert "quorum" in queues[parts.dead_letter_queue.name]
    assert "x-message-ttl" in queues[parts.scheduler_queue.name]
    assert any(name.startswith("celery_delayed_") for name in queues)  # native delayed delivery


def _one(connection: Connection, queue, timeout: float = 5.0):
    got = []
    with Consumer(connection, [queue], callbacks=[lambda body, message: got.append(message)]):
        deadline = time.monotonic() + timeout
        while not got and time.monotonic() < deadline:
            try:
                connection.drain_events(timeout=0.2)
            except TimeoutError:
                pass
    return got[0] if got else None


def test_jobs_route_by_key_and_a_rejected_one_lands_in_the_dead_letter_queue(broker):
    connection, parts = broker
    producer = Producer(connection.default_channel, exchange=parts.exchange)
    producer.publish({"job": "send"}, routing_key=topology.SEND_ROUTING_KEY)
    producer.publish({"job": "tick"}, routing_key=topology.SCHEDULER_ROUTING_KEY)
    tick = _one(connection, parts.scheduler_queue)
    assert tick is not None and tick.payload == {"job": "tick"}
    tick.ack()
    send = _one(connection, parts.send_queue)
    assert send is not None and send.payload == {"job": "send"}
    send.reject(requeue=False)
    dead = _one(connection, parts.dead_letter_queue)
    assert dead is not None and dead.payload == {"job": "send"}
    assert dead.headers["x-death"][0]["reason"] == "rejected"
    dead.ack()
