"""Celery tasks, at the path the contract names (`from bday.tasks import send_message`)."""

from bday.worker.tasks import (
    enqueue,
    enqueue_slice,
    plan,
    plan_ranges,
    recover,
    send_message,
)

__all__ = [
    "enqueue",
    "enqueue_slice",
    "plan",
    "plan_ranges",
    "recover",
    "send_message",
]
