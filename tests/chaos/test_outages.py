"""The email service and the whole system failing for a while: what is owed is still sent once,
what is too late expires, and an outage costs a few probes, not a flood."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta

import pytest

from bday.scheduling import jobs
from tests.harness.chaos import BREAKER, FAST, breaker_trips, sends_summary
from tests.harness.queues import statuses
from tests.harness.rows import add_due_messages, add_user, rows
from tests.harness.stack import wait_until

pytestmark = pytest.mark.e2e


def test_a_flaky_service_still_gets_every_key_exactly_once(stack, scale, report):
    count = scale.pick(800, 3000)
    stack.fake.set(failure_rate=0.10, timeout_rate=0.05, latency_ms=10)
    add_due_messages(count, datetime.now(UTC))
    stack.start_worker(concurrency=32, extra_env={**FAST, **BREAKER})
    started = time.monotonic()
    jobs.enqueue_job()
    wait_until(lambda: statuses()["SENT"] == count, 300, "every message sent despite failures")
    outcomes = {}
    for record in stack.fake.records:
        outcomes[record.outcome] = outcomes.get(record.outcome, 0) + 1
    per_key = stack.fake.sent_per_key()
    report.update(
        sends_summary(per_key, count),
        calls=len(stack.fake.records),
        outcomes=outcomes,
        drain_s=round(time.monotonic() - started, 1),
        breaker_trips=breaker_trips(),
    )
    assert set(per_key.values()) == {1} and len(per_key) == count
    assert report["breaker_trips"] == 0, "random failures must not trip the breaker"


@pytest.mark.timeout(900)  # --long: a five-minute outage
def test_greetings_due_at_once_during_an_outage_cost_few_calls_and_drain_fast(stack, scale, report):
    """Issue 7's figure: N greetings due at one instant, the service down for a while from that
    instant, two workers: bounded calls during the outage, none FAILED, a fast drain after."""
    count, outage_s = scale.pick((500, 25), (500, 300))  # short: past BREAKER_COOLDOWN_MAX
    stack.fake.set(down=True)
    instant = datetime.now(UTC) + timedelta(seconds=3)
    add_due_messages(count, instant)
    for name in ("a", "b"):
        stack.start_worker(name=name, concurrency=32, extra_env={**FAST, **BREAKER})
    jobs.enqueue_job()
    outage_ends = instant.timestamp() + outage_s
    time.sleep(max(0.0, outage_ends - time.time()))
    stack.fake.set(down=False)
    back = time.time()
    wait_until(lambda: statuses()["SENT"] == count, 120, "backlog drained after the outage")
    records = stack.fake.records
    during = sum(1 for r in records if r.at < back)
    last_sent = max(r.at for r in records if r.outcome == "sent")
    report.update(
        sends_summary(stack.fake.sent_per_key(), count),
        outage_s=outage_s,
        calls_during_outage=during,
        drain_after_return_s=round(last_sent - back, 1),
        failed=statuses()["FAILED"],
    )
    assert report["failed"] == 0 and report["lost"] == 0 and report["second_sends"] == 0
    assert during <= 30, f"{during} calls reached a service that was down"
    assert last_sent - back <= 30
    assert all(row.retry_count == 0 for row in rows()), "deferrals must not spend retries"


def test_a_day_long_email_outage_sends_what_is_still_owed_and_expires_the_rest(
    stack, scale, report
):
    """Rows whose instants lie 1-30 h in the past while the service answered 503; then it
    comes back. Within CATCH_UP_HOURS (48) they go out; older ones end FAILED expired."""
    now = datetime.now(UTC)
    owed = scale.pick(60, 300)
    for hours in range(1, 31):
        add_due_messages(owed // 30, now - timedelta(hours=hours), prefix=f"h{hours}-")
    add_due_messages(10, now - timedelta(hours=50), prefix="stale-")
    stack.fake.set(down=True)
    stack.start_worker(concurrency=16, extra_env={**FAST, **BREAKER})
    jobs.enqueue_job()
    time.sleep(12)  # the outage, as seen by a running system (two breaker cooldowns)
    calls_while_down = len(stack.fake.records)
    stack.fake.set(down=False)
    back = time.monotonic()
    wait_until(lambda: statuses()["SENT"] == owed, 120, "owed messages sent after the outage")
    state = statuses()
    per_key = stack.fake.sent_per_key()
    report.update(
        sends_summary(per_key, owed),
        calls_while_down=calls_while_down,
        expired=state["FAILED"],
        drain_s=round(time.monotonic() - back, 1),
    )
    assert state == {"SENT": owed, "FAILED": 10}
    assert {r.failure_reason for r in rows() if r.status == "FAILED"} == {"expired"}
    assert set(per_key.values()) == {1}
    assert calls_while_down <= 10


def test_after_a_day_with_nothing_running_everything_owed_is_sent_once(stack, scale, report):
    """Beat and workers were stopped for a day: no rows were planned. Users whose 09:00 fell in
    that day (and who existed before it) get their greeting once, late; older ones do not."""
    now = datetime.now(UTC)
    missed = scale.pick(48, 240)
    send_time = now.strftime("%H:%M")
    owed_users = []
    for index in range(missed):
        # SEND_TIME is now's UTC wall time, so in a zone h hours east of UTC it came h hours ago
        # on today's date; past +14 h the zone is 24 - h hours west, where it was yesterday.
        hours_ago = 1 + index % 23
        if hours_ago <= 14:
            zone, local_day = f"Etc/GMT-{hours_ago}", now.date()
        else:
            zone, local_day = f"Etc/GMT+{24 - hours_ago}", now.date() - timedelta(days=1)
        owed_users.append(
            add_user(
                f"Missed{index}",
                zone=zone,
                birthday=_same_day_1990(local_day),
                owed_from=now - timedelta(days=400),
            )
        )
    too_old = add_user(
        "TooOld",
        zone="UTC",
        birthday=_same_day_1990(now.date() - timedelta(days=3)),
        owed_from=now - timedelta(days=400),
    )
    env = {**FAST, "SEND_TIME": send_time}
    started = time.monotonic()
    stack.start_worker(concurrency=16, extra_env=env)
    stack.start_beat(extra_env=env)
    wait_until(lambda: statuses()["SENT"] >= len(_owed_rows()), 120, "catch-up sent")
    time.sleep(2)
    per_key = stack.fake.sent_per_key()
    sent_users = {row.user_id for row in rows() if row.status == "SENT"}
    report.update(
        sends_summary(per_key, len(_owed_rows())),
        users=missed,
        catch_up_s=round(time.monotonic() - started, 1),
    )
    assert set(owed_users) <= sent_users
    assert too_old not in sent_users
    assert set(per_key.values()) == {1}


def _owed_rows():
    return [row for row in rows() if row.scheduled_send_time <= datetime.now(UTC)]


def _same_day_1990(day: date) -> date:
    return day.replace(year=1992) if (day.month, day.day) == (2, 29) else day.replace(year=1990)
