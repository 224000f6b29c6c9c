"""Retention: finished rows older than MESSAGE_RETENTION_DAYS go, in bounded batches; this
year's rows, and every unfinished row, stay."""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from bday.scheduling import jobs
from bday.store.db import engine

pytestmark = pytest.mark.usefixtures("database")

NOW = datetime(2027, 6, 1, 12, 0, tzinfo=UTC)
ROWS = int(os.environ.get("BDAY_RETENTION_ROWS", "20000"))


def _fill(rows: int, *, days_back: int, status: str, start: int = 0) -> None:
    """`rows` messages of one status, one per day going back from `days_back` days ago."""
    user_id = uuid.uuid4()
    with engine().begin() as connection:
        connection.execute(
            text(
                """INSERT INTO users (id, first_name, last_name, email, birthday, timezone,
                                      birthday_owed_from, anniversary_owed_from)
                   VALUES (:id, 'R', 'R', :email, '1990-01-01', 'UTC', now(), now())"""
            ),
            {"id": user_id, "email": f"{user_id}@example.com"},
        )
        connection.execute(
            text(
                """INSERT INTO messages (id, user_id, message_type, status, occasion_date,
                                         scheduled_send_time, idempotency_key)
                   SELECT gen_random_uuid(), CAST(:user_id AS uuid), 'BIRTHDAY', :status,
                          d::date, d + interval '9 hours', CAST(:user_id AS text) || ':' || i
                     FROM generate_series(1, :rows) i,
                          LATERAL (SELECT CAST(:newest AS timestamptz) - (i % 3000) * interval '1 day') s(d)"""
            ),
            {
                "user_id": str(user_id),
                "status": status,
                "rows": rows,
                "newest": NOW - timedelta(days=days_back),
            },
        )


def _count(where: str = "true") -> int:
    with engine().connect() as connection:
        return connection.execute(text(f"SELECT count(*) FROM messages WHERE {where}")).scalar()


def test_retention_deletes_old_finished_rows_in_batches_and_keeps_the_rest(settings_env):
    settings_env.setenv("RETENTION_BATCH", "1000")
    settings_env.setenv("RETENTION_PAUSE", "0")
    for status in ("SENT", "FAILED", "CANCELLED"):
        _fill(ROWS // 4, days_back=0, status=status)  # spread over 3,000 days back from NOW
    _fill(ROWS // 4, days_back=500, status="PENDING")  # unfinished, however old: kept
    cutoff = (NOW - timedelta(days=400)).date()
    old = f"occasion_date < '{cutoff}' AND status IN ('SENT', 'FAILED', 'CANCELLED')"
    expected_deleted, total = _count(old), _count()
    kept_recent = _count(f"occasion_date >= '{cutoff}'")
    assert expected_deleted > ROWS // 2  # most of the finished rows are old enough
    started = time.monotonic()
    result = jobs.retention_job(NOW)
    elapsed = time.monotonic() - started
    assert result["deleted"] == expected_deleted and _count(old) == 0
    assert _count() == total - expected_deleted
    assert _count("status = 'PENDING'") == ROWS // 4
    assert result["batches"] == expected_deleted // 1000 + 1  # bounded: 1,000 a transaction
    assert _count(f"occasion_date >= '{cutoff}'") == kept_recent  # newer rows untouched
    print(f"retention: {expected_deleted} rows in {elapsed:.2f} s")
    assert jobs.retention_job(NOW)["deleted"] == 0  # nothing left to do


def test_rows_of_the_last_366_days_stay_whatever_the_setting(settings_env):
    settings_env.setenv("MESSAGE_RETENTION_DAYS", "1")
    _fill(1000, days_back=0, status="SENT")  # one a day from NOW back ~1,000 days
    year_ago = (NOW - timedelta(days=366)).date()
    recent = _count(f"occasion_date >= '{year_ago}'")
    assert recent >= 366
    jobs.retention_job(NOW)
    assert _count(f"occasion_date >= '{year_ago}'") == recent
    margin = (NOW - timedelta(days=367)).date()  # the guard keeps one more day (zones)
    # Whole months before the margin's are gone. Its own month goes whole once every day of
    # it is past the margin (its partition is dropped), so up to a month more may stay.
    assert _count(f"occasion_date < '{margin.replace(day=1)}'") == 0
    assert recent + 1 <= _count() <= recent + 1 + 31


def test_status_shows_the_table_size_and_the_oldest_kept_row(monkeypatch, capsys):
    from tests.harness.cli import bday

    _fill(10, days_back=0, status="SENT")
    code, out, _ = bday(monkeypatch, capsys, "status")
    oldest = (NOW - timedelta(days=10)).date()  # generate_series starts at 1
    line = next(line for line in out.splitlines() if line.startswith("storage:"))
    assert f"oldest row {oldest}" in line and "MESSAGE_RETENTION_DAYS=400" in line
    assert " MiB" in line


def test_the_retention_task_is_scheduled_on_its_own_cron_and_routed_to_the_scheduler():
    from bday.broker import config
    from bday.worker import tasks

    entry = config.beat_schedule["retention"]
    assert entry["task"] == tasks.retention.name == "bday.tasks.retention"
    assert str(entry["schedule"]) == str(config._cron("17 3 * * *"))
    assert config.task_routes["bday.tasks.*"]["queue"] == config._topology.scheduler_queue.name
