"""A fanned-out plan seen from outside: ask the workers for one, wait for its end, check that
every owed occasion has exactly one live row."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

from bday.broker.app import app
from bday.config import get_settings
from bday.devtools import factories
from bday.devtools.bench.seeding import ZONES_SAMPLE, raw_connection
from bday.scheduling import planner
from bday.store.db import engine
from tests.harness.stack import wait_until


def owed_users(count: int, seed: int = 5) -> None:
    """`count` users (COPY) born within a day of today, across the world's zones: about one
    greeting each in the plan's window, a third with an anniversary too."""
    rng, today = random.Random(seed), datetime.now(UTC).date()

    def near(year: int) -> date:
        day = today + timedelta(days=rng.randrange(-1, 2))
        return day.replace(year=year) if (day.month, day.day) != (2, 29) else date(year, 3, 1)

    with raw_connection() as raw:
        with raw.cursor().copy(
            f"COPY users ({', '.join(factories.USER_COLUMNS)}) FROM STDIN"
        ) as copy:
            for index in range(count):
                row = factories.user_row(
                    f"U{index}",
                    "Plan",
                    birthday=near(1980 + index % 30),
                    anniversary=near(2010 + index % 10) if index % 3 == 0 else None,
                    timezone=rng.choice(ZONES_SAMPLE),
                )
                copy.write_row(factories.as_tuple(row, factories.USER_COLUMNS))
        raw.commit()


def request_plan() -> datetime:
    """Publish the hourly plan's job, as beat does; returns when it was asked for."""
    asked = datetime.now(UTC)
    app.send_task("bday.tasks.plan")
    return asked


def plan_detail() -> dict:
    with engine().connect() as connection:
        detail = connection.execute(
            text("SELECT detail FROM heartbeats WHERE name = 'plan'")
        ).scalar()
    return detail or {}


def started_since(since: datetime) -> dict:
    detail = plan_detail()
    started = detail.get("started_at")
    return detail if started and datetime.fromisoformat(started) >= since else {}


def wait_plan_ended(since: datetime, timeout: float) -> dict:
    """The heartbeat of a plan started since `since` once it records its end."""
    return wait_until(
        lambda: (d := started_since(since)) and "ended_at" in d and d, timeout, "the plan's end"
    )


def duplicates() -> int:
    """Live rows beyond one per occasion (user, type, local date)."""
    with engine().connect() as connection:
        return connection.execute(
            text(
                "SELECT count(*) - count(DISTINCT (user_id, message_type, occasion_date)) "
                "FROM messages WHERE status <> 'CANCELLED'"
            )
        ).scalar_one()


def missed(started_at: str) -> int:
    """Occasions of the plan's window a plan in one process would still write (rolled back)."""
    now = datetime.fromisoformat(started_at)
    with Session(engine()) as session:
        rows = planner.plan(session, planner.Window.around(now, get_settings()), get_settings())
        session.rollback()
    return rows


def live_rows() -> int:
    with engine().connect() as connection:
        return connection.execute(
            text("SELECT count(*) FROM messages WHERE status <> 'CANCELLED'")
        ).scalar_one()
