"""The Celery application. `celery -A bday worker|beat|flower` finds it as `bday.app`.

Configuration is read lazily (on first use), so importing bday never needs a valid
environment; a bad setting stops the worker or beat with one line naming the variable.
"""

from __future__ import annotations

import logging
import os
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

    with app.connection_for_write() as connection:
        broker.declare_all(connection)
    catch_up()


@signals.beat_init.connect
def _plan_when_beat_starts(sender=None, **_):
    """Catch up at once after downtime instead of waiting for the next hourly plan."""
    from bday import broker
    from bday.beat import record_tick

    with app.connection_for_write() as connection:
        broker.declare_all(connection)
    catch_up()
    record_tick("started")


def catch_up() -> None:
    """Plan, then enqueue (a chain, so in that order): whatever fell due while nothing ran goes
    out now rather than at the next hourly plan and minute tick."""
    from celery import chain

    from bday.tasks import enqueue, plan

    chain(plan.si(), enqueue.si()).delay()


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _bday_log_format(logger=None, **_):
    from bday import logs

    logs.configure(logger.handlers if logger is not None else None)


@signals.worker_ready.connect
def _serve_worker_metrics(sender=None, **_):
    """The worker's own counters and histograms on WORKER_METRICS_PORT (0: off)."""
    port = int(os.environ.get("WORKER_METRICS_PORT", "9751") or 0)
    if not port:
        return
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=os.environ.get("WORKER_METRICS_ADDR", "0.0.0.0"))
    except OSError as exc:  # another worker on this host has the port: metrics are optional
        log.warning("worker metrics not served on port %d: %s", port, exc)


def refuse_open_flower(argv: list[str], environ: dict) -> str | None:
    """Flower must not listen beyond localhost without basic auth; the reason if it would."""
    program = argv[0].replace("\\", "/") if argv else ""
    is_celery = os.path.basename(program) == "celery" or program.endswith("celery/__main__.py")
    if not is_celery or "flower" not in argv:
        return None
    address = environ.get("FLOWER_ADDRESS", "")
    for index, arg in enumerate(argv):
        if arg.startswith("--address="):
            address = arg.split("=", 1)[1]
        elif arg == "--address" and index + 1 < len(argv):
            address = argv[index + 1]
    has_auth = environ.get("FLOWER_BASIC_AUTH") or any(
        a.startswith(("--basic-auth", "--basic_auth")) for a in argv)
    if address in ("127.0.0.1", "localhost", "::1") or has_auth:
        return None
    return (f"Flower would listen on {address or 'all interfaces'} without authentication: set "
            "FLOWER_BASIC_AUTH=user:password, or bind it to localhost with --address=127.0.0.1")


def exit_on_bad_settings(error: Exception) -> None:
    """Print the one-line settings error and stop (worker/beat start-up)."""
    print(f"bday: {error}", file=sys.stderr)
    raise SystemExit(2)


_flower_refusal = refuse_open_flower(sys.argv, dict(os.environ))
if _flower_refusal:
    print(f"bday: {_flower_refusal}", file=sys.stderr)
    raise SystemExit(2)
