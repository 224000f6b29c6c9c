"""The periodic jobs against the real database and broker (no worker: jobs are only published).

plan is idempotent and set-based; enqueue publishes what is due and nothing early; two enqueue
runs split the rows; recover republishes what the broker lost and expires what is too late.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import text

from bday.config import get_settings
from bday.devtools import factories
from bday.scheduling import jobs
from bday.store.db import engine, transaction
from bday.store.models import FailureReason, Status
from tests.harness.queues import purge_all, queue_counts

pytestmark = pytest.mark.broker  # enqueue and recover publish to the run's vhost

NOW = datetime(2027, 3, 5, 9, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def clean_queues(database):
    purge_all()
    yield
    purge_all()


def user(
    zone="UTC", birthday=date(1990, 3, 5), owed_from=datetime(2020, 1, 1, tzinfo=UTC)
) -> uuid.UUID:
    row = factories.user_row(birthday=birthday, timezone=zone, owed_from=owed_from)
    with transaction() as session:
        factories.insert(session, [row])
    return row["id"]


def message(status=Status.PENDING, scheduled=NOW, **values) -> uuid.UUID:
    row = factories.message_row(user(), scheduled, status=status, **values)
    with transaction() as session:
        factories.insert(session, messages=[row])
    return row["id"]


def rows() -> dict[uuid.UUID, dict]:
    with engine().connect() as connection:
        return {
            r["id"]: dict(r) for r in connection.execute(text("SELECT * FROM messages")).mappings()
        }


def count(sql: str) -> int:
    with engine().connect() as connection:
        return connection.execute(text(sql)).scalar()


@time_machine.travel(NOW - timedelta(hours=1), tick=False)
def test_plan_is_idempotent_and_covers_late_and_upcoming_occasions():
    user(zone="Asia/Tokyo", birthday=date(1990, 3, 4))  # 09:00 JST Mar 4 = 23 h ago: still owed
    user(zone="UTC", birthday=date(1990, 3, 5))  # in an hour
    user(zone="Pacific/Honolulu", birthday=date(1990, 3, 6))  # 19:00 UTC Mar 6: beyond 26 h
    user(zone="UTC", birthday=date(1990, 3, 2))  # 72 h ago: beyond CATCH_UP_HOURS
    assert jobs.plan_job() == {"planned": 2}
    assert jobs.plan_job() == {"planned": 0}
    assert count("SELECT count(*) FROM messages") == 2


def test_a_starting_plan_shows_neither_the_last_plans_end_nor_its_ranges():
    ended = {"started_at": "2027-03-05T07:00:00+00:00", "ended_at": "2027-03-05T07:01:00+00:00"}
    jobs.heartbeat("plan", NOW, {**ended, "ranges": 4, "done": [0, 1, 2, 3], "planned": 9})
    begun, _ = jobs._start_plan(NOW, {"started_at": NOW.isoformat(), "settings": {}}, None)
    with engine().connect() as connection:
        detail = connection.execute(text("SELECT detail FROM heartbeats")).scalar_one()
    assert begun
    assert detail == {"started_at": NOW.isoformat(), "settings": {}}


@time_machine.travel(NOW - timedelta(hours=1), tick=False)
def test_plan_skips_deleted_users_and_occasions_before_the_user_existed():
    user(owed_from=NOW + timedelta(seconds=1))  # changed zone/date after the instant
    deleted = user()
    with transaction() as session:
        session.execute(text("UPDATE users SET deleted_at = now() WHERE id = :id"), {"id": deleted})
    assert jobs.plan_job() == {"planned": 0}


def test_enqueue_publishes_what_is_due_within_the_lead_and_nothing_later():
    due = message(scheduled=NOW + timedelta(seconds=30))
    later = message(scheduled=NOW + timedelta(minutes=5))
    with time_machine.travel(NOW, tick=False):
        result = jobs.enqueue_job()
    assert result["published"] == 1
    state = rows()
    assert state[due]["status"] == Status.QUEUED and state[due]["dispatch_token"] is not None
    assert state[later]["status"] == Status.PENDING


def test_enqueue_expires_rows_more_than_catch_up_hours_late():
    stale = message(scheduled=NOW - timedelta(hours=49))
    with time_machine.travel(NOW, tick=False):
        result = jobs.enqueue_job()
    assert result == {"published": 0, "expired": 1}
    assert (rows()[stale]["status"], rows()[stale]["failure_reason"]) == (
        Status.FAILED,
        FailureReason.EXPIRED,
    )


def test_two_enqueue_runs_at_once_claim_each_row_exactly_once():
    for _ in range(400):
        message(scheduled=NOW - timedelta(seconds=5))
    results = []
    with time_machine.travel(NOW, tick=False):
        threads = [
            threading.Thread(target=lambda: results.append(jobs.enqueue_job())) for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sum(r["published"] for r in results) == 400
    assert count("SELECT count(*) FROM messages WHERE status = 'QUEUED'") == 400
    assert queue_counts()["queue"] == 400


def test_recover_republishes_a_queued_row_whose_job_was_lost_with_a_new_token():
    old_token = uuid.uuid4()
    lost = message(
        status=Status.QUEUED, dispatch_token=old_token, next_attempt_at=NOW - timedelta(minutes=10)
    )
    fresh = message(
        status=Status.QUEUED,
        dispatch_token=uuid.uuid4(),
        next_attempt_at=NOW - timedelta(seconds=5),
    )
    with time_machine.travel(NOW, tick=False):
        result = jobs.recover_job(service_answering=True)
    assert result["republished_lost"] == 1
    assert rows()[lost]["dispatch_token"] not in (None, old_token)
    assert rows()[fresh]["status"] == Status.QUEUED
    assert queue_counts()["queue"] == 1


def test_recover_takes_back_a_row_whose_worker_died_mid_send():
    stuck = message(status=Status.SENDING, lease_expires_at=NOW - timedelta(seconds=1))
    busy = message(status=Status.SENDING, lease_expires_at=NOW + timedelta(seconds=30))
    with time_machine.travel(NOW, tick=False):
        jobs.recover_job(service_answering=True)
    assert rows()[stuck]["status"] == Status.QUEUED
    assert rows()[busy]["status"] == Status.SENDING


def test_recover_revives_transient_failures_when_the_service_answers():
    failed = [
        message(status=Status.FAILED, failure_reason=FailureReason.RETRIES_EXHAUSTED, retry_count=5)
        for _ in range(3)
    ]
    permanent = message(status=Status.FAILED, failure_reason=FailureReason.PERMANENT)
    with time_machine.travel(NOW, tick=False):
        result = jobs.recover_job(service_answering=True)
    assert result["revived_failed"] == 3
    state = rows()
    assert all(state[m]["status"] == Status.QUEUED and state[m]["retry_count"] == 0 for m in failed)
    assert state[permanent]["status"] == Status.FAILED


def test_recover_sends_a_single_probe_while_the_service_is_not_answering():
    for minutes in range(5):
        message(
            status=Status.FAILED,
            failure_reason=FailureReason.RETRIES_EXHAUSTED,
            scheduled=NOW - timedelta(minutes=minutes),
        )
    with time_machine.travel(NOW, tick=False):
        result = jobs.recover_job(service_answering=False)
    assert result["revived_failed"] == 1
    oldest = min(rows().values(), key=lambda r: r["scheduled_send_time"])
    assert oldest["status"] == Status.QUEUED


def test_recover_expires_owed_rows_past_catch_up_and_records_its_heartbeat():
    late = message(
        status=Status.QUEUED,
        scheduled=NOW - timedelta(hours=50),
        next_attempt_at=NOW - timedelta(hours=50),
    )
    with time_machine.travel(NOW, tick=False):
        result = jobs.recover_job(service_answering=True)
    assert result["expired"] == 1 and rows()[late]["failure_reason"] == "expired"
    assert count("SELECT count(*) FROM heartbeats WHERE name = 'recover'") == 1


def test_a_forced_deadline_keeps_an_old_row_sendable():
    kept = message(
        status=Status.PENDING,
        scheduled=NOW - timedelta(hours=60),
        send_deadline=NOW + timedelta(hours=1),
    )
    with time_machine.travel(NOW, tick=False):
        result = jobs.enqueue_job()
    assert result == {"published": 1, "expired": 0}
    assert rows()[kept]["status"] == Status.QUEUED


def test_drain_deferred_republishes_the_backlog_oldest_first():
    deferred = [
        message(
            status=Status.QUEUED,
            deferrals=2,
            scheduled=NOW - timedelta(minutes=m),
            next_attempt_at=NOW + timedelta(minutes=1),
        )
        for m in range(3)
    ]
    with time_machine.travel(NOW, tick=False):
        assert jobs.drain_deferred() == 3
    assert all(rows()[m]["next_attempt_at"] == NOW for m in deferred)
    assert queue_counts()["queue"] == 3


def test_drain_deferred_takes_the_whole_backlog_a_batch_at_a_time(monkeypatch):
    monkeypatch.setenv("ENQUEUE_BATCH", "2")
    get_settings.cache_clear()
    deferred = [
        message(
            status=Status.QUEUED,
            deferrals=1,
            scheduled=NOW - timedelta(minutes=m),
            next_attempt_at=NOW + timedelta(minutes=1),
        )
        for m in range(5)
    ]
    with time_machine.travel(NOW, tick=False):
        assert jobs.drain_deferred() == 5  # three batches of at most 2, not one
    assert all(rows()[m]["next_attempt_at"] == NOW for m in deferred)
    assert queue_counts()["queue"] == 5
    get_settings.cache_clear()
