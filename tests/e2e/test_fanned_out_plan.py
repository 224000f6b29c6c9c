"""The hourly plan fanned out over real worker processes: every range is planned by one of
them, every owed occasion gets exactly one row, and the plan's end is recorded once all are."""

from __future__ import annotations

import pytest

from tests.harness import plans

pytestmark = pytest.mark.e2e

RANGES = {"PLAN_RANGE_USERS": "150"}


def test_two_workers_share_a_fanned_out_plan_and_plan_every_user_once(stack):
    first = stack.start_worker("w1", extra_env=RANGES)
    second = stack.start_worker("w2", extra_env=RANGES)
    plans.owed_users(3000)  # 20 ranges
    detail = plans.wait_plan_ended(plans.request_plan(), 180)
    assert detail["ranges"] >= 15 and sorted(detail["done"]) == list(range(detail["ranges"]))
    assert detail["planned"] == plans.live_rows() > 1000
    assert plans.duplicates() == 0 and plans.missed(detail["started_at"]) == 0
    for worker in (first, second):  # both helped (RabbitMQ hands the helper jobs round-robin)
        assert "range(s) planned in this process" in worker.output()
