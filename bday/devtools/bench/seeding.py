"""The bench's data, loaded by COPY on a raw psycopg connection: due messages for delivery,
users spread over zones and the year for planning, and old finished rows for retention."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

from bday.devtools import factories
from bday.store.models import FINISHED

ZONES_SAMPLE = [
    "UTC",
    "Europe/London",
    "Europe/Paris",
    "Asia/Tokyo",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Sydney",
    "Pacific/Auckland",
    "Pacific/Chatham",
    "America/New_York",
    "America/Los_Angeles",
    "America/St_Johns",
    "America/Sao_Paulo",
    "Africa/Lagos",
    "Pacific/Kiritimati",
    "Etc/GMT+12",
    "Asia/Shanghai",
    "Europe/Moscow",
]


@contextmanager
def raw_connection() -> Iterator[Any]:
    """The engine's underlying psycopg connection (COPY needs it), given back to the pool
    whatever happens (the pool rolls back what the caller has not committed)."""
    from bday.store.db import engine

    raw = engine().raw_connection()
    try:
        yield raw
    finally:
        raw.close()


def insert_due(count: int, at: datetime) -> None:
    """`count` users with one PENDING birthday message each, scheduled at `at` (COPY)."""
    # The occasion is `at`'s own date (a leap year holds every month-day). A birthday on
    # another day would be a second occasion: on the 29th-31st the old `min(day, 28)` made the
    # worker's start-up plan owe (and send) 2,000 catch-up greetings inside the measurement.
    birthday = date(1992, at.month, at.day)
    users = [factories.user_row(f"User{i}", "Bench", birthday=birthday) for i in range(count)]
    messages = [factories.message_row(user["id"], at) for user in users]
    with raw_connection() as raw:
        cursor = raw.cursor()
        _copy(cursor, "users", factories.USER_COLUMNS, users)
        _copy(cursor, "messages", factories.MESSAGE_COLUMNS, messages)
        raw.commit()


def _copy(
    cursor: Any, table: str, columns: tuple[str, ...], rows: Iterable[dict[str, Any]]
) -> None:
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(factories.as_tuple(row, columns))


def copy_users(count: int, seed: int = 42, due_share: float | None = None) -> None:
    """`count` users across all sampled zones, birthdays spread over the year, a third with an
    anniversary, loaded with COPY. With `due_share`, only that share of them may have an
    occasion in today's planning window (the rest get dates outside it)."""
    rng = random.Random(seed)
    near = _month_days_in_window() if due_share is not None else set()

    def users() -> Iterator[dict[str, Any]]:  # streamed: a million rows never sit in memory
        for index in range(count):
            avoid = near if due_share is not None and rng.random() >= due_share else set()
            birthday = _random_date(rng, date(1950, 1, 1), 55, avoid)
            anniversary = _random_date(rng, date(2000, 1, 1), 25, avoid) if index % 3 == 0 else None
            zone_name = rng.choice(ZONES_SAMPLE)
            yield factories.user_row(
                f"U{index}", "Plan", birthday=birthday, anniversary=anniversary, timezone=zone_name
            )

    with raw_connection() as raw:
        _copy(raw.cursor(), "users", factories.USER_COLUMNS, users())
        raw.commit()
        raw.cursor().execute("ANALYZE users")
        raw.commit()


def _random_date(rng: random.Random, start: date, years: int, avoid: set[int]) -> date:
    while True:
        day = start + timedelta(days=rng.randrange(years * 365))
        if day.month * 100 + day.day not in avoid:
            return day


def _month_days_in_window() -> set[int]:
    from bday.config import get_settings
    from bday.core.occasions import month_days_near
    from bday.scheduling.planner import Window

    settings = get_settings()
    window = Window.around(datetime.now(UTC), settings)
    return month_days_near(window.start, window.end, settings.send_time, settings.feb29_policy)


def old_finished(count: int, *, partitioned: bool = True) -> None:
    """`count` SENT/FAILED/CANCELLED rows of one user, 401 days to 9 years old (SQL), in the
    monthly partitions a deployment that ran all along would have (`partitioned=False`: in
    DEFAULT, where retention deletes them by row, as it did every row before partitioning)."""
    if partitioned:
        _old_months()
    user = factories.user_row("Old", "Rows")
    with raw_connection() as raw:
        cursor = raw.cursor()
        _copy(cursor, "users", factories.USER_COLUMNS, [user])
        finished = ", ".join(f"'{status.value}'" for status in FINISHED)
        cursor.execute(
            f"""INSERT INTO messages (id, user_id, message_type, status, occasion_date,
                                     scheduled_send_time, idempotency_key)
               SELECT gen_random_uuid(), %(user)s, 'BIRTHDAY',
                      (ARRAY[{finished}])[1 + i %% 3],
                      (now() - make_interval(days => 401 + i %% 3000))::date,
                      now() - make_interval(days => 401 + i %% 3000),
                      'old:' || i
                 FROM generate_series(1, %(count)s) i""",
            {"user": user["id"], "count": count},
        )
        raw.commit()
        cursor.execute("ANALYZE messages")
        raw.commit()


def _old_months() -> None:
    """The partitions of the months `old_finished` writes to, but the youngest: a month goes
    whole only once all of it is past MESSAGE_RETENTION_DAYS (400), so that month's rows are
    left in DEFAULT, where retention deletes them by row (about 1% of them)."""
    from bday.store import partitions
    from bday.store.db import transaction

    today = datetime.now(UTC).date()
    month = partitions.month_start(today - timedelta(days=401 + 2999))
    while partitions.add_months(month, 1) <= today - timedelta(days=400):
        with transaction() as session:
            partitions.create_month(session, month)
        month = partitions.add_months(month, 1)
