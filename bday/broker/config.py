"""Celery settings derived from bday's settings (loaded lazily by `app.config_from_object`).

Celery reads them as this module's attributes; they are computed on the first read (module
`__getattr__`), so importing the module reads no setting and never exits. A bad setting stops
the worker or beat with one line when Celery first reads its configuration.

Each choice below is there for a reason that matters to exactly-once delivery:

* `task_acks_late` + `task_acks_on_failure=False`: a job is acknowledged only after
  its outcome is recorded; a task that raises is rejected without requeue, so it dead-letters.
* `task_reject_on_worker_lost`: a job whose (prefork) worker process died is requeued, not acked.
* publisher confirms on the publishes that create work (enqueue, hooks, recovery, replay: see
  `dispatch.publish`, which opens its own confirming connection). Not for Celery's internal
  publishes from worker threads (events, retries): measured here, confirms there stalled a
  threads-pool worker for ~90 s (until the heartbeat timeout) in 1 of 3 runs of 2,000 no-op
  tasks, and in none of 5 runs without. A retry that is lost anyway is caught by recovery:
  the row stays QUEUED with its next_attempt_at.
* `broker_connection_max_retries=None`: workers and beat reconnect for as long as it takes.
* quorum queues on a topic exchange: countdowns are held by the broker (native delayed
  delivery), never in worker memory past RabbitMQ's 30-minute consumer timeout.
* JSON only, no result backend: jobs carry ids, outcomes live in PostgreSQL.
"""

from __future__ import annotations

import functools
from typing import Any

from celery.schedules import crontab

from bday.broker.topology import DELAYED_QUEUE_TYPE, Topology, topology
from bday.config import PREFETCH_MULTIPLIER, Settings, SettingsError, get_settings


def __getattr__(name: str) -> Any:
    if name.startswith("__"):  # import machinery and tools probing dunders read nothing
        raise AttributeError(name)
    values = _values()
    if name in values:
        return values[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_values()})


@functools.cache
def _values() -> dict[str, Any]:
    try:
        settings = get_settings()
    except SettingsError as error:
        from bday.broker.app import exit_on_bad_settings

        exit_on_bad_settings(error)
        raise  # not reached: exit_on_bad_settings exits
    parts = topology(settings)
    return {
        "_topology": parts,
        **_broker(settings),
        **_tasks(parts),
        **_worker(settings),
        **_beat(settings),
    }


def _cron(expression: str) -> crontab:
    return crontab.from_string(expression)


def _broker(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.rabbitmq_url,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_heartbeat": 30,
        "broker_native_delayed_delivery_queue_type": DELAYED_QUEUE_TYPE,
    }


def _tasks(parts: Topology) -> dict[str, Any]:
    return {
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_acks_on_failure": False,
        "task_acks_on_timeout": False,
        "task_reject_on_worker_lost": True,
        "task_create_missing_queues": False,
        "task_queues": parts.consumed_queues,
        "task_default_queue": parts.send_queue.name,
        "task_default_exchange": parts.exchange.name,
        "task_default_exchange_type": "topic",
        "task_default_routing_key": parts.send_queue.routing_key,
        "task_routes": {
            "bday.tasks.send_message": {"queue": parts.send_queue.name},
            "bday.tasks.noop": {"queue": parts.send_queue.name},  # the benchmark's baseline
            "bday.tasks.*": {"queue": parts.scheduler_queue.name},
        },
    }


def _worker(settings: Settings) -> dict[str, Any]:
    return {
        # The send is I/O-bound: threads wait on the email service cheaply.
        "worker_pool": "threads",
        "worker_concurrency": settings.queue_concurrency,
        "worker_prefetch_multiplier": PREFETCH_MULTIPLIER,
        # How long the worker's eta timer may sleep between checks (Celery's default: 1 s). A job
        # held for its instant or a paced send's slot then starts within 0.1 s of it, not 1 s late.
        "worker_timer_precision": 0.1,
        "worker_consumer": "bday.broker.app:DeadLetteringConsumer",
        # Off by default (they cost ~0.65 ms of worker CPU per message, measured): Flower switches
        # them on in the workers it watches (its enable_events option, on by default);
        # WORKER_TASK_EVENTS=true turns them on from the start.
        "worker_send_task_events": settings.worker_task_events,
        "task_send_sent_event": settings.worker_task_events,
        "worker_hijack_root_logger": False,
    }


def _beat(settings: Settings) -> dict[str, Any]:
    jobs = {
        "enqueue": settings.cron_minute_schedule,
        "plan": settings.cron_plan_schedule,
        "recover": settings.cron_recovery_schedule,
        "retention": settings.cron_retention_schedule,
    }
    return {
        "timezone": settings.cron_timezone,
        "enable_utc": True,
        "beat_scheduler": "bday.worker.beat:Scheduler",
        "beat_max_loop_interval": 10,
        "beat_schedule": {
            name: {"task": f"bday.tasks.{name}", "schedule": _cron(cron)}
            for name, cron in jobs.items()
        },
    }
