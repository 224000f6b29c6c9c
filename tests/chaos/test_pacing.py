"""Pacing with real worker processes: a shared rate limit holds across two workers, and a
provider's unannounced limit (429s) is found without spending retries or failing anyone.

The fake email service records each request's arrival; counts are per whole second of it.
CI runs a few hundred greetings with 16 threads per worker; `--long` runs the issue's full
size (1,000 greetings, 64 threads x 2 workers).
"""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from bday.scheduling import jobs
from tests.harness.chaos import per_second, row_figures, sends_summary, throttle_summary
from tests.harness.queues import statuses
from tests.harness.rows import add_due_messages, next_instant
from tests.harness.stack import wait_until

pytestmark = pytest.mark.e2e

RATE, BURST = 50, 5
WORKERS = 2


def _start_workers(stack, threads: int, env: dict) -> None:
    started = [
        stack.start_worker(f"paced{i}", concurrency=threads, extra_env=env, wait=False)
        for i in range(WORKERS)
    ]
    for worker in started:
        wait_until(lambda w=worker: " ready." in w.output(), 120, f"{worker.name} ready")


def _deliver_peak(stack, count: int, threads: int, env: dict) -> tuple[datetime, float]:
    _start_workers(stack, threads, env)
    instant = next_instant(3)
    add_due_messages(count, instant)
    jobs.enqueue_job()
    wait_until(lambda: statuses()["SENT"] == count, 300, "every greeting sent")
    return instant, time.time()


def test_a_rate_limit_holds_across_two_workers_and_drains_the_peak_oldest_first(
    stack, scale, report
):
    count, threads = scale.pick((300, 16), (1000, 64))
    env = {"EMAIL_SERVICE_RATE_LIMIT": str(RATE), "EMAIL_SERVICE_BURST": str(BURST)}
    instant, _ = _deliver_peak(stack, count, threads, env)
    records = stack.fake.records
    seconds = per_second(records)
    first, last = min(r.arrived for r in records), max(r.arrived for r in records)
    span_s = last - first  # from the first send (the worker's eta timer may start it late)
    report.update(
        sends_summary(stack.fake.sent_per_key(), count),
        per_second=seconds,
        span_s=round(span_s, 2),
        first_send_after_instant_s=round(first - instant.timestamp(), 2),
        ideal_s=round((count - BURST) / RATE, 2),
        threads_each=threads,
        **row_figures(),
    )
    assert seconds[0] <= RATE + BURST
    assert max(seconds[1:]) <= RATE * 1.1
    assert first >= instant.timestamp(), "a greeting went early"
    assert report["sent_early"] == 0
    assert statuses() == {"SENT": count}
    assert set(stack.fake.sent_per_key().values()) == {1} and len(records) == count
    assert report["retries_spent"] == 0
    assert abs(span_s - (count - BURST) / RATE) <= 0.15 * count / RATE


def test_a_providers_unannounced_limit_is_found_without_failing_anyone(stack, scale, report):
    count, threads = scale.pick((500, 16), (1000, 64))
    stack.fake.set(rate_limit=30, retry_after=False)
    instant, _ = _deliver_peak(stack, count, threads, {})
    records = stack.fake.records
    report.update(
        sends_summary(stack.fake.sent_per_key(), count),
        **throttle_summary(records, settled_from=instant.timestamp() + 15),
        threads_each=threads,
        **row_figures(),
    )
    assert statuses() == {"SENT": count}
    assert set(stack.fake.sent_per_key().values()) == {1}
    assert report["retries_spent"] == 0
    assert report["calls_settled"], "the peak should last past its first 15 s"
    assert report["throttled_settled"] < 0.05 * report["calls_settled"]
