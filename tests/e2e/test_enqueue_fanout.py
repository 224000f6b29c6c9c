"""The minute enqueue fanned out over real worker processes: every due row published, and sent,
exactly once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bday.config import get_settings
from bday.scheduling import jobs
from tests.harness.queues import statuses
from tests.harness.rows import add_due_messages, heartbeat_detail
from tests.harness.stack import wait_until

pytestmark = pytest.mark.e2e

# Fan out above 100 due rows, in batches of 50: a few hundred rows make several slices.
FANOUT = {"ENQUEUE_FANOUT_ROWS": "100", "ENQUEUE_BATCH": "50"}


def fan_out_here(monkeypatch, env: dict) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()


def test_a_fanned_out_enqueue_publishes_every_due_row_exactly_once(stack, monkeypatch):
    count = 600
    stack.start_settled_workers(2, "slicer", FANOUT)
    add_due_messages(count, datetime.now(UTC) + timedelta(seconds=2))
    fan_out_here(monkeypatch, FANOUT)
    result = jobs.enqueue_job()
    assert result["slices"] == 2 and result["due"] == count and result["published"] == 0
    wait_until(lambda: statuses()["SENT"] == count, 120, "every greeting sent")
    per_key = stack.fake.sent_per_key()
    assert len(per_key) == count and set(per_key.values()) == {1}
    wait_until(lambda: (heartbeat_detail("enqueue-slices") or {}).get("slices_done") == 2, 30)
    slices = heartbeat_detail("enqueue-slices")
    assert slices is not None and slices["published"] == count
