"""The shared row builders make rows the schema accepts, and bench's loaders built on them load
what they say (bench and demo seed through bday.devtools.factories like the tests do)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import text

from bday.devtools import factories
from bday.devtools.bench import seeding
from bday.store.db import engine, transaction
from bday.store.models import Status

pytestmark = pytest.mark.usefixtures("database")

AT = datetime(2027, 3, 5, 9, 0, tzinfo=UTC)


def count(sql: str) -> int:
    with engine().connect() as connection:
        return connection.execute(text(sql)).scalar_one()


def test_built_rows_insert_and_carry_the_application_key():
    user = factories.user_row("Grace", birthday=AT.date().replace(year=1990))
    message = factories.message_row(user["id"], AT, status=Status.QUEUED)
    with transaction() as session:
        factories.insert(session, [user], [message])
    assert message["idempotency_key"] == f"{user['id']}:BIRTHDAY:2027-03-05"
    assert count("SELECT count(*) FROM messages WHERE status = 'QUEUED'") == 1


def test_bench_loads_due_messages_and_users_through_the_builders():
    seeding.insert_due(3, AT)
    seeding.copy_users(5)
    assert count("SELECT count(*) FROM messages WHERE status = 'PENDING'") == 3
    assert count("SELECT count(*) FROM users") == 8
    assert count("SELECT count(DISTINCT email) FROM users") == 8


def test_born_on_gives_every_day_of_a_leap_year_a_birth_date_on_the_same_month_and_day():
    day = date(2028, 1, 1)
    while day.year == 2028:
        born = factories.born_on(day)
        assert (born.month, born.day) == (day.month, day.day) and born.year < 2000
        day += timedelta(days=1)
