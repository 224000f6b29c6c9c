"""RABBITMQ_URL may name every node of a cluster, separated by ';' (kombu's failover form):

    amqp://USER:PASSWORD@rabbit1:5672/v;amqp://USER:PASSWORD@rabbit2:5672/v;...

Celery's workers and beat take it as is; our own connections (publish, status, dlq, health) must try
each node once before giving up, which kombu does only when allowed that many attempts."""

from __future__ import annotations


def node_urls(url: str) -> list[str]:
    """The URLs of a failover list (a plain URL is a list of one)."""
    return [part.strip() for part in url.split(";") if part.strip()]


def connect_attempts(url: str) -> int:
    """`ensure_connection(max_retries=...)` that reaches every listed node once: kombu moves
    to the next node after each failed attempt, so one attempt would never reach a third."""
    return max(1, len(node_urls(url)))
