"""What Flower and the task exporter see of batched jobs agrees with the database.

A real worker runs greetings that are sent, retried then sent, and dead-lettered; the test
watches its events as Flower does (Flower's own `EventsState`, fed by Celery's event receiver),
with task events switched on the way Flower switches them on (`enable_events`, task-sent events
off). With the task exporter installed (.venv-exporter, made by scripts/celery-exporter, or
BDAY_TEST_CELERY_EXPORTER naming its python) its /metrics are read too.
"""

from __future__ import annotations

import ast
import json
import os
import threading
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from celery import states
from flower.events import EventsState
from prometheus_client.parser import text_string_to_metric_families

from bday.broker.app import app
from bday.devtools import sandbox
from bday.scheduling import jobs
from tests.harness.cli import bday
from tests.harness.queues import queue_counts, statuses
from tests.harness.rows import add_due_messages, next_instant, rows
from tests.harness.stack import wait_until

pytestmark = pytest.mark.e2e

SEND = "bday.tasks.send_message"
QUEUE = "birthday.messages.queue"
ROOT = Path(__file__).resolve().parents[2]


class FlowerView:
    """Flower's event state, fed as Flower feeds it: every event, from Celery's receiver."""

    def __init__(self) -> None:
        self.state = EventsState()
        self.events: list[tuple[str, str]] = []  # (type, task id) of every task event
        self.heartbeats = 0
        self._lock = threading.Lock()
        self._connection = app.connection_for_read()
        self._receiver = app.events.Receiver(self._connection, handlers={"*": self._on_event})
        self._thread = threading.Thread(
            target=self._receiver.capture, kwargs={"limit": None, "timeout": None}, daemon=True
        )
        self._thread.start()

    def _on_event(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.state.event(event)
            if event["type"].startswith("task-"):
                self.events.append((event["type"], event["uuid"]))
            elif event["type"] == "worker-heartbeat":
                self.heartbeats += 1

    def sends(self) -> dict[str, Any]:
        """The send jobs Flower lists, by the message id they carry."""
        with self._lock:
            tasks = [task for _, task in self.state.tasks.items() if task.name == SEND]
        return {ast.literal_eval(task.args)[0]: task for task in tasks}

    def final_states(self) -> dict[str, str]:
        return {message_id: task.state for message_id, task in self.sends().items()}

    def workers_alive(self) -> bool:
        with self._lock:
            return any(worker.alive for worker in self.state.workers.values())

    def wait_heartbeat(self) -> None:
        seen = self.heartbeats
        wait_until(lambda: self.heartbeats > seen, 10, "the worker's next heartbeat")

    def dashboard(self) -> Counter:
        """Flower's dashboard figures: its event counters summed over workers."""
        with self._lock:
            return sum(self.state.counter.values(), Counter())

    def send_events(self) -> Counter:
        with self._lock:
            ids = {task.uuid for _, task in self.state.tasks.items() if task.name == SEND}
            return Counter(kind for kind, task_id in self.events if task_id in ids)

    def stop(self) -> None:
        self._receiver.should_stop = True
        self._thread.join(10)
        self._connection.release()


def _exporter_python() -> str | None:
    python = os.environ.get("BDAY_TEST_CELERY_EXPORTER") or str(ROOT / ".venv-exporter/bin/python")
    return python if Path(python).exists() else None


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=20) as response:
        return response.read().decode()


def _start_exporter(stack) -> tuple[sandbox.Process, int] | None:
    """danihodovic's exporter as scripts/celery-exporter runs it, on a free port."""
    python = _exporter_python()
    if python is None:
        return None
    port = sandbox.free_port()
    args = [python, "-c", "from src.cli import cli; cli()"]
    args += [f"--broker-url={os.environ['RABBITMQ_URL']}", "--host=127.0.0.1", f"--port={port}"]
    return sandbox.spawn("celery-exporter", args, {}, stack.workdir), port


def _exporter_caught_up(exporter: tuple[sandbox.Process, int] | None) -> str | bool:
    """The exporter's /metrics once it has counted the last event (the sixth success), or
    True when no exporter runs."""
    if exporter is None:
        return True
    body = _scrape(exporter[1])
    done = sum(s.value for s in _samples(body, "celery_task_succeeded_total")) >= 6
    return body if done else False


