"""The message pipeline end to end: real `celery -A bday worker|beat` processes, RabbitMQ,
PostgreSQL and the fake email service over HTTP."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from kombu import Connection, Exchange, Producer

from bday.broker.app import app
from bday.broker.topology import SEND_ROUTING_KEY, topology
from bday.config import get_settings
from bday.core.occasions import message_text
from bday.devtools.factories import born_on
from bday.scheduling import jobs
from bday.users import api as users
from bday.users import hooks
from bday.users.events import USER_BIRTHDAY, emit
from bday.worker.tasks import send_message
from tests.harness.queues import queue_counts, statuses
from tests.harness.rows import add_due_messages, add_user, enqueue_ran_after, next_instant, rows
from tests.harness.stack import send_jobs_settled, wait_until

pytestmark = pytest.mark.e2e


def _local_date(at: datetime, zone_name: str):
    from bday.core.occasions import zone

    return at.astimezone(zone(zone_name)).date()


def test_greetings_go_out_at_send_time_through_beat_and_never_early(stack):
    # SEND_TIME is a whole minute: aim at the next one at least 20 s away.
    now = datetime.now(UTC)
    instant = (now + timedelta(seconds=80)).replace(second=0, microsecond=0)
    send_time = instant.strftime("%H:%M")
    owed = [
        add_user(f"Owed{i}", zone="UTC", birthday=born_on(_local_date(instant, "UTC")))
        for i in range(5)
    ]
    # Etc/GMT-1 is UTC+1: SEND_TIME there came an hour before `instant`, before this user existed.
    too_late = add_user(
        "Late",
        zone="Etc/GMT-1",
        owed_from=now,
        birthday=born_on(_local_date(instant - timedelta(hours=1), "Etc/GMT-1")),
    )
    tomorrow = add_user(
        "Tomorrow",
        zone="UTC",
        birthday=born_on(_local_date(instant, "UTC") + timedelta(days=1)),
    )
    env = {"SEND_TIME": send_time}
    stack.start_worker(extra_env=env)
    stack.start_beat(extra_env=env)

    wait_until(
        lambda: statuses()["SENT"] >= 5,
        (instant - datetime.now(UTC)).total_seconds() + 30,
        "five greetings sent",
    )
    # Nothing more goes out: not after an enqueue run later than the last send (it would
    # publish anything else owed, or a row again; beat's next one, a minute on, sees the same
    # rows) and every job published by then has been settled.
    last_sent = max(row.sent_at for row in rows() if row.status == "SENT")
    jobs.enqueue_job()
    assert enqueue_ran_after(last_sent)
    wait_until(send_jobs_settled, 30, "every job settled", interval=0.5)
    records = stack.fake.records
    assert len(records) == 5
    assert all(r.at >= instant.timestamp() for r in records), "a greeting went out early"
    lateness = sorted(r.at - instant.timestamp() for r in records)
    assert lateness[-1] < 2.0, lateness
    sent_users = {row.user_id for row in rows() if row.status == "SENT"}
    assert sent_users == set(owed)
    assert {r.message for r in records} == {
        message_text("BIRTHDAY", f"Owed{i}", "Test") for i in range(5)
    }
    assert too_late not in {row.user_id for row in rows()}
    assert [row.status for row in rows() if row.user_id == tomorrow] == ["PENDING"]


def test_transient_failures_are_retried_with_backoff_then_sent(stack):
    stack.fake.set(fail_first=2)
    ids = add_due_messages(3, next_instant(2))
    # The retry layer alone: with the breaker on, a failure may be a cold-start probe, which
    # defers without spending a retry (tests/delivery/test_breaker.py and the chaos outages cover that).
    stack.start_worker(extra_env={"BREAKER_ENABLED": "false"})
    jobs.enqueue_job()
    wait_until(lambda: statuses()["SENT"] == 3, 40, "all sent after retries")
    for message_id in ids:
        calls = sorted(r.at for r in stack.fake.records if r.key == str(message_id))
        assert len(calls) == 3
        first_gap, second_gap = calls[1] - calls[0], calls[2] - calls[1]
        assert first_gap >= 0.9 and second_gap >= 1.8, (first_gap, second_gap)  # 1 s, then 2 s
    assert {row.retry_count for row in rows()} == {2}
    assert all(row.last_error and "500" in row.last_error for row in rows())
    assert set(stack.fake.sent_per_key().values()) == {1}


def test_a_permanent_error_fails_the_message_and_dead_letters_one_job(stack):
    stack.fake.set(fixed_status=422)
    [_message_id] = add_due_messages(1, next_instant(1))
    stack.start_worker()
    jobs.enqueue_job()
    wait_until(lambda: statuses()["FAILED"] == 1, 20, "message failed")
    wait_until(lambda: queue_counts()["dlq"] == 1, 10, "one job in the DLQ")
    [row] = rows()
    assert (row.failure_reason, row.provider_status, row.attempts) == ("permanent", 422, 1)
    assert len(stack.fake.records) == 1


def test_exhausted_retries_fail_the_message_and_dead_letter_it(stack):
    stack.fake.set(failure_rate=1.0)
    add_due_messages(1, next_instant(1))
    stack.start_worker(extra_env={"QUEUE_MAX_RETRIES": "2", "BREAKER_ENABLED": "false"})
    jobs.enqueue_job()
    wait_until(lambda: statuses()["FAILED"] == 1, 30, "message failed")
    wait_until(lambda: queue_counts()["dlq"] == 1, 10, "one job in the DLQ")
    [row] = rows()
    assert (row.failure_reason, row.retry_count, row.attempts) == ("retries_exhausted", 2, 3)
    assert len(stack.fake.records) == 3


def _publish_raw(body: bytes, headers: dict, content_type: str = "application/json") -> None:
    parts = topology(get_settings())
    with Connection(get_settings().rabbitmq_url) as connection:
        Producer(connection.channel()).publish(
            body,
            exchange=Exchange(parts.exchange.name, type="topic"),
            routing_key=SEND_ROUTING_KEY,
            headers=headers,
            content_type=content_type,
            content_encoding="utf-8",
        )


def test_malformed_jobs_are_dead_lettered_while_good_jobs_keep_flowing(stack):
    good = add_due_messages(5, next_instant(2))
    stack.start_worker()
    _publish_raw(b"{this is not json", {"task": "bday.tasks.send_message", "id": str(uuid.uuid4())})
    _publish_raw(
        json.dumps([[], {}, {}]).encode(),
        {"task": "bday.tasks.no_such_task", "id": str(uuid.uuid4())},
    )
    send_message.apply_async(
        args=[str(uuid.uuid4())]
    )  # a well-formed job for a row that does not exist
    send_message.apply_async(args=["not-a-uuid"])
    task = {"task": "bday.tasks.send_message"}
    _publish_raw(
        json.dumps([[], {"unexpected": 1}, {}]).encode(), {**task, "id": str(uuid.uuid4())}
    )
    _publish_raw(
        json.dumps([["x" * 1_000_000], {}, {}]).encode(), {**task, "id": str(uuid.uuid4())}
    )
    jobs.enqueue_job()
    wait_until(lambda: statuses()["SENT"] == 5, 20, "good messages sent")
    wait_until(lambda: queue_counts()["dlq"] == 6, 15, "six malformed jobs in the DLQ")
    assert queue_counts()["queue"] == 0
    assert set(stack.fake.sent_per_key()) == {str(i) for i in good}


def test_the_same_hook_called_twice_sends_once(stack, settings_env):
    # SEND_TIME an hour ago: the greeting is owed and overdue, so the hook publishes it at once.
    send_time = (datetime.now(UTC) - timedelta(hours=1)).strftime("%H:%M")
    settings_env.setenv("SEND_TIME", send_time)
    user_id = add_user(
        "Hooked",
        zone="UTC",
        birthday=born_on(_local_date(datetime.now(UTC) - timedelta(hours=1), "UTC")),
    )
    stack.start_worker(extra_env={"SEND_TIME": send_time})
    first = hooks.on_birthday_hook(user_id)
    second = hooks.on_birthday_hook(user_id)
    third = emit(USER_BIRTHDAY, user_id)[0]
    assert first == second == third
    wait_until(lambda: statuses()["SENT"] == 1, 20, "sent")
    wait_until(send_jobs_settled, 20, "every job settled", interval=0.5)  # a second one too
    assert len(rows()) == 1 and len(stack.fake.records) == 1
    assert stack.fake.records[0].key == str(first)


def test_two_enqueue_runs_at_once_publish_each_row_once(stack):
    add_due_messages(300, next_instant(3))
    results = []
    runners = [
        threading.Thread(target=lambda: results.append(jobs.enqueue_job())) for _ in range(2)
    ]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()
    assert sum(r["published"] for r in results) == 300
    stack.start_worker(concurrency=16)  # after: its own start-up enqueue would find nothing to do
    wait_until(lambda: statuses()["SENT"] == 300, 60, "all sent")
    wait_until(send_jobs_settled, 20, "every job settled", interval=0.5)  # duplicates too
    assert len(stack.fake.records) == 300
    assert set(stack.fake.sent_per_key().values()) == {1}


def test_a_job_delivered_early_is_not_sent_early(stack):
    instant = next_instant(3)
    [message_id] = add_due_messages(1, instant)
    stack.start_worker()
    send_message.delay(str(message_id))  # no eta: arrives seconds before the instant
    wait_until(lambda: statuses()["SENT"] == 1, 20, "sent")
    [record] = stack.fake.records
    assert record.at >= instant.timestamp()
    assert record.at - instant.timestamp() < 2.0


def test_a_zone_change_after_publishing_turns_the_queued_job_into_a_no_op(stack, settings_env):
    send_time = (datetime.now(UTC) - timedelta(hours=1)).strftime("%H:%M")
    settings_env.setenv("SEND_TIME", send_time)
    user_id = add_user(
        "Mover",
        zone="UTC",
        birthday=born_on(_local_date(datetime.now(UTC) - timedelta(hours=1), "UTC")),
    )
    queued = hooks.on_birthday_hook(user_id)  # published; no worker is running yet
    users.update_user(user_id, timezone="Pacific/Kiritimati")
    assert [row.status for row in rows() if row.id == queued] == ["CANCELLED"]
    stack.start_worker(extra_env={"SEND_TIME": send_time})
    wait_until(send_jobs_settled, 20, "the queued job consumed and settled", interval=0.5)
    assert stack.fake.records == []
    assert [row.status for row in rows() if row.id == queued] == ["CANCELLED"]


def test_a_hook_whose_publish_fails_leaves_the_row_for_enqueue(stack, monkeypatch, settings_env):
    send_time = (datetime.now(UTC) - timedelta(hours=1)).strftime("%H:%M")
    settings_env.setenv("SEND_TIME", send_time)
    user_id = add_user(
        "Offline",
        zone="UTC",
        birthday=born_on(_local_date(datetime.now(UTC) - timedelta(hours=1), "UTC")),
    )
    with monkeypatch.context() as broken:
        broken.setattr(app.conf, "broker_url", "amqp://guest:guest@127.0.0.1:1//")
        message_id = hooks.on_birthday_hook(user_id)  # must not raise
    [row] = rows()
    assert (row.id, row.status) == (message_id, "PENDING")
    stack.start_worker(extra_env={"SEND_TIME": send_time})
    jobs.enqueue_job()
    wait_until(lambda: statuses()["SENT"] == 1, 20, "sent by the enqueue job")
    assert stack.fake.sent_per_key() == {str(message_id): 1}


def test_a_peak_is_claimed_and_recorded_in_batches_each_greeting_once(stack):
    due = add_due_messages(96, next_instant(2))
    worker = stack.start_worker(concurrency=16)
    jobs.enqueue_job()
    wait_until(lambda: statuses()["SENT"] == 96, 30, "all sent")
    time.sleep(0.5)
    # One INFO line per statement that wrote SENT: "sent N (slowest M ms): id id ...".
    lines = re.finditer(r" sent (\d+) \(slowest \d+ ms\): (.*)$", worker.output(), re.M)
    groups = [match[2].split() for match in lines if len(match[2].split()) == int(match[1])]
    recorded = [message_id for group in groups for message_id in group]
    assert sorted(recorded) == sorted(str(m) for m in due)  # each once
    assert len(groups) < len(due) / 2  # far fewer SENT statements than greetings
    assert set(stack.fake.sent_per_key().values()) == {1}
