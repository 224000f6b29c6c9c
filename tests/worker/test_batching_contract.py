"""The batcher keeps the promises of Celery's own strategy: one contract, run against both.

`bday.worker.batching` replaces `celery.worker.strategy.default` for `send_message` and leans on
Celery internals to do so (the request class, the worker state, the prefetch window, the
events). Each test here drives a strategy's `on_message` the way Celery's consumer does, with
Celery's own test message (`celery.contrib.testing.mocks.TaskMessage`), a real threads pool and
a stub consumer that records prefetch changes, acks, rejects and events; no broker is involved.
Every test runs against Celery's default strategy too: what passes there is what Celery
promises, so a Celery release that changes what the batcher relies on fails here, in the
default suite, rather than in a deployment (scripts/celery-next runs this file against the
newest Celery).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery, signals, uuid
from celery._state import _set_current_app, get_current_app
from celery.concurrency.thread import TaskPool as ThreadsPool
from celery.contrib.testing.mocks import TaskMessage
from celery.utils.timer2 import Timer
from celery.worker import state as worker_state
from celery.worker.consumer.consumer import Consumer as CeleryConsumer
from celery.worker.strategy import default as celery_default
from celery.worker.worker import WorkController

from bday.worker.batching import ACK, REJECT, RETRY, BatchTask, Received, Settle, _Batcher

QUEUE = "contract.queue"
HOLD_S = 1.0  # how far ahead an eta job is due: the test acts on it before then, even on a busy CI
app = Celery("contract", set_as_current=False)  # never connects: no broker is needed
app.conf.task_routes = {"contract.job": {"queue": QUEUE}}

ran: list[tuple[str, bool, bool]] = []  # (job id, active while it ran, reserved while it ran)


class ContractJob(BatchTask):
    """A job whose argument names its outcome: "ok", "again" (retry) or "bad" (dead-letter)."""

    batch_size = 3
    batch_wait_s = 0.05

    def run_batch(self, jobs: list[Received], settle: Settle | None = None) -> list[str]:
        verdicts = []
        for index, job in enumerate(jobs):
            ran.append((job.id, job.id in _ids("active"), job.id in _ids("reserved")))
            verdict = {"ok": ACK, "again": RETRY, "bad": REJECT}[job.args[0]]
            if settle is not None:
                settle(index, verdict, f"outcome {job.args[0]}")
            verdicts.append(verdict)
        return verdicts


@app.task(base=ContractJob, bind=True, name="contract.job", acks_late=True)
def contract_job(self: ContractJob, outcome: str) -> str:
    return self.run_one(Received(self.request.id, (outcome,), {}, self.request.retries or 0))


class _Events:
    """The event dispatcher: records what is sent (Celery's `EventDispatcher.send`)."""

    enabled = True

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def send(self, type: str, **fields: Any) -> None:
        with self._lock:
            self.sent.append((type, fields))


class _QoS:
    def __init__(self) -> None:
        self.changes: list[int] = []

    def increment_eventually(self, n: int = 1) -> None:
        self.changes.append(n)

    def decrement_eventually(self, n: int = 1) -> None:
        self.changes.append(-n)


class _Consumer:
    """What a strategy reads from Celery's consumer. Holding an eta job and handing a request
    to the pool are Celery's own code (`Consumer.apply_eta_task`, `WorkController._process_task`)
    on Celery's threaded timer, as a threads-pool worker runs them."""

    hostname = "contract@test"
    connection_errors = ()
    disable_rate_limits = True
    apply_eta_task = CeleryConsumer.apply_eta_task
    on_task_request = WorkController._process_task

    def __init__(self) -> None:
        self.pool = ThreadsPool(limit=4)
        self.task_buckets: dict[str, Any] = {}
        self.event_dispatcher = _Events()
        self.qos = _QoS()
        self.timer = Timer()
        self.controller = SimpleNamespace(state=worker_state)

    def _limit_task(self, *_: Any) -> None:
        raise AssertionError("rate limits are off")

    _limit_post_eta = _limit_task


class Worker:
    """One strategy fed messages as Celery's consumer feeds them; records how each ended."""

    def __init__(self, make_strategy: Callable[..., Any]) -> None:
        self.consumer = _Consumer()
        self.on_message = make_strategy(contract_job, app, self.consumer)
        self.settled: dict[str, list[tuple[str, bool | None]]] = {}
        self.called_back: list[str] = []
        self._lock = threading.Lock()
        # Celery's worker state keeps requests in weak sets: hold each one, or a request left
        # in the reserved or active set would vanish from it once collected, unnoticed.
        self.requests: dict[str, Any] = {}
        signals.task_received.connect(self._hold, sender=self.consumer, weak=False)

    def _hold(self, request: Any, **_: Any) -> None:
        self.requests[request.id] = request

    def deliver(self, outcome: str, job_id: str | None = None, **headers: Any) -> str:
        job_id = job_id or uuid()
        message = TaskMessage(contract_job.name, id=job_id, args=(outcome,), **headers)
        message.delivery_info = {"exchange": "contract", "routing_key": "contract"}
        ack, reject = partial(self._settle, job_id, "ack"), partial(self._settle, job_id, "reject")
        self.on_message(message, None, ack, reject, [self._called_back])
        return job_id

    def _settle(self, job_id: str, how: str, _log: Any, _errors: Any, requeue: Any = None) -> None:
        with self._lock:
            self.settled.setdefault(job_id, []).append((how, requeue))

    def _called_back(self, request: Any) -> None:
        self.called_back.append(request.id)

    def wait_settled(self, *job_ids: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not all(job_id in self.settled for job_id in job_ids):
            assert time.monotonic() < deadline, f"not settled: {set(job_ids) - set(self.settled)}"
            time.sleep(0.01)
        time.sleep(0.05)  # anything sent twice would arrive now

    def events(self, job_id: str) -> list[str]:
        return [
            kind
            for kind, fields in self.consumer.event_dispatcher.sent
            if fields.get("uuid") == job_id
        ]

    def event(self, job_id: str, kind: str) -> dict[str, Any]:
        [fields] = [
            f
            for k, f in self.consumer.event_dispatcher.sent
            if k == kind and f.get("uuid") == job_id
        ]
        return fields

    def stop(self) -> None:
        signals.task_received.disconnect(self._hold, sender=self.consumer)
        self.consumer.timer.stop()
        self.consumer.pool.on_stop()


def _batcher(task: BatchTask, app: Celery, consumer: Any) -> Any:
    strategy = task.Strategy(task, app, consumer)
    assert isinstance(strategy.__self__, _Batcher)  # the threads pool gets the batcher
    return strategy


STRATEGIES = {"celery": celery_default, "batcher": _batcher}


@pytest.fixture(autouse=True)
def _clean_worker_state() -> Iterator[None]:
    """Celery's worker state is per process: each test starts from none, as a new worker."""
    previous = get_current_app()
    _set_current_app(app)  # Celery's trace finds the task through the current app

    def clear() -> None:
        names = [f"{name}_requests" for name in STATE_SETS]
        for name in (*names, "requests", "successful_requests", "total_count", "revoked"):
            getattr(worker_state, name, {}).clear()  # one Celery dropped fails a test, not this
        ran.clear()

    clear()
    yield
    clear()
    _set_current_app(previous)


@pytest.fixture(params=sorted(STRATEGIES))
def worker(request: pytest.FixtureRequest) -> Iterator[Worker]:
    running = Worker(STRATEGIES[request.param])
    yield running
    running.stop()


STATE_SETS = ("reserved", "active", "scheduled")  # celery.worker.state.<name>_requests


def _ids(name: str) -> set[str]:
    """The ids of the requests in one of Celery's worker state sets (none if it has no such
    set: Celery's main branch has dropped `scheduled_requests`)."""
    return {request.id for request in getattr(worker_state, f"{name}_requests", ())}


def _nowhere(job_id: str) -> bool:
    """The job has left the worker's state: nothing scheduled, reserved or active holds it."""
    return job_id not in worker_state.requests and not any(
        job_id in _ids(name) for name in STATE_SETS
    )


def _in_future(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


@pytest.mark.parametrize(
    ("outcome", "settled", "trail", "successful"),
    [
        ("ok", [("ack", None)], ["task-succeeded"], True),
        ("again", [("ack", None)], ["task-retried"], False),
        ("bad", [("reject", False)], ["task-failed", "task-rejected"], False),
    ],
)
def test_a_job_is_settled_once_and_leaves_celerys_trail_of_events(
    worker, outcome, settled, trail, successful
):
    job_id = worker.deliver(outcome)
    worker.wait_settled(job_id)
    assert worker.settled[job_id] == settled
    assert worker.events(job_id) == ["task-received", "task-started", *trail]
    assert ran == [(job_id, True, True)]  # active (and still reserved) while it ran
    assert _nowhere(job_id)
    assert (job_id in worker_state.successful_requests) is successful
    assert worker_state.total_count[contract_job.name] == 1
    assert worker.called_back == [job_id]  # the autoscaler's hooks, once


def test_a_job_due_later_is_held_with_its_prefetch_slot_widened_then_narrowed(worker):
    job_id = worker.deliver("ok", eta=_in_future(HOLD_S))
    assert job_id in _ids("scheduled") and job_id not in _ids("reserved")
    assert worker.consumer.qos.changes == [1]
    assert worker.events(job_id) == ["task-received"]
    assert worker.event(job_id, "task-received")["eta"]
    worker.wait_settled(job_id)
    assert worker.consumer.qos.changes == [1, -1]
    assert worker.settled[job_id] == [("ack", None)]
    assert worker.events(job_id) == ["task-received", "task-started", "task-succeeded"]
    assert _nowhere(job_id) and ran == [(job_id, True, True)]
    assert worker.called_back == []  # Celery calls them for jobs it takes at once only


def test_a_revoked_job_is_dropped_acked_once_and_reported_revoked(worker):
    job_id = uuid()
    worker_state.revoked.add(job_id)
    worker.deliver("ok", job_id)
    worker.wait_settled(job_id)
    assert worker.settled[job_id] == [("ack", None)]
    assert worker.events(job_id) == ["task-revoked"]
    assert worker.event(job_id, "task-revoked")["expired"] is False
    assert ran == [] and _nowhere(job_id) and worker.consumer.qos.changes == []


def test_an_expired_job_is_dropped_acked_once_and_reported_expired(worker):
    job_id = worker.deliver("ok", expires=_in_future(-60))
    worker.wait_settled(job_id)
    assert worker.settled[job_id] == [("ack", None)]
    assert worker.events(job_id) == ["task-revoked"]
    assert worker.event(job_id, "task-revoked")["expired"] is True
    assert ran == [] and _nowhere(job_id)


@pytest.mark.parametrize("how", ["revoked", "expired"])
def test_a_job_revoked_or_expiring_while_held_for_its_eta_is_dropped_when_due(worker, how):
    job_id = uuid()
    expires = {"expires": _in_future(HOLD_S / 2)} if how == "expired" else {}
    worker.deliver("ok", job_id, eta=_in_future(HOLD_S), **expires)
    if how == "revoked":
        worker_state.revoked.add(job_id)
    worker.wait_settled(job_id)
    assert worker.settled[job_id] == [("ack", None)]
    assert worker.events(job_id) == ["task-received", "task-revoked"]
    assert ran == [] and _nowhere(job_id)
    assert worker.consumer.qos.changes == [1, -1]


def test_a_batch_of_mixed_outcomes_settles_each_job_once():
    worker = Worker(_batcher)
    try:
        outcomes = ["ok", "again", "bad", "ok", "bad"]
        ids = [worker.deliver(outcome) for outcome in outcomes]
        worker.wait_settled(*ids)
    finally:
        worker.stop()
    assert [len(worker.settled[job_id]) for job_id in ids] == [1] * len(ids)
    kinds = Counter(kind for kind, _ in worker.consumer.event_dispatcher.sent)
    assert kinds == {
        "task-received": 5,
        "task-started": 5,
        "task-succeeded": 2,
        "task-retried": 1,
        "task-failed": 2,
        "task-rejected": 2,
    }
    assert all(active and reserved for _, active, reserved in ran) and len(ran) == 5


def _fields_by_event(make_strategy: Callable[..., Any]) -> dict[str, Any]:
    worker = Worker(make_strategy)
    try:
        ids = [worker.deliver(outcome) for outcome in ("ok", "again", "bad")]
        worker.wait_settled(*ids)
    finally:
        worker.stop()
    return dict(worker.consumer.event_dispatcher.sent)


def test_the_batchers_events_carry_the_fields_celerys_carry_and_the_jobs_queue():
    celery, batcher = _fields_by_event(celery_default), _fields_by_event(_batcher)
    assert set(batcher) == set(celery)
    routing = {"queue", "exchange", "routing_key"}  # what a task-sent event would add
    for kind, fields in celery.items():
        extra = routing if kind == "task-received" else set()
        assert set(batcher[kind]) == set(fields) | extra, kind
    assert batcher["task-received"]["queue"] == QUEUE
    assert batcher["task-succeeded"]["result"] == celery["task-succeeded"]["result"]
    # Celery's threads pool names the wrapper its trace puts around the exception
    # ("ExceptionWithTraceback()", "Retry(Retry(...), RunAgain(...), None)"); the batcher names
    # what Celery means to (the Reject, the retry's cause), so the exporter labels it "Reject".
    assert batcher["task-failed"]["exception"] == "Reject('outcome bad', requeue=False)"
    assert batcher["task-retried"]["exception"] == "RunAgain('outcome again')"
    assert "RunAgain('outcome again')" in celery["task-retried"]["exception"]
