"""A 3-node RabbitMQ cluster (tests/harness/rabbit_cluster.py) under the whole stack: two
workers and beat given every node's URL (`RABBITMQ_URL="amqp://n1;amqp://n2;amqp://n3"`), many
greetings due at one instant, and the node leading `birthday.messages.queue` SIGKILLed either
while every countdown is still pending in the delayed-delivery queues, or just after the instant
while greetings are going out. Nothing may be lost or early; a second send is allowed only for
a request in flight at the kill (none is expected: the database, not the broker, records SENT).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from bday.config import get_settings
from tests.harness import rabbit_cluster
from tests.harness.chaos import sends_summary
from tests.harness.queues import statuses
from tests.harness.rows import add_due_messages
from tests.harness.stack import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not rabbit_cluster.available(), reason="RabbitMQ is not installed"),
]

QUEUE = "birthday.messages.queue"
# The beat's start-up enqueue publishes every row due within two minutes: all countdowns are
# with the broker well before the instant.
ENV = {"ENQUEUE_LEAD_SECONDS": "120", "QUEUE_MAX_RETRIES": "5"}


@pytest.fixture(scope="module")
def cluster():
    running = rabbit_cluster.start()
    yield running
    running.stop()


@pytest.fixture
def on_cluster(stack, cluster, monkeypatch):
    """The stack fixture, pointed at the cluster (the cluster's default vhost)."""
    for node in cluster.nodes:  # a previous scenario's killed node is back before this one
        if not node.os_pid():
            cluster.restart(node.name)
    stack.env["RABBITMQ_URL"] = cluster.url
    monkeypatch.setenv("RABBITMQ_URL", cluster.url)
    get_settings.cache_clear()
    return stack


def _start_processes(stack) -> None:
    for index in range(2):
        stack.start_worker(name=f"cluster{index}", concurrency=8, extra_env=ENV, wait=False)
    stack.start_beat(extra_env=ENV)
    for worker in stack.processes[:2]:
        wait_until(lambda w=worker: " ready." in w.output(), 120, f"{worker.name} ready")


def _kill(cluster, leader: str, fake) -> dict:
    in_flight = statuses()["SENDING"]
    cluster.kill(leader)
    return {
        "killed": leader,
        "in_flight_at_kill": in_flight,
        "killed_at": time.time(),
        "sent_before_kill": len(fake.sent_per_key()),
    }


@pytest.mark.parametrize("moment", ["countdowns_pending", "releasing"])
def test_the_queue_leader_killed_loses_nothing_and_sends_nothing_early(
    on_cluster, cluster, scale, report, moment
):
    stack, count = on_cluster, scale.pick(200, 1000)
    stack.fake.set(latency_ms=100)
    # Killed 20 s ahead, every countdown must be with the broker by then; a kill among the sends
    # only needs every job published first.
    lead = 32 if moment == "countdowns_pending" else 24
    instant = (datetime.now(UTC) + timedelta(seconds=lead)).replace(microsecond=0)
    add_due_messages(count, instant)
    _start_processes(stack)
    wait_until(lambda: statuses()["QUEUED"] == count, 60, "every countdown with the broker")
    leader = cluster.leader(QUEUE)  # asked now: rabbitmqctl takes a second or two to answer
    if moment == "countdowns_pending":
        time.sleep(max(0.0, instant.timestamp() - 20 - time.time()))
        kill = _kill(cluster, leader, stack.fake)
        assert kill["killed_at"] < instant.timestamp() - 5, "killed too late to prove anything"
    else:
        wait_until(lambda: stack.fake.sent_per_key(), 90, "the first greeting sent", 0.02)
        kill = _kill(cluster, leader, stack.fake)
    wait_until(lambda: statuses()["SENT"] == count, 180, "every greeting sent after the kill")
    time.sleep(2)  # a late duplicate would show up here
    sent_at = sorted(r.at for r in stack.fake.records if r.outcome == "sent")
    cluster.restart(kill["killed"])
    wait_until(lambda: kill["killed"] in cluster.members_online(QUEUE), 60, "node back in queue")
    report.update(
        sends_summary(stack.fake.sent_per_key(), count),
        killed=kill["killed"],
        kill_s_from_instant=round(kill["killed_at"] - instant.timestamp(), 1),
        in_flight_at_kill=kill["in_flight_at_kill"],
        sent_before_kill=kill["sent_before_kill"],
        first_s_from_instant=round(sent_at[0] - instant.timestamp(), 2),
        last_greeting_late_s=round(sent_at[-1] - instant.timestamp(), 1),
        rejoined=sorted(cluster.running_nodes()) == sorted(n.name for n in cluster.nodes),
    )
    assert statuses() == {"SENT": count}  # nothing lost, nothing FAILED
    assert report["lost"] == 0
    assert report["second_sends"] <= kill["in_flight_at_kill"]
    assert sent_at[0] >= instant.timestamp()  # none early
    assert report["rejoined"]
    if moment == "releasing":  # the kill really fell among the sends
        assert 0 < kill["sent_before_kill"] < count and kill["killed_at"] < sent_at[-1]
