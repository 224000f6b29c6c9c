"""Builders for `users` and `messages` rows: the tests, `bday bench` and `bday demo` make their
data here instead of each spelling out the columns (they did, in six places).

A row is a plain dict of column values, so the same builder feeds an ORM bulk insert
(`insert`), psycopg parameters (`insert_sql`) and COPY (`as_tuple`). Statuses are `Status`
values, kinds `Kind` values, and the idempotency key is the application's own.
Seeding only: state changes of real messages go through `bday.store.messages`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import insert as insert_into
from sqlalchemy.orm import Session

from bday.core.occasions import Kind
from bday.store.models import Message, Status, User, idempotency_key

LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)  # owed_from: the user existed before any occasion


def born_on(day: date) -> date:
    """A birth (or hire) date falling on `day`'s month and day, in 1992: a leap year, so any day
    of the calendar has one (1990 has no Feb 29)."""
    return day.replace(year=1992)


USER_COLUMNS = (
    "id",
    "first_name",
    "last_name",
    "email",
    "birthday",
    "anniversary",
    "timezone",
    "birthday_owed_from",
    "anniversary_owed_from",
)
MESSAGE_COLUMNS = (
    "id",
    "user_id",
    "message_type",
    "status",
    "occasion_date",
    "scheduled_send_time",
    "idempotency_key",
)


def user_row(
    first_name: str = "Ada",
    last_name: str = "Test",
    *,
    email: str | None = None,
    birthday: date = date(1990, 1, 1),
    anniversary: date | None = None,
    timezone: str = "UTC",
    owed_from: datetime = LONG_AGO,
    user_id: uuid.UUID | None = None,
    **columns: Any,
) -> dict[str, Any]:
    """A live user owed every occasion after `owed_from`; a unique email unless one is given."""
    user_id = user_id or uuid.uuid4()
    return {
        "id": user_id,
        "first_name": first_name,
        "last_name": last_name,
        "email": email or f"{first_name.lower()}-{user_id.hex}@example.com",
        "birthday": birthday,
        "anniversary": anniversary,
        "timezone": timezone,
        "birthday_owed_from": owed_from,
        "anniversary_owed_from": owed_from,
        **columns,
    }


def message_row(
    user_id: uuid.UUID,
    at: datetime,
    *,
    status: Status = Status.PENDING,
    kind: Kind = Kind.BIRTHDAY,
    occasion_date: date | None = None,
    **columns: Any,
) -> dict[str, Any]:
    """A message of `user_id` scheduled at `at` (its local date defaults to `at`'s UTC date)."""
    local = occasion_date or at.date()
    return {
        "id": uuid.uuid4(),
        "user_id": user_id,
        "message_type": Kind(kind).value,
        "status": Status(status).value,
        "occasion_date": local,
        "scheduled_send_time": at,
        "idempotency_key": idempotency_key(user_id, kind, local),
        **columns,
    }


def insert(
    session: Session,
    users: Sequence[dict[str, Any]] = (),
    messages: Sequence[dict[str, Any]] = (),
) -> None:
    """Bulk-insert rows made above (users first: messages reference them)."""
    if users:
        session.execute(insert_into(User), list(users))
    if messages:
        session.execute(insert_into(Message), list(messages))


def insert_sql(table: str, row: dict[str, Any]) -> str:
    """`INSERT INTO table (...) VALUES (%(col)s, ...)` for psycopg with `row` as parameters."""
    names = ", ".join(row)
    values = ", ".join(f"%({name})s" for name in row)
    return f"INSERT INTO {table} ({names}) VALUES ({values})"


def as_tuple(row: dict[str, Any], columns: Iterable[str]) -> tuple[Any, ...]:
    """`row`'s values in `columns` order (for COPY)."""
    return tuple(row[name] for name in columns)
