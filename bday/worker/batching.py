"""Batched jobs: the worker hands a task's jobs to it a batch at a time.

Celery runs one task call per message, and for `send_message` that call's fixed costs (the pool
hand-off, tracing, two statements, a log line) were most of a greeting's CPU. A task based on
`BatchTask` keeps Celery's handling of each message (decoding, revoke and expiry checks, the eta
wait with Celery's prefetch bookkeeping, acks late, one ack or reject per message, the worker
state and the task events Celery sends for it) but the consumer buffers its requests and the
pool runs `run_batch(jobs)` once per batch: as soon as `batch_size` jobs wait, or
`batch_wait_s` after the first one arrived. These rest on Celery internals, hence the pin below
the next minor in pyproject.toml and tests/worker/test_batching_contract.py.

Jobs held for their eta and the wait for a batch to fill run on the batcher's own clock thread,
not on the worker's timer: the event loop fires at most ten timer entries per turn, and a turn
with nothing to read lasts a second, so a peak of jobs due at one instant left the timer ten
per second (3.6 s before the first send of a 1,000-greeting burst, measured).

Only the threads pool batches (the shipped setting); under prefork or solo the task runs one job
per message through Celery's own strategy, with the same outcomes.

Modelled on celery-batches (github.com/clokep/celery-batches), which bday does not depend on:
its 0.11 requires celery<5.7 (bday needs 5.7), it acks a batch's messages together (no reject
of one job, so no dead-lettering of one bad job), and it re-checks jobs with an eta only when a
batch flushes, without widening the prefetch window for them as Celery's own strategy does.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from celery import Task, signals
from celery.concurrency.thread import TaskPool as ThreadsPool
from celery.exceptions import Reject, Retry
from celery.utils.imports import instantiate, symbol_by_name
from celery.utils.saferepr import saferepr
from celery.utils.time import timezone
from celery.worker import state as worker_state
from celery.worker.request import create_request_cls
from celery.worker.strategy import hybrid_to_proto2, proto1_to_proto2
from kombu.asynchronous.timer import to_timestamp
from kombu.utils.encoding import safe_repr

log = logging.getLogger(__name__)

# A job's verdict, and the trail of Celery events its message leaves (as Celery's own worker
# sends them for a task that returns, calls `self.retry()`, or raises `Reject(requeue=False)`).
ACK = "ack"  # done: acked; task-succeeded
RETRY = "retry"  # published again to run later (as Task.retry does), then acked; task-retried
REJECT = "reject"  # rejected without requeue, so RabbitMQ dead-letters it; task-failed, -rejected

_SUCCEEDED_RESULT = saferepr(ACK)  # the result a task-succeeded event reports (the task's return)


class Settle(Protocol):
    """Settles job `index` of the batch: ACK, RETRY or REJECT, with why (for the event)."""

    def __call__(self, index: int, verdict: str, reason: str = "") -> None: ...


class RunAgain(Exception):
    """Why a job runs again: the cause its task-retried event reports (`Task.retry(exc=...)`)."""


@dataclass(frozen=True, slots=True)
class Received:
    """One job of a batch, as plain data (it crosses into prefork children by pickle)."""

    id: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    retries: int = 0


class BatchTask(Task):
    """Base of a task whose worker runs `run_batch(jobs)` on batches of its jobs.

    `run_batch` calls `settle(index, verdict, reason)` the moment a job's fate is known (ACK,
    RETRY or REJECT), so its message is settled while slower jobs of the batch are still
    running, and returns every verdict in order; a job left unsettled by an exception or a
    wrong length is rejected, as Celery rejects a late-acked job whose task failed. Calling
    the task's own function directly (or `apply()`) still runs one job."""

    batch_size = 32
    batch_wait_s = 0.05

    def run_batch(self, jobs: list[Received], settle: Settle | None = None) -> list[str]:
        raise NotImplementedError

    def run_one(self, received: Received) -> str:
        """One job run by Celery's own strategy (prefork, solo, `apply()`), ending as Celery's
        own tasks do so its events match a batched job's: REJECT raises `Reject` (task-failed,
        task-rejected), RETRY raises `Retry` as `Task.retry` would after its publish
        (task-retried). Called directly, it returns the verdict."""
        why = [""]

        def keep(index: int, verdict: str, reason: str = "") -> None:
            why[0] = reason

        verdict = self.run_batch([received], keep)[0]
        if verdict == REJECT:
            raise Reject(why[0], requeue=False)
        if verdict == RETRY and not self.request.called_directly:
            raise Retry(why[0], exc=RunAgain(why[0]))
        return verdict

    def Strategy(self, task: BatchTask, app: Any, consumer: Any, **kwargs: Any) -> Any:
        if not isinstance(consumer.pool, ThreadsPool):
            return instantiate(Task.Strategy, task, app, consumer, **kwargs)
        return _Batcher(task, app, consumer).on_message


