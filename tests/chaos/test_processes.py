"""Processes that die, stop, restart or crowd each other: nothing lost, nothing sent twice
(beyond the second attempt the contract allows when a crash falls between a 200 and our commit,
which carries the same Idempotency-Key)."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bday.devtools.factories import born_on
from bday.scheduling import jobs
from bday.store import db
from tests.harness.chaos import sends_summary
from tests.harness.queues import statuses
from tests.harness.rows import add_due_messages, add_user, rows
from tests.harness.stack import wait_until

pytestmark = pytest.mark.e2e

FAST = {"EMAIL_SERVICE_TIMEOUT": "1000", "QUEUE_MAX_RETRIES": "5"}


def _sent() -> int:
    return statuses()["SENT"]


def _drain_time(start: float) -> float:
    return round(time.monotonic() - start, 1)


def test_sigkill_of_the_worker_at_random_moments_loses_nothing(stack, scale, report):
    count, kills = scale.pick((600, 4), (2000, 10))
    stack.fake.set(latency_ms=20)
    add_due_messages(count, datetime.now(UTC))
    rng = random.Random(11)
    worker = stack.start_worker(concurrency=16, extra_env=FAST)
    started = time.monotonic()
    jobs.enqueue_job()
    for kill in range(kills):
        time.sleep(rng.uniform(0.5, 2.5))
        worker.kill()
        worker = stack.start_worker(name=f"after-kill-{kill}", concurrency=16, extra_env=FAST)
    wait_until(lambda: _sent() == count, 240, "every message sent after the kills")
    per_key = stack.fake.sent_per_key()
    report.update(sends_summary(per_key, count), kills=kills, drain_s=_drain_time(started))
    assert len(per_key) == count
    assert statuses() == {"SENT": count}
    # Only requests in flight at a kill can succeed twice: at most the worker's concurrency each.
    assert report["second_sends"] <= kills * 16


def test_sigterm_finishes_in_flight_sends_and_leaves_nothing_sending(stack, report):
    count = 300
    stack.fake.set(latency_ms=150)
    add_due_messages(count, datetime.now(UTC))
    worker = stack.start_worker(concurrency=16, extra_env=FAST)
    jobs.enqueue_job()
    wait_until(lambda: _sent() >= 60, 60, "delivery under way")
    worker.signal(signal.SIGTERM)
    exit_code = worker.popen.wait(60)
    after_stop = statuses()
    assert exit_code == 0
    assert after_stop["SENDING"] == 0, after_stop
    stack.start_worker(name="after-term", concurrency=16, extra_env=FAST)
    wait_until(lambda: _sent() == count, 120, "the rest sent by the next worker")
    report.update(
        sends_summary(stack.fake.sent_per_key(), count), sent_before_stop=after_stop["SENT"]
    )
    assert report["second_sends"] == 0 and report["lost"] == 0


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


def _start_run(stack, count: int) -> float:
    """`count` messages due now, one worker, delivery under way (a fifth sent); start time."""
    stack.fake.set(latency_ms=20)
    add_due_messages(count, datetime.now(UTC))
    stack.start_worker(concurrency=16, extra_env=FAST)
    started = time.monotonic()
    jobs.enqueue_job()
    wait_until(lambda: _sent() >= count // 5, 60, "delivery under way")
    return started


def test_a_rabbitmq_restart_mid_run_loses_and_doubles_nothing(stack, scale, report):
    count = scale.pick(600, 2000)
    started = _start_run(stack, count)
    _rabbitmqctl("stop_app")
    try:
        time.sleep(5)
    finally:
        _rabbitmqctl("start_app")
        _rabbitmqctl("await_startup")
    wait_until(lambda: _sent() == count, 240, "every message sent after the broker restart")
    report.update(sends_summary(stack.fake.sent_per_key(), count), drain_s=_drain_time(started))
    assert report["lost"] == 0 and report["second_sends"] == 0
    assert statuses() == {"SENT": count}


def _restart_postgresql() -> None:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        capture_output=True,
        timeout=120,
    )


def test_a_postgresql_restart_mid_run_loses_nothing(stack, scale, report):
    count = scale.pick(600, 2000)
    started = _start_run(stack, count)
    _restart_postgresql()
    db.reset_engines()
    wait_until(lambda: _sent() == count, 240, "every message sent after the database restart")
    report.update(sends_summary(stack.fake.sent_per_key(), count), drain_s=_drain_time(started))
    assert report["lost"] == 0
    # A send whose SENT record hit the restart is retried with the same key after its lease.
    assert report["second_sends"] <= 16


def test_two_beats_and_three_workers_at_once_send_each_greeting_once(stack, scale, report):
    count = scale.pick(300, 1000)
    instant = (datetime.now(UTC) + timedelta(seconds=75)).replace(second=0, microsecond=0)
    env = {**FAST, "SEND_TIME": instant.strftime("%H:%M")}
    users = [
        add_user(f"Crowd{i}", zone="UTC", birthday=born_on(instant.date())) for i in range(count)
    ]
    for index in range(3):
        stack.start_worker(name=f"crowd{index}", concurrency=8, extra_env=env)
    stack.start_beat(extra_env=env)
    stack.start_beat(extra_env=env)
    wait_until(
        lambda: _sent() == count,
        (instant - datetime.now(UTC)).total_seconds() + 90,
        "every greeting sent",
    )
    time.sleep(3)
    per_key = stack.fake.sent_per_key()
    lateness = sorted(r.at - instant.timestamp() for r in stack.fake.records if r.outcome == "sent")
    report.update(
        sends_summary(per_key, count),
        p95_lateness_s=round(lateness[int(0.95 * (len(lateness) - 1))], 2),
    )
    assert len(rows()) == count == len(set(users))
    assert report["second_sends"] == 0 and report["lost"] == 0
    assert min(lateness) >= 0
