"""What a start does, with real worker and beat processes started together (as `honcho start`
does): one plan, one `plan:` line; and after a restart with another SEND_TIME, the rows not yet
queued move to it, saying so once."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.harness.rows import add_user, rows
from tests.harness.stack import wait_until

pytestmark = pytest.mark.e2e


def _plan_lines(process) -> list[str]:
    return [line.split("] ", 1)[-1] for line in process.output().splitlines() if "plan: " in line]


def _send_times() -> tuple[datetime, str, str]:
    """A local date and two SEND_TIMEs on it, hours ahead and away from midnight (UTC users)."""
    ahead = datetime.now(UTC) + timedelta(hours=3)
    if not 2 <= ahead.hour < 22:
        ahead += timedelta(hours=6)
    first = ahead.replace(second=0, microsecond=0)
    return first, f"{first:%H:%M}", f"{first + timedelta(minutes=4):%H:%M}"


def _start_together(stack, send_time: str):
    worker = stack.start_worker(extra_env={"SEND_TIME": send_time}, wait=False)
    stack.start_beat(extra_env={"SEND_TIME": send_time})
    wait_until(lambda: " ready." in worker.output(), 60, "the worker")
    return worker


def test_a_start_plans_once_and_a_new_send_time_moves_the_rows_not_yet_queued(stack):
    first, old, new = _send_times()
    for name in ("Ada", "Bob", "Cy"):
        add_user(name, zone="UTC", birthday=first.date().replace(year=1990))

    worker = _start_together(stack, old)
    wait_until(lambda: _plan_lines(worker), 30, "the start-up plan")
    time.sleep(5)  # beat's catch-up reaches the worker too
    assert _plan_lines(worker) == ["plan: 3 new row(s)"]
    assert {(r.status, f"{r.scheduled_send_time:%H:%M}") for r in rows()} == {("PENDING", old)}

    for process in stack.processes:
        process.stop()
    worker = _start_together(stack, new)
    wait_until(lambda: len(_plan_lines(worker)) >= 2, 30, "the start-up plan")
    time.sleep(5)
    assert _plan_lines(worker) == [
        f"plan: SEND_TIME changed {old} -> {new}: 3 pending row(s) moved",
        "plan: 0 new row(s)",
    ]
    assert {(r.status, f"{r.scheduled_send_time:%H:%M}") for r in rows()} == {("PENDING", new)}
