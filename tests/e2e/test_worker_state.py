"""A worker's own bookkeeping of batched jobs: what `celery inspect` and Flower read."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bday.broker.app import app
from bday.scheduling import jobs
from tests.harness.queues import statuses
from tests.harness.rows import add_due_messages, rows
from tests.harness.stack import wait_until

pytestmark = pytest.mark.e2e

SEND = "bday.tasks.send_message"


def _active(inspect) -> list[dict]:
    """The send jobs the worker reports active (its start-up plan and enqueue may be too)."""
    found = (inspect.active() or {}).values()
    return [job for jobs_of in found for job in jobs_of if job["name"] == SEND]


def test_batched_jobs_show_as_active_while_they_send_and_count_in_the_workers_stats(stack):
    """Batched jobs bypass Celery's per-task path; they must still be in the worker's state,
    or `celery inspect active` shows nothing while greetings go out and Flower counts none."""
    count = 40
    stack.fake.set(latency_ms=2500)  # two waves of sends, each 2.5 s on the wire
    add_due_messages(count, datetime.now(UTC))
    stack.start_worker(concurrency=16, extra_env={"EMAIL_SERVICE_TIMEOUT": "10000"})
    jobs.enqueue_job()
    inspect = app.control.inspect(timeout=2, limit=1)  # one worker: its answer is all of it
    active = wait_until(lambda: _active(inspect), 30, "the worker reports its active sends")
    assert 1 <= len(active) <= count
    ids = {str(row.id) for row in rows()}
    assert all(any(i in str(job["args"]) for i in ids) for job in active)  # our greetings
    wait_until(lambda: statuses()["SENT"] == count, 60, "every greeting sent")
    assert wait_until(lambda: not _active(inspect) or None, 10, "nothing active after")
    totals = [stats["total"].get(SEND, 0) for stats in (inspect.stats() or {}).values()]
    assert totals == [count]
