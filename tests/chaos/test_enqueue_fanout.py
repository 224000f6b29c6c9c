"""A worker SIGKILLed in the middle of a fanned-out minute enqueue: every due row is sent once.

The killed worker's slice dies mid-batch: its claim rolls back (the rows are PENDING again) and
its slice job, never acked, goes back to the scheduler queue for the surviving worker; what
is still PENDING after that is the next minute's run's. The rows are due a little after the
enqueue, so no send is in flight at the kill and no greeting may go out twice."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from bday.config import get_settings
from bday.scheduling import jobs
from tests.harness.chaos import sends_summary
from tests.harness.queues import statuses
from tests.harness.rows import add_due_messages, heartbeat_detail
from tests.harness.stack import wait_until

pytestmark = pytest.mark.e2e

# Small batches, so each slice runs many claiming transactions the kill can land in.
FANOUT = {"ENQUEUE_FANOUT_ROWS": "500", "ENQUEUE_BATCH": "50", "EMAIL_SERVICE_TIMEOUT": "1000"}


def _settled_for(seconds: float) -> None:
    """Wait until no row has changed status for `seconds` (the slices are done or dead)."""
    last, since = statuses(), time.monotonic()
    while time.monotonic() - since < seconds:
        time.sleep(0.2)
        now = statuses()
        if now != last:
            last, since = now, time.monotonic()


def test_sigkill_of_a_worker_mid_fanned_out_enqueue_sends_every_row_once(
    stack, scale, monkeypatch, report
):
    count = scale.pick(4_000, 20_000)
    victim, survivor = stack.start_settled_workers(2, "slicer", FANOUT, concurrency=16)
    instant = datetime.now(UTC) + timedelta(seconds=scale.pick(20, 60))
    add_due_messages(count, instant)
    for name, value in FANOUT.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    started = time.monotonic()
    result = jobs.enqueue_job()
    assert result["slices"] == 2
    wait_until(lambda: statuses()["QUEUED"] >= count // 10, 60, "the slices under way")
    victim.kill()
    queued_at_kill = statuses()["QUEUED"]
    stack.start_worker(name="replacement", extra_env=FANOUT)
    _settled_for(3)
    next_run = jobs.enqueue_job()  # the next minute's run takes what the slices left
    wait_until(lambda: statuses()["SENT"] == count, scale.pick(120, 400), "every greeting sent")
    per_key = stack.fake.sent_per_key()
    report.update(
        sends_summary(per_key, count),
        queued_at_kill=queued_at_kill,
        next_run=next_run,
        last_run_slices=heartbeat_detail("enqueue-slices"),
        drain_s=round(time.monotonic() - started, 1),
    )
    assert queued_at_kill < count, "the kill came after the enqueue was over"
    assert survivor.alive()
    assert statuses() == {"SENT": count}
    assert report["lost"] == 0 and report["second_sends"] == 0