def _run_in_pool(
    task: BatchTask, jobs: list[Received], settle: Settle | None = None
) -> list[str] | None:
    """The pool's target, around `task.run_batch`: never raises (a raise would skip the
    callback that settles acks)."""
    try:
        return task.run_batch(jobs, settle)
    except Exception:
        log.exception("batch of %d %s jobs failed; rejecting them", len(jobs), task.name)
        return None


@dataclass(order=True)
class _Call:
    at: float
    seq: int
    fn: Callable[..., Any] = field(compare=False)
    args: tuple[Any, ...] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)


class _Clock(threading.Thread):
    """Calls functions at monotonic instants, in order, on its own thread."""

    def __init__(self) -> None:
        super().__init__(name="bday-batch-clock", daemon=True)
        self._calls: list[_Call] = []
        self._changed = threading.Condition()
        self._seq = itertools.count()

    def call_at(self, at: float, fn: Callable[..., Any], *args: Any) -> _Call:
        call = _Call(at, next(self._seq), fn, args)
        with self._changed:
            heapq.heappush(self._calls, call)
            self._changed.notify()
        return call

    def run(self) -> None:
        while True:
            with self._changed:
                while not self._calls or self._calls[0].at > time.monotonic():
                    wait = self._calls[0].at - time.monotonic() if self._calls else None
                    self._changed.wait(wait)
                call = heapq.heappop(self._calls)
            if call.cancelled:
                continue
            try:
                call.fn(*call.args)
            except Exception:
                log.exception("batch clock: %s failed", getattr(call.fn, "__name__", call.fn))


_clocks: dict[int, _Clock] = {}
_clocks_lock = threading.Lock()


def _clock() -> _Clock:
    """This process's clock, started once (the consumer builds a new strategy, so a new
    batcher, each time it reconnects to the broker)."""
    with _clocks_lock:
        clock = _clocks.get(os.getpid())
        if clock is None or not clock.is_alive():
            clock = _clocks[os.getpid()] = _Clock()
            clock.start()
        return clock


def _stale(request: Any) -> bool:
    """Did the job arrive on a channel that has closed since (the consumer reconnected)? It
    can no longer be acked, and the broker delivers it again on the new channel: drop it, as
    Celery's consumer drops its reserved and eta-held requests on close."""
    channel = getattr(request.message, "channel", None)
    return channel is not None and getattr(channel, "is_open", True) is False


def _route(app: Any, task: Task) -> dict[str, Any]:
    """Where the task's jobs are published, as a task-sent event names it. Celery's worker puts
    no routing in task-received, so where task-sent events are off (the default here, and
    Flower cannot turn them on in publishers) Flower knows no queue and the task exporter
    labels every series `celery`; the batcher's task-received carries it instead."""
    queue = app.amqp.router.route({}, task.name, task_type=task).get("queue")
    if queue is None:
        return {}
    return {"queue": queue.name, "exchange": queue.exchange.name, "routing_key": queue.routing_key}