def _samples(body: str, metric: str) -> list[Any]:
    return [
        sample
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == metric and sample.labels.get("name") == SEND
    ]


def _phase(stack, count: int, prefix: str, **behaviour: Any) -> None:
    stack.fake.set(**behaviour)
    add_due_messages(count, next_instant(1), prefix=prefix)
    jobs.enqueue_job()


def test_flower_and_the_task_exporter_agree_with_the_database(stack, monkeypatch, capsys):
    flower = FlowerView()
    exporter = _start_exporter(stack)
    try:
        stack.start_worker(extra_env={"BREAKER_ENABLED": "false", "WORKER_METRICS_PORT": "0"})
        # Flower turns task events on in the workers it watches; task-sent stays off.
        wait_until(lambda: app.control.enable_events(reply=True, timeout=1), 20, "events on")
        wait_until(flower.workers_alive, 20, "Flower sees the worker")
        if exporter:
            wait_until(lambda: "celery_worker_up{" in _scrape(exporter[1]), 30, "exporter up")

        _phase(stack, 3, "dead", fixed_status=422)  # permanent: dead-lettered
        wait_until(lambda: queue_counts()["dlq"] == 3, 30, "three jobs in the DLQ")
        _phase(stack, 2, "retried", fixed_status=0, fail_first=1)  # a 500, then sent
        wait_until(lambda: statuses()["SENT"] == 2, 30, "the retried greetings sent")
        _phase(stack, 4, "sent", fail_first=0)
        wait_until(lambda: statuses()["SENT"] == 6, 30, "every good greeting sent")

        table = {str(row.id): row for row in rows()}
        retries = sum(row.retry_count for row in table.values())
        trail = {  # each job's events once; a retried job is received and started again
            "task-received": 9 + retries,
            "task-started": 9 + retries,
            "task-succeeded": 6,
            "task-retried": retries,
            "task-failed": 3,
            "task-rejected": 3,  # once per rejection: was 6
        }
        expected = {
            message_id: states.SUCCESS if row.status == "SENT" else states.FAILURE
            for message_id, row in table.items()
        }
        try:
            wait_until(
                lambda: flower.final_states() == expected and flower.send_events() == trail,
                20,
                "Flower shows each job's final state and trail",
            )
        except AssertionError as exc:  # say what Flower saw, not only that it differed
            states_seen = flower.final_states()
            wrong = {
                k: (v, states_seen.get(k)) for k, v in expected.items() if states_seen.get(k) != v
            }
            raise AssertionError(
                f"{exc}; states (want, got): {wrong}; trail {dict(flower.send_events())} want {trail}"
            ) from None
        flower.wait_heartbeat()  # a later event from the worker: a duplicate would come first
        finals, seen = flower.sends(), flower.send_events()
        metrics = wait_until(lambda: _exporter_caught_up(exporter), 30, "the exporter caught up")
    finally:
        flower.stop()
        if exporter:
            exporter[0].stop()

    assert Counter(row.status for row in table.values()) == {"SENT": 6, "FAILED": 3}
    assert retries == 2 and seen == trail
    for message_id, task in finals.items():
        row = table[message_id]
        assert (task.rejected is not None) is (row.status == "FAILED"), message_id
        assert (task.retried is not None) is (row.retry_count > 0), message_id
        assert getattr(task, "queue", "celery") == QUEUE  # the exporter's queue_name label

    dlq = queue_counts()["dlq"]
    assert flower.dashboard()["task-failed"] == dlq == 3  # Flower's "Failed": was 0

    _, out, _ = bday(monkeypatch, capsys, "status", "--json")
    report = json.loads(out)
    assert report["messages"] == {"FAILED": 3, "SENT": 6}
    assert report["broker"]["dlq_depth"] == dlq

    if exporter:
        assert isinstance(metrics, str)
        rejected = _samples(metrics, "celery_task_rejected_total")
        assert [(s.labels["queue_name"], s.value) for s in rejected] == [(QUEUE, 3.0)]
        failed = [s for s in _samples(metrics, "celery_task_failed_total") if s.value]
        assert [(s.labels["exception"], s.value) for s in failed] == [("Reject", 3.0)]
        succeeded = _samples(metrics, "celery_task_succeeded_total")
        assert [(s.labels["queue_name"], s.value) for s in succeeded] == [(QUEUE, 6.0)]
