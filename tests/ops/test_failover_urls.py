"""Operator commands given a cluster's failover list (RABBITMQ_URL="amqp://n1;amqp://n2;...")
reach a node that answers even when the nodes before it are down."""

from __future__ import annotations

import os

import pytest
from kombu import Connection

from bday.broker import topology
from bday.broker.urls import connect_attempts, node_urls
from bday.config import get_settings
from bday.ops import status


def test_a_failover_list_is_split_into_one_attempt_per_node():
    urls = "amqp://a:1//; amqp://b:2//;amqp://c:3//;"
    assert node_urls(urls) == ["amqp://a:1//", "amqp://b:2//", "amqp://c:3//"]
    assert connect_attempts(urls) == 3 and connect_attempts("amqp://a:1//") == 1


@pytest.mark.broker
def test_status_reaches_the_third_node_when_the_first_two_are_down(settings_env):
    real = os.environ["RABBITMQ_URL"]  # this run's vhost on the machine's node
    with Connection(real) as connection:
        topology.declare_all(connection)
    vhost = real.rsplit("/", 1)[1]
    dead = [f"amqp://guest:guest@127.0.0.1:{port}/{vhost}" for port in (1, 2)]
    settings_env.setenv("RABBITMQ_URL", ";".join([*dead, real]))
    get_settings.cache_clear()
    broker = status.read_broker()
    assert broker.queue_depth >= 0 and broker.dlq_depth >= 0