class _Batcher:
    """The consumer side: turns messages into requests, holds eta jobs, buffers, flushes.

    Each message keeps Celery's bookkeeping as `celery.worker.strategy.default`, the consumer
    and `Request` do it for a task Celery runs itself: the worker state (scheduled, reserved,
    active, ready), the prefetch window for eta jobs, one ack or reject, and one event of each
    kind (task-received, task-started, then task-succeeded, task-retried or task-failed and
    task-rejected), with the fields Celery sends. tests/worker/test_batching_contract.py
    holds the two to the same behaviour."""

    def __init__(self, task: BatchTask, app: Any, consumer: Any):
        self.task, self.app, self.consumer = task, app, consumer
        self.pool = consumer.pool
        eventer = consumer.event_dispatcher
        self.events = bool(eventer and eventer.enabled and task.send_events)
        self.send_event = eventer and eventer.send
        self.route = _route(app, task)
        self.request_cls = create_request_cls(
            symbol_by_name(task.Request), task, consumer.pool, consumer.hostname, eventer, app=app
        )
        self.revoked = consumer.controller.state.revoked
        self._lock = threading.Lock()
        self._waiting: list[Any] = []
        self._flush_entry: _Call | None = None
        self.clock = _clock()

    def on_message(
        self, message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **_: Any
    ) -> None:
        request = self._request(message, body, ack, reject)
        if (request.expires or request.id in self.revoked) and request.revoked():
            return
        signals.task_received.send(sender=self.consumer, request=request)
        if self.events:
            self._received(request)
        if request.eta and self._held(request):
            return
        worker_state.task_reserved(request)
        if callbacks:  # the autoscaler's hooks, called as Celery's strategy calls them
            for callback in callbacks:
                callback(request)
        self._add(request)

    def _request(self, message: Any, body: Any, ack: Any, reject: Any) -> Any:
        """The message decoded into Celery's Request, as Celery's default strategy does."""
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
        return self.request_cls(
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

    def _held(self, request: Any) -> bool:
        """A job with an eta: held until then, widening prefetch as Celery does (True), or
        rejected if its eta is unusable (True); False if it may run now."""
        try:
            if request.utc:
                eta = to_timestamp(timezone.to_system(request.eta))
            else:
                eta = to_timestamp(request.eta, self.app.timezone)
        except (OverflowError, ValueError) as exc:
            log.error("job %s: unusable eta %r (%s); rejecting it", request.id, request.eta, exc)
            request.reject(requeue=False)
            return True
        if eta <= time.monotonic():
            return False
        self.consumer.qos.increment_eventually()
        self.clock.call_at(eta, self._due, request)
        worker_state.task_scheduled(request)
        return True

    def _received(self, request: Any) -> None:
        """task-received with the fields Celery's strategy sends, and where the job came from."""
        self.send_event(
            "task-received",
            uuid=request.id,
            name=request.name,
            args=request.argsrepr,
            kwargs=request.kwargsrepr,
            root_id=request.root_id,
            parent_id=request.parent_id,
            retries=request.request_dict.get("retries", 0),
            eta=request.eta and request.eta.isoformat(),
            expires=request.expires and request.expires.isoformat(),
            **self.route,
        )

    def _due(self, request: Any) -> None:
        if _stale(request):  # the consumer reconnected meanwhile: its prefetch count is new
            worker_state.task_ready(request)
            return
        self.consumer.qos.decrement_eventually()
        worker_state.task_reserved(request)
        self._add(request)

    def _add(self, request: Any) -> None:
        with self._lock:
            self._waiting.append(request)
            if len(self._waiting) < self.task.batch_size:
                if self._flush_entry is None:
                    at = time.monotonic() + self.task.batch_wait_s
                    self._flush_entry = self.clock.call_at(at, self._flush)
                return
            batch, self._waiting = self._waiting, []
            entry, self._flush_entry = self._flush_entry, None
        if entry is not None:
            entry.cancelled = True
        self._start(batch)

    def _flush(self) -> None:
        with self._lock:
            batch, self._waiting = self._waiting, []
            self._flush_entry = None
        if batch:
            self._start(batch)

    def _accept(self, batch: list[Any]) -> list[Any]:
        """The batch's jobs that start, marked active as the pool's accept callback does."""
        live = []
        time_start, pid = time.time(), os.getpid()
        for request in batch:  # the worker state is what `celery inspect` and Flower read
            if _stale(request):
                worker_state.task_ready(request)
                continue
            # Revoked or expired while it waited: dropped (acked, task-revoked), as Celery's
            # Request.execute_using_pool drops it.
            if request.revoked():
                continue
            request.time_start, request.worker_pid = time_start, pid
            worker_state.task_accepted(request)
            if self.events:
                request.send_event("task-started")
            live.append(request)
        return live

    def _start(self, batch: list[Any]) -> None:
        batch = self._accept(batch)
        if not batch:
            return
        jobs = [
            Received(r.id, tuple(r.args), dict(r.kwargs), r.request_dict.get("retries") or 0)
            for r in batch
        ]
        started, settled = time.monotonic(), [False] * len(batch)

        def settle(index: int, verdict: str, reason: str = "") -> None:
            if not settled[index]:
                settled[index] = True
                self._apply(batch[index], verdict, reason, started)

        self.pool.apply_async(
            _run_in_pool,
            (self.task, jobs, settle),
            callback=partial(self._settle_rest, batch, settle),
        )

    def _settle_rest(self, batch: list[Any], settle: Settle, verdicts: Any) -> None:
        """After the batch: settle whatever it did not (all of it, if it raised)."""
        reason = "not settled by its batch"
        if not isinstance(verdicts, list) or len(verdicts) != len(batch):
            verdicts, reason = [REJECT] * len(batch), "its batch failed"
        for index, verdict in enumerate(verdicts):
            settle(index, verdict, reason)

    def _apply(self, request: Any, verdict: str, reason: str, started: float) -> None:
        """Settle one message as Celery's Request settles a late-acked task that returned, called
        `retry()` or raised `Reject(requeue=False)`: the worker state, the ack or reject, and the
        events in Celery's order (in the pool's thread, or a sending thread when paced)."""
        if verdict == ACK:
            worker_state.task_ready(request, successful=True)
            request.acknowledge()
            if self.events:
                runtime = time.monotonic() - started
                request.send_event("task-succeeded", result=_SUCCEEDED_RESULT, runtime=runtime)
            return
        worker_state.task_ready(request)
        if verdict == RETRY:
            request.acknowledge()
            if self.events:
                cause = safe_repr(RunAgain(reason))
                request.send_event("task-retried", exception=cause, traceback=None)
            return
        if self.events:  # FAILURE in Flower and the exporter: it will not run again
            # Named as an exception's repr, so the task exporter's `exception` label reads
            # "Reject" (Celery's own threads pool sends "ExceptionWithTraceback()" here).
            cause = f"Reject({reason!r}, requeue=False)"
            request.send_event("task-failed", exception=cause, traceback=None)
        request.reject(requeue=False)  # Request.reject sends task-rejected itself
