"""Real processes for end-to-end tests: `celery -A bday worker|beat` and the fake email service.

Workers and beat run as subprocesses with this run's database and vhost; the fake email service
is a real HTTP server on a free loopback port (in a thread of the test process, so tests read its
record directly). Everything is stopped, and every queue purged, when the test ends. The `stack`
fixtures of tests/e2e and tests/chaos are `running_stack`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import text

from bday.broker.app import app
from bday.config import get_settings
from bday.devtools import sandbox
from bday.devtools.fake_email import Behaviour, FakeEmailService, serve
from bday.devtools.sandbox import Process
from bday.store import db
from tests.conftest import TRUNCATE
from tests.harness.queues import left_over, purge_all, ready_send_jobs

SEND = "bday.tasks.send_message"

# Fast, deterministic defaults for the processes under test; a test may override any of them.
STACK_ENV = {
    "QUEUE_RETRY_DELAY": "1000",
    "QUEUE_MAX_RETRIES": "3",
    "RECOVERY_GRACE_SECONDS": "10",
    "EMAIL_SERVICE_TIMEOUT": "2000",
    "BREAKER_IDLE": "0",
}


class FakeEmail:
    """The fake email service on a loopback port, served from a background thread."""

    def __init__(self, **behaviour):
        self.service = FakeEmailService(Behaviour(**behaviour))
        self.port = sandbox.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(
            serve(self.service, "127.0.0.1", self.port, ready=lambda _port: ready.set())
        )
        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(self._task)
        # Let open connections finish their cancellation here, not in a later garbage collection
        # after the loop is closed.
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    def set(self, **changes) -> None:
        self.service.behaviour.update(changes)

    @property
    def records(self):
        return list(self.service.records)

    def sent_per_key(self) -> Counter:
        return Counter(r.key for r in self.records if r.outcome == "sent")

    def calls_between(self, start: float, end: float) -> int:
        return sum(1 for r in self.records if start <= r.at < end)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)


@dataclass
class Stack:
    workdir: Path
    fake: FakeEmail
    env: dict = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)

    def _env(self, extra_env: dict | None) -> dict:
        return {**self.env, **(extra_env or {})}

    def start_worker(
        self,
        name: str = "w1",
        concurrency: int = 8,
        extra_env: dict | None = None,
        wait: bool = True,
    ) -> Process:
        name = f"{name}-{len(self.processes)}"
        process = sandbox.spawn_worker(name, self._env(extra_env), self.workdir, concurrency)
        self.processes.append(process)
        if wait:
            sandbox.wait_ready(process, " ready.")
        return process

    def start_settled_workers(
        self, count: int, name: str = "w", extra_env: dict | None = None, concurrency: int = 8
    ) -> list[Process]:
        """`count` workers, each started once the one before has run its start-up enqueue, so
        no start-up run takes rows a test adds afterwards."""
        from datetime import UTC, datetime

        from tests.harness.rows import enqueue_ran_after

        workers = []
        for index in range(count):
            started = datetime.now(UTC)
            workers.append(self.start_worker(f"{name}{index}", concurrency, extra_env))
            wait_until(lambda s=started: enqueue_ran_after(s), 60, "the start-up enqueue")
        return workers

    def start_beat(self, extra_env: dict | None = None) -> Process:
        process = sandbox.spawn_beat(
            self._env(extra_env), self.workdir, f"beat-{len(self.processes)}"
        )
        self.processes.append(process)
        sandbox.wait_ready(process, "beat: Starting")
        return process

    def stop(self) -> None:
        sandbox.stop_all(self.processes)
        self.fake.stop()


def running_stack(
    database_url: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Stack]:
    """A stack on this run's database and vhost (no processes yet: a test starts what it
    needs); afterwards every process stopped, the queues purged and the tables emptied."""
    fake = FakeEmail()
    env = {
        **STACK_ENV,
        "DATABASE_URL": database_url,
        "RABBITMQ_URL": os.environ["RABBITMQ_URL"],
        "EMAIL_SERVICE_URL": fake.url,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    purge_all()
    running = Stack(workdir, fake, env)
    yield running
    running.stop()
    purge_all()
    with db.engine().begin() as connection:
        connection.execute(text(TRUNCATE))
    get_settings.cache_clear()


def send_jobs_settled() -> bool:
    """Has every send job published so far been settled (its send attempted, or found a
    no-op, and acked or dead-lettered)? None waits in the broker (read first), and the worker
    holds none: scheduled for an eta, reserved or active (its batcher keeps Celery's worker
    state, `celery inspect` reads it). Only a new publish can reach the email service after
    this: a test that asserts something never happened asserts it from here on.

    One worker: its answer is all of it (no waiting out the timeout); no answer is no."""
    if ready_send_jobs():
        return False
    inspect = app.control.inspect(timeout=2, limit=1)
    held = []
    for answer in (inspect.scheduled(), inspect.reserved(), inspect.active()):
        if not answer:
            return False
        for job in (job for jobs in answer.values() for job in jobs):
            held.append(job.get("request", job)["name"])
    return SEND not in held


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str = "condition", interval: float = 0.1
):
    try:
        return sandbox.wait_for(predicate, timeout, what, interval)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; left: {left_over()}") from None
