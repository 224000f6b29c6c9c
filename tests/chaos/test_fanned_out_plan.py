"""A worker SIGKILLed in the middle of a fanned-out plan: the range it held is rolled back
and planned by the other worker, or (when it ran the plan itself) the plan's job goes back to
the queue and the other worker plans again; either way every user is planned once and the
plan records its end."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from tests.harness import plans
from tests.harness.stack import wait_until

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(1800)  # --long: 400,000 users, and the check re-plans them all
@pytest.mark.parametrize("victim", ["plan", "helper"])
def test_sigkill_of_a_worker_mid_plan_still_plans_every_user_once(stack, scale, report, victim):
    users, range_users = scale.pick((20_000, 500), (400_000, 10_000))  # 40 ranges
    env = {"PLAN_RANGE_USERS": str(range_users)}
    workers = [stack.start_worker(name, extra_env=env) for name in ("w1", "w2")]
    plans.owed_users(users)
    asked = plans.request_plan()
    ranges = 40
    wait_until(
        lambda: len(plans.started_since(asked).get("done", ())) >= ranges // 4, 300, "a quarter"
    )
    runs_plan = ["plan: fanned out into" in worker.output() for worker in workers]
    killed = workers[runs_plan.index(victim == "plan")]
    killed.kill()
    at_kill = plans.started_since(asked)
    # The other worker may finish the killed plan's ranges before the plan's job, back in the
    # queue, runs again: when the plan's process died, wait for the plan that re-run starts.
    since = datetime.fromisoformat(at_kill["started_at"]) + timedelta(microseconds=1)
    detail = plans.wait_plan_ended(since if victim == "plan" else asked, scale.pick(300, 1800))
    report.update(
        users=users,
        ranges=detail["ranges"],
        done_at_kill=len(at_kill["done"]),
        planned_again=detail["started_at"] != at_kill["started_at"],  # the plan's job re-ran
        rows=plans.live_rows(),
    )
    assert len(at_kill["done"]) < detail["ranges"] == ranges
    assert plans.duplicates() == 0
    assert plans.missed(detail["started_at"]) == 0
