"""A change of SEND_TIME re-plans what has not been queued yet, and says so; a worker and beat
starting together plan once.

Against the real database, on fixed dates (each plan is given its `now`): rows planned at
13:33 local move to 13:37 on the same local date when the setting changes; QUEUED rows (their
job is on the broker already) stay; a row whose user came between the two instants is owed
nothing at the new one; a DST gap's shifted instant is not mistaken for a change.
"""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text

from bday.config import get_settings
from bday.devtools import factories
from bday.scheduling import jobs
from bday.store import messages
from bday.store.db import engine, transaction

pytestmark = pytest.mark.usefixtures("database")

NOW = datetime(2027, 3, 5, 1, 0, tzinfo=UTC)  # before 13:33 on Mar 5 in every zone below
ZONES = ["Asia/Tokyo", "Europe/London", "America/New_York", "Asia/Kathmandu"]
MOVED = "plan: SEND_TIME changed 13:33 -> 13:37: 3 pending row(s) moved"


@pytest.fixture
def send_time(settings_env):
    def set_to(value: str) -> None:
        settings_env.setenv("SEND_TIME", value)
        get_settings.cache_clear()

    return set_to


def add_user(zone: str, birthday: date = date(1990, 3, 5), owed_from: datetime | None = None):
    row = factories.user_row(
        birthday=birthday, timezone=zone, owed_from=owed_from or datetime(2020, 1, 1, tzinfo=UTC)
    )
    with transaction() as session:
        factories.insert(session, [row])
    return row["id"]


def planned() -> dict[uuid.UUID, tuple[str, str, str]]:
    """user id -> (status, local HH:MM of the instant, local date) of its one birthday row."""
    query = text(
        """SELECT m.user_id, m.status, m.scheduled_send_time, m.occasion_date, u.timezone
             FROM messages m JOIN users u ON u.id = m.user_id"""
    )
    with engine().connect() as connection:
        return {
            user_id: (status, f"{at.astimezone(ZoneInfo(zone)):%H:%M}", day.isoformat())
            for user_id, status, at, day, zone in connection.execute(query)
        }


def test_a_new_send_time_moves_pending_rows_and_leaves_queued_ones(send_time, caplog):
    users = {zone: add_user(zone) for zone in ZONES}
    send_time("13:33")
    assert jobs.plan_job(NOW) == {"planned": 4}
    with transaction() as session:  # Tokyo's job is on the broker already: QUEUED, it stays
        (claimed,) = messages.claim_due(
            session,
            NOW,
            lead_s=86_400,
            catch_up_hours=48,
            limit=10,
            user_ids=[users["Asia/Tokyo"]],
        )
    send_time("13:37")
    with caplog.at_level(logging.INFO, logger="bday.scheduling.jobs"):
        result = jobs.plan_job(NOW + timedelta(minutes=1))
    assert result == {"planned": 0, "moved": 3, "cancelled": 0}
    assert MOVED in caplog.messages and "plan: 0 new row(s)" in caplog.messages
    rows = planned()
    assert rows[users["Asia/Tokyo"]] == ("QUEUED", "13:33", "2027-03-05")
    for zone in ZONES[1:]:
        assert rows[users[zone]] == ("PENDING", "13:37", "2027-03-05"), zone
    assert jobs.plan_job(NOW + timedelta(minutes=2)) == {"planned": 0}  # nothing left to move


def test_a_row_moved_earlier_is_due_at_once_and_one_owed_only_later_is_cancelled(send_time):
    tokyo = ZoneInfo("Asia/Tokyo")
    at = lambda hh, mm: datetime(2027, 3, 5, hh, mm, tzinfo=tokyo).astimezone(UTC)  # noqa: E731
    long_known = add_user("Asia/Tokyo")
    newcomer = add_user("Asia/Tokyo", owed_from=at(13, 35))  # came between 13:33 and 13:37
    send_time("13:37")
    assert jobs.plan_job(at(13, 36)) == {"planned": 2}
    send_time("13:33")
    result = jobs.plan_job(at(13, 36) + timedelta(seconds=30))
    assert result == {"planned": 0, "moved": 1, "cancelled": 1}
    rows = planned()
    # 13:33 has passed: the row is due now (late, never early); enqueue takes it next minute
    assert rows[long_known] == ("PENDING", "13:33", "2027-03-05")
    assert rows[newcomer] == ("CANCELLED", "13:37", "2027-03-05")  # owed nothing at 13:33
    with transaction() as session:
        due = messages.claim_due(
            session, at(13, 36) + timedelta(seconds=40), lead_s=70, catch_up_hours=48, limit=10
        )
    assert len(due) == 1


def test_the_end_of_a_dst_gap_is_not_taken_for_a_changed_send_time(send_time):
    new_york = add_user("America/New_York", birthday=date(1990, 3, 14))
    send_time("02:30")  # does not exist in New York on 2027-03-14: 03:00 EDT is the instant
    now = datetime(2027, 3, 14, 0, 0, tzinfo=UTC)
    assert jobs.plan_job(now) == {"planned": 1}
    assert planned()[new_york] == ("PENDING", "03:00", "2027-03-14")
    assert jobs.plan_job(now + timedelta(minutes=1)) == {"planned": 0}
    assert planned()[new_york] == ("PENDING", "03:00", "2027-03-14")


def test_a_catch_up_is_skipped_when_a_plan_with_the_same_settings_just_started(send_time):
    add_user("Europe/London")
    send_time("13:33")
    assert jobs.plan_job(NOW, requested_at=NOW) == {"planned": 1}
    later = NOW + timedelta(seconds=5)
    assert jobs.plan_job(later, requested_at=later) == {"planned": 0, "skipped": True}
    assert jobs.plan_job(later) == {"planned": 0}  # the hourly plan always runs
    stale = NOW + timedelta(minutes=3)  # asked for long after the last plan started: runs
    assert jobs.plan_job(stale, requested_at=stale) == {"planned": 0}
    send_time("13:37")  # a start with another SEND_TIME must re-plan, however recent the last
    result = jobs.plan_job(stale + timedelta(seconds=1), requested_at=stale)
    assert result == {"planned": 0, "moved": 1, "cancelled": 0}


def test_two_catch_ups_at_once_plan_once(send_time):
    add_user("Europe/London")
    send_time("13:33")
    gate = threading.Barrier(2)
    results: list[dict] = []

    def catch_up() -> None:
        gate.wait()
        results.append(jobs.plan_job(NOW + timedelta(seconds=1), requested_at=NOW))

    threads = [threading.Thread(target=catch_up) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results, key=len) == [{"planned": 1}, {"planned": 0, "skipped": True}]


def test_a_row_at_another_instant_stays_where_it_is_unless_send_time_changed_from_it(send_time):
    """Rows a test, bench or operator put at any instant are not SEND_TIME's to move: only a
    change of SEND_TIME moves rows, and only those planned at the one before (an e2e run
    found a row planted 3 s ahead moved to 09:00 of that day by a worker's start-up plan)."""
    send_time("13:33")
    assert jobs.plan_job(NOW) == {"planned": 0}  # records the SEND_TIME plans run with
    user = add_user("Europe/London", birthday=date(1990, 6, 1))
    odd = factories.message_row(user, NOW + timedelta(hours=2, seconds=3))
    with transaction() as session:
        factories.insert(session, messages=[odd])
    assert jobs.plan_job(NOW + timedelta(minutes=1)) == {"planned": 0}
    send_time("13:37")
    assert jobs.plan_job(NOW + timedelta(minutes=2)) == {"planned": 0}
    assert planned()[user] == ("PENDING", "03:00", "2027-03-05")
