"""`messages` partitioned by month: rows land in their month's partition, a missing month goes
to DEFAULT (alerted) until the daily job makes it, retention drops whole old months, and one
occasion still has one live row whichever partition holds it."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta

import pytest
from sqlalchemy import text

from bday.devtools import factories
from bday.ops import status
from bday.scheduling import jobs, partitioning
from bday.store import messages, partitions
from bday.store.db import engine, transaction
from bday.store.models import Status

pytestmark = pytest.mark.usefixtures("database")

NOW = datetime(2027, 6, 14, 12, 0, tzinfo=UTC)
# A month no other test makes a partition for, so its rows have only DEFAULT to go to.
LONELY = date(2099, 5, 1)


def _where(ids) -> dict[uuid.UUID, str]:
    """message id -> the partition holding it."""
    with engine().connect() as connection:
        rows = connection.execute(
            text("SELECT id, tableoid::regclass::text FROM messages WHERE id = ANY(:ids)"),
            {"ids": list(ids)},
        )
        return dict(rows.all())


def _user() -> uuid.UUID:
    user = factories.user_row(birthday=factories.born_on(NOW.date()))
    with transaction() as session:
        factories.insert(session, users=[user])
    return user["id"]


def _rows(user_id: uuid.UUID, days: list[date], status: Status = Status.SENT) -> list[dict]:
    return [
        factories.message_row(user_id, datetime.combine(day, time(9), UTC), status=status)
        for day in days
    ]


def _insert(rows: list[dict]) -> int:
    with transaction() as session:
        return messages.insert_pending(session, rows)


def _ensure(month: date) -> None:
    with transaction() as session:
        partitions.create_month(session, month)


def _drop_if_there(month: date) -> None:
    with transaction() as session:
        session.execute(text(f"DROP TABLE IF EXISTS {partitions.name_of(month)}"))


def test_the_planner_writes_each_row_into_its_months_partition():
    partitioning.ensure_ahead(NOW.date(), NOW.date() - timedelta(days=400))
    _user()
    assert jobs.plan_job(NOW)["planned"] == 1
    with engine().connect() as connection:
        where = connection.execute(
            text("SELECT tableoid::regclass::text, occasion_date FROM messages")
        ).all()
    assert where == [("messages_y2027m06", NOW.date())]


def test_a_month_without_partition_goes_to_default_is_alerted_then_moved_by_the_daily_job(
    settings_env,
):
    settings_env.setenv("MESSAGE_RETENTION_DAYS", "36500")  # 2099: keep the run's other months
    _drop_if_there(LONELY)
    user_id = _user()
    days = [LONELY + timedelta(days=n) for n in (0, 14, 30)]
    rows = _rows(user_id, days, status=Status.PENDING)
    assert _insert(rows) == 3  # not one insert lost
    ids = [row["id"] for row in rows]
    assert set(_where(ids).values()) == {"messages_default"}
    assert _insert(_rows(user_id, days[:1], status=Status.PENDING)) == 0  # exactly once, in DEFAULT
    assert status.read_database(NOW).default_rows == 3  # bday_messages_default_partition_rows

    result = jobs.retention_job(datetime.combine(LONELY, time(3), UTC))

    assert "messages_y2099m05" in result["created"] and result["moved"] == 3
    assert set(_where(ids).values()) == {"messages_y2099m05"}
    assert status.read_database(NOW).default_rows == 0
    with engine().connect() as connection:
        kept = connection.execute(
            text("SELECT id, status, idempotency_key FROM messages ORDER BY occasion_date")
        ).all()
    assert [(row.id, row.status, row.idempotency_key) for row in kept] == [
        (row["id"], row["status"], row["idempotency_key"]) for row in rows
    ]
    assert _insert(_rows(user_id, days[:1], status=Status.PENDING)) == 0  # and in its partition
    # The job made the months ahead of that day too, and says so.
    with engine().connect() as connection:
        assert partitions.months_covered(connection, LONELY) >= partitioning.MONTHS_AHEAD + 1


def test_retention_drops_old_finished_months_whole_and_keeps_a_month_with_an_unfinished_row():
    old, busy, recent = date(2025, 1, 1), date(2025, 2, 1), date(2027, 5, 1)
    for month in (old, busy, recent):
        _ensure(month)
    user_id = _user()
    finished_old = _rows(user_id, [old + timedelta(days=n) for n in range(28)])
    finished_busy = _rows(user_id, [busy + timedelta(days=n) for n in range(1, 20)])
    pending_busy = _rows(user_id, [busy], status=Status.PENDING)
    newer = _rows(user_id, [recent + timedelta(days=n) for n in range(28)])
    with transaction() as session:
        factories.insert(session, messages=finished_old + finished_busy + pending_busy + newer)

    result = jobs.retention_job(NOW)

    assert "messages_y2025m01" in result["dropped"]
    assert "messages_y2025m02" in result["kept"]  # an unfinished row keeps its month
    with engine().connect() as connection:
        names = {p.name for p in partitions.ranges(connection)}
    assert "messages_y2025m01" not in names and {"messages_y2025m02", "messages_y2027m05"} <= names
    left = _where(row["id"] for row in finished_old + finished_busy + pending_busy + newer)
    assert set(left) == {row["id"] for row in pending_busy + newer}  # unfinished and newer stay
    assert result["deleted"] == len(finished_busy)  # the kept month's finished rows, by row


def test_a_partition_change_waits_for_its_lock_only_briefly_and_is_left_for_tomorrow(
    monkeypatch,
):
    monkeypatch.setattr(partitioning, "LOCK_ATTEMPTS", 2)
    monkeypatch.setattr(partitioning, "LOCK_PAUSE_S", 0.01)
    _ensure(date(2024, 3, 1))
    with engine().connect() as reader:
        reader.execute(text("SELECT count(*) FROM messages"))  # a long query holds the table
        result = partitioning.drop_behind(date(2026, 1, 1))
        reader.rollback()
    assert "messages_y2024m03" in result["drop_busy"] and result["dropped"] == []
    assert "messages_y2024m03" in partitioning.drop_behind(date(2026, 1, 1))["dropped"]


def test_the_months_wanted_reach_from_the_catch_up_to_three_months_ahead_and_into_default():
    wanted = partitioning.months_wanted(
        date(2027, 3, 2), date(2026, 2, 1), [date(2025, 12, 1), date(2026, 7, 1)]
    )
    assert wanted == [
        date(2026, 7, 1),  # rows in DEFAULT not yet due for deletion: moved to a partition
        date(2027, 2, 1),  # three days back: the planner's catch-up may still write there
        date(2027, 3, 1),
        date(2027, 4, 1),
        date(2027, 5, 1),
        date(2027, 6, 1),
    ]


def test_a_partition_another_run_dropped_counts_as_gone_and_is_not_deleted_from():
    """Two beats, two daily jobs: the second finds the first's work done, and fails on none."""
    from bday.config import get_settings

    ghost = partitions.Partition("messages_y1999m01", date(1999, 1, 1), date(1999, 2, 1))
    with transaction() as session:
        assert partitions.drop_if_finished(session, ghost) is True
    assert jobs._delete_rows(ghost.name, date(2000, 1, 1), NOW, get_settings(), None) == (0, 0)
