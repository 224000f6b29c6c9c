"""The planner against the real database, at fixed instants: which occasions a window plans,
that planning again plans nothing twice, and which rows a change makes stale."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import select, text

from bday.config import get_settings
from bday.devtools import factories
from bday.scheduling import planner
from bday.store import messages
from bday.store.db import transaction
from bday.store.models import Message, Status

pytestmark = pytest.mark.usefixtures("database")

NOW = datetime(2027, 3, 5, 6, 0, tzinfo=UTC)  # Tokyo 15:00, London 06:00, New York 01:00


def _user(birthday: date, zone: str = "Europe/London", **columns) -> dict:
    row = factories.user_row(birthday=birthday, timezone=zone, **columns)
    with transaction() as session:
        factories.insert(session, [row])
    return row


def _plan(now: datetime = NOW) -> int:
    with transaction() as session:
        return planner.plan(session, planner.Window.around(now, get_settings()))


def _rows() -> list[tuple]:
    with transaction() as session:
        found = session.execute(
            select(
                Message.user_id, Message.status, Message.occasion_date, Message.scheduled_send_time
            )
        )
        return sorted(tuple(row) for row in found)


def test_a_window_plans_each_owed_occasion_at_send_time_local_and_nothing_outside_it():
    london = _user(date(1990, 3, 5))
    tokyo = _user(date(1985, 3, 6), "Asia/Tokyo")  # tomorrow 09:00 JST = 00:00 UTC, in reach
    _user(date(1990, 7, 1))  # months away
    assert _plan() == 2
    assert _rows() == sorted(
        [
            (
                london["id"],
                Status.PENDING.value,
                date(2027, 3, 5),
                datetime(2027, 3, 5, 9, tzinfo=UTC),
            ),
            (
                tokyo["id"],
                Status.PENDING.value,
                date(2027, 3, 6),
                datetime(2027, 3, 6, 0, tzinfo=UTC),
            ),
        ]
    )


def test_planning_again_or_from_a_later_run_plans_nothing_twice():
    _user(date(1990, 3, 5))
    assert _plan() == 1
    assert _plan() == 0
    assert _plan(NOW + timedelta(hours=1)) == 0
    assert len(_rows()) == 1


def test_a_user_who_did_not_exist_before_the_instant_is_not_owed_it():
    _user(date(1990, 3, 4), owed_from=datetime(2027, 3, 4, 10, tzinfo=UTC))  # after 09:00 that day
    _user(date(1990, 3, 5), owed_from=NOW)  # before today's 09:00
    assert _plan() == 1  # the window reaches 48 hours back: Mar 4 09:00 is inside it
    assert [row[2] for row in _rows()] == [date(2027, 3, 5)]


def test_an_opted_out_type_is_not_planned():
    _user(date(1990, 3, 5), anniversary=date(2015, 3, 5), birthday_opted_out_at=NOW)
    assert _plan() == 1
    with transaction() as session:
        kinds = session.scalars(select(Message.message_type)).all()
    assert kinds == ["ANNIVERSARY"]


def test_a_cancelled_row_does_not_block_its_replacement():
    _user(date(1990, 3, 5))
    _plan()
    with transaction() as session:
        [row_id] = session.scalars(select(Message.id)).all()
        messages.cancel(session, [row_id], NOW)
    assert _plan() == 1
    statuses = sorted(row[1] for row in _rows())
    assert statuses == [Status.CANCELLED.value, Status.PENDING.value]


def test_a_zone_change_makes_the_planned_row_stale_and_only_that_row():
    user = _user(date(1990, 3, 5))
    other = _user(date(1990, 3, 5))
    _plan()
    with transaction() as session:
        session.execute(
            text("UPDATE users SET timezone = 'Asia/Tokyo' WHERE id = :id"), {"id": user["id"]}
        )
    with transaction() as session:
        assert planner.cancel_stale(session, user["id"], NOW) == 1
        assert planner.cancel_stale(session, other["id"], NOW) == 0
