"""What the worker and beat do when they start: declare the dead-letter side, catch up, serve
metrics, and log in bday's format. Connected when Celery imports this module (`include`)."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import Any

from celery import chain, signals

from bday.broker import topology
from bday.broker.app import app
from bday.telemetry import logs
from bday.worker.beat import record_tick

log = logging.getLogger(__name__)


@signals.worker_ready.connect
def _declare_dead_letter_side_and_plan(sender: Any = None, **_: Any) -> None:
    """Celery declares the queues it consumes; the DLX and DLQ are declared here. Planning
    runs at once so a worker that comes back after downtime catches up without waiting."""
    with app.connection_for_write() as connection:
        topology.declare_all(connection)
    catch_up()


@signals.beat_init.connect
def _plan_when_beat_starts(sender: Any = None, **_: Any) -> None:
    """Catch up at once after downtime instead of waiting for the next hourly plan."""
    with app.connection_for_write() as connection:
        topology.declare_all(connection)
    catch_up()
    record_tick("started")


def catch_up() -> None:
    """Plan, then enqueue (a chain, so in that order): whatever fell due while nothing ran goes
    out now rather than at the next hourly plan and minute tick.

    A worker and beat started together both ask: the plan carries when it was asked for, and
    the second one finds a fresh plan with the same settings and skips (jobs.plan_job), so a
    start logs one `plan:` line."""
    requested_at = datetime.now(UTC).isoformat()
    chain(
        app.signature("bday.tasks.plan", kwargs={"requested_at": requested_at}, immutable=True),
        app.signature("bday.tasks.enqueue", immutable=True),
    ).delay()


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _bday_log_format(logger: logging.Logger | None = None, **_: Any) -> None:
    logs.configure(logger.handlers if logger is not None else None)


# How many ports above WORKER_METRICS_PORT a worker tries when another process holds it: a host
# running several worker processes (`honcho start -c worker=4`, or two `celery worker` by hand)
# gets one port each, 9751, 9752, ... in start order.
METRICS_PORT_SPAN = 16


@signals.worker_ready.connect
def _serve_worker_metrics(sender: Any = None, **_: Any) -> None:
    """The worker's own counters and histograms on WORKER_METRICS_PORT (0: off), or on the
    next free port above it when another worker process on this host has it."""
    base = int(os.environ.get("WORKER_METRICS_PORT", "9751") or 0)
    if not base:
        return
    port = serve_metrics(base, os.environ.get("WORKER_METRICS_ADDR", "0.0.0.0"))
    if port:
        log.info("worker metrics on port %d", port)
    else:
        log.warning(
            "worker metrics not served: ports %d-%d all taken", base, base + METRICS_PORT_SPAN - 1
        )


def serve_metrics(base: int, addr: str) -> int | None:
    """Serve the default registry on the first port from `base` that binds; that port or None."""
    from prometheus_client import start_http_server

    for port in range(base, base + METRICS_PORT_SPAN):
        try:
            start_http_server(port, addr=addr)
        except OSError:  # taken (by another worker, usually): try the next one
            continue
        return port
    return None
