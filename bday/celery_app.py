"""The Celery application. `celery -A bday worker|beat|flower` finds it as `bday.app`.

Configuration is read lazily (on first use), so importing bday never needs a valid
environment; a bad setting stops the worker or beat with one line naming the variable.
"""

from __future__ import annotations

import logging
import sys

from celery import Celery, signals
from celery.worker.consumer import Consumer

log = logging.getLogger(__name__)

app = Celery("bday", include=["bday.tasks"])
app.config_from_object("bday.celeryconfig")


class DeadLetteringConsumer(Consumer):
    """Celery's consumer, except that an undecodable message is dead-lettered, not dropped.

    Celery acks a message it cannot decode (bad JSON, unknown content type) so it cannot loop;
    rejecting it without requeue does the same and keeps it in the DLQ for inspection.
    """

    def on_decode_error(self, message, exc):
        log.error("undecodable job dead-lettered (%s; content-type %r)", exc, message.content_type)
        message.reject(requeue=False)


@signals.worker_ready.connect
def _declare_dead_letter_side_and_plan(sender=None, **_):
    """Celery declares the queues it consumes; the DLX and DLQ are declared here. Planning
    runs at once so a worker that comes back after downtime catches up without waiting."""
    from bday import broker
    from bday.tasks import plan

    with app.connection_for_write() as connection:
        broker.declare_all(connection)
    plan.delay()


@signals.beat_init.connect
def _plan_when_beat_starts(sender=None, **_):
    """Catch up at once after downtime instead of waiting for the next hourly plan."""
    from bday import broker
    from bday.tasks import plan

    with app.connection_for_write() as connection:
        broker.declare_all(connection)
    plan.delay()


def exit_on_bad_settings(error: Exception) -> None:
    """Print the one-line settings error and stop (worker/beat start-up)."""
    print(f"bday: {error}", file=sys.stderr)
    raise SystemExit(2)
