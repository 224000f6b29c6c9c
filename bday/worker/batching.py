"""Batched jobs: the worker hands a task's jobs to it a batch at a time.

Celery runs one task call per message, and for `send_message` that call's fixed costs (the pool
hand-off, tracing, two statements, a log line) were most of a greeting's CPU. A task based on
`BatchTask` keeps Celery's handling of each message (decoding, revoke and expiry checks, the eta
timer with its prefetch bookkeeping, acks late, one ack or reject per message) but the consumer
buffers its requests and the pool runs `run_batch(jobs)` once per batch: as soon as
`batch_size` jobs wait, or `batch_wait_s` after the first one arrived.

Modelled on celery-batches (github.com/clokep/celery-batches), which bday does not depend on:
its 0.11 requires celery<5.7 (bday needs 5.7), it acks a batch's messages together (no reject
of one job, so no dead-lettering of one bad job), and it re-checks jobs with an eta only when a
batch flushes, without widening the prefetch window for them as Celery's own strategy does.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from celery import Task, signals
from celery.utils.imports import symbol_by_name
from celery.utils.time import timezone
from celery.worker.request import create_request_cls
from celery.worker.strategy import hybrid_to_proto2, proto1_to_proto2
from kombu.asynchronous.timer import to_timestamp

log = logging.getLogger(__name__)

ACK = "ack"
REJECT = "reject"  # without requeue: RabbitMQ dead-letters the message


@dataclass(frozen=True, slots=True)
class Received:
    """One job of a batch, as plain data (it crosses into prefork children by pickle)."""

    id: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    retries: int = 0


class BatchTask(Task):
    """Base of a task whose worker runs `run_batch(jobs)` on batches of its jobs.

    `run_batch` returns ACK or REJECT per job, in order; anything else (an exception, a wrong
    length) rejects the whole batch, as Celery rejects a late-acked job whose task failed.
    Calling the task's own function directly (or `apply()`) still runs one job."""

    batch_size = 32
    batch_wait_s = 0.05

    def run_batch(self, jobs: list[Received]) -> list[str]:
        raise NotImplementedError

    def Strategy(self, task: BatchTask, app: Any, consumer: Any, **_: Any) -> Any:
        return _Batcher(task, app, consumer).on_message


def run_batch(task: BatchTask, jobs: list[Received]) -> list[str] | None:
    """The pool's target: never raises (a raise would skip the callback that settles acks)."""
    try:
        return task.run_batch(jobs)
    except Exception:
        log.exception("batch of %d %s jobs failed; rejecting them", len(jobs), task.name)
        return None


class _Batcher:
    """The consumer side: turns messages into requests, holds eta jobs, buffers, flushes."""

    def __init__(self, task: BatchTask, app: Any, consumer: Any):
        self.task, self.app, self.consumer = task, app, consumer
        self.pool, self.timer = consumer.pool, consumer.timer
        eventer = consumer.event_dispatcher
        self.events = bool(eventer and eventer.enabled and task.send_events)
        self.request_cls = create_request_cls(
            symbol_by_name(task.Request), task, consumer.pool, consumer.hostname, eventer, app=app
        )
        self.revoked = consumer.controller.state.revoked
        self._lock = threading.Lock()
        self._waiting: list[Any] = []
        self._flush_entry: Any = None

    def on_message(
        self, message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **_: Any
    ) -> None:
        if body is None and "args" not in message.payload:
            body, headers, decoded, utc = (
                message.body,
                message.headers,
                False,
                self.app.uses_utc_timezone(),
            )
        elif "args" in message.payload:
            body, headers, decoded, utc = hybrid_to_proto2(message, message.payload)
        else:
            body, headers, decoded, utc = proto1_to_proto2(message, body)
        request = self.request_cls(
            message,
            on_ack=ack,
            on_reject=reject,
            app=self.app,
            hostname=self.consumer.hostname,
            eventer=self.consumer.event_dispatcher,
            task=self.task,
            connection_errors=self.consumer.connection_errors,
            body=body,
            headers=headers,
            decoded=decoded,
            utc=utc,
        )
        if (request.expires or request.id in self.revoked) and request.revoked():
            return
        signals.task_received.send(sender=self.consumer, request=request)
        if self.events:
            request.send_event(
                "task-received",
                name=request.name,
                args=request.argsrepr,
                kwargs=request.kwargsrepr,
                retries=request.request_dict.get("retries", 0),
                eta=request.eta and request.eta.isoformat(),
            )
        if request.eta:
            try:
                if request.utc:
                    eta = to_timestamp(timezone.to_system(request.eta))
                else:
                    eta = to_timestamp(request.eta, self.app.timezone)
            except (OverflowError, ValueError) as exc:
                log.error(
                    "job %s: unusable eta %r (%s); rejecting it", request.id, request.eta, exc
                )
                request.reject(requeue=False)
                return
            if eta > time.monotonic():  # held by the timer, like Celery's own eta jobs
                self.consumer.qos.increment_eventually()
                self.timer.call_at(eta, self._due, (request,), priority=6)
                return
        self._add(request)

    def _due(self, request: Any) -> None:
        self.consumer.qos.decrement_eventually()
        self._add(request)

    def _add(self, request: Any) -> None:
        with self._lock:
            self._waiting.append(request)
            if len(self._waiting) < self.task.batch_size:
                if self._flush_entry is None:
                    self._flush_entry = self.timer.call_after(self.task.batch_wait_s, self._flush)
                return
            batch, self._waiting = self._waiting, []
            entry, self._flush_entry = self._flush_entry, None
        if entry is not None:
            entry.cancel()
        self._start(batch)

    def _flush(self) -> None:
        with self._lock:
            batch, self._waiting = self._waiting, []
            self._flush_entry = None
        if batch:
            self._start(batch)

    def _start(self, batch: list[Any]) -> None:
        jobs = [
            Received(r.id, tuple(r.args), dict(r.kwargs), r.request_dict.get("retries") or 0)
            for r in batch
        ]
        self.pool.apply_async(
            run_batch,
            (self.task, jobs),
            callback=partial(self._settle, batch, time.monotonic()),
        )

    def _settle(self, batch: list[Any], started: float, verdicts: Any) -> None:
        """Ack or reject each message of a finished batch (in the pool's thread)."""
        if not isinstance(verdicts, list) or len(verdicts) != len(batch):
            verdicts = [REJECT] * len(batch)
        runtime = time.monotonic() - started
        for request, verdict in zip(batch, verdicts, strict=True):
            if verdict == ACK:
                request.acknowledge()
                if self.events:
                    request.send_event("task-succeeded", result=None, runtime=runtime)
            else:
                request.reject(requeue=False)
                if self.events:
                    request.send_event("task-rejected", requeue=False)
