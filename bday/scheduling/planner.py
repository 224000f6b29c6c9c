"""Planning: turn users into PENDING message rows, set-based and idempotent.

`plan(session, start, end)` inserts a row for every owed occasion whose send instant lies in
[start, end). Candidate users come from the month-day expression indexes, so the cost follows
the number of occasions in the window, not the number of users; the exact arithmetic is
`bday.core.occasions`. Rows go in with `ON CONFLICT DO NOTHING` on the idempotency key, so running
the planner twice, from two beats at once, or from a hook and the beat, plans each occasion once.

The candidate users are read FOR SHARE: a user updated meanwhile waits for the plan's commit, so
the update's hook (which runs after it) sees and cancels any row the plan wrote from the old
data; an update committed first is what the plan reads. Without it a plan that read a user just
before an update committed its old occasion after the hook had looked: a stale row, sent.
A large plan runs in id ranges (`IdRange`, bday.scheduling.plan_ranges).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bday.config import Settings, get_settings
from bday.core.occasions import (
    Kind,
    Occasion,
    month_days_near,
    occasion_in_year,
    occasions_between,
    send_instant,
    zone,
)
from bday.store import messages
from bday.store.models import Status, User, idempotency_key, month_day

_INSERT_BATCH = 5000


@dataclass(frozen=True, slots=True)
class IdRange:
    """Users with `low <= id < high` (UUID order, as PostgreSQL compares them); None: unbounded."""

    low: uuid.UUID | None = None
    high: uuid.UUID | None = None

    def __contains__(self, user_id: object) -> bool:
        return (
            isinstance(user_id, uuid.UUID)
            and (self.low is None or self.low <= user_id)
            and (self.high is None or user_id < self.high)
        )


@dataclass(frozen=True, slots=True)
class Window:
    """[start, end) in UTC: the send instants a planning run covers."""

    start: datetime
    end: datetime

    @classmethod
    def around(cls, now: datetime, settings: Settings) -> Window:
        """What is still owed (up to CATCH_UP_HOURS late) and what falls due soon."""
        return cls(
            now - timedelta(hours=settings.catch_up_hours),
            now + timedelta(hours=settings.plan_ahead_hours),
        )


_SOURCES = {
    Kind.BIRTHDAY: (User.birthday, User.birthday_owed_from, User.birthday_opted_out_at),
    Kind.ANNIVERSARY: (User.anniversary, User.anniversary_owed_from, User.anniversary_opted_out_at),
}


def owed_occasions(
    session: Session,
    window: Window,
    settings: Settings,
    user_ids: Iterable[uuid.UUID] | None = None,
    id_range: IdRange | None = None,
) -> Iterator[tuple[uuid.UUID, Occasion]]:
    """(user id, occasion) for every owed occasion of a live user with its instant in `window`
    (only users in `user_ids`, and in `id_range`, when given).

    Owed means the user held that date and zone before the instant (docs/contract.md, behaviour 2)
    and has not opted out of that type.
    """
    keys = sorted(
        month_days_near(window.start, window.end, settings.send_time, settings.feb29_policy)
    )
    for kind, (date_column, owed_from_column, opted_out_column) in _SOURCES.items():
        query = select(User.id, date_column, User.timezone, owed_from_column).where(
            User.deleted_at.is_(None),
            opted_out_column.is_(None),
            month_day(date_column).in_(keys),
        )
        if user_ids is not None:
            query = query.where(User.id.in_(list(user_ids)))
        query = _within(query, id_range).with_for_update(read=True, of=User)
        for user_id, original, zone_name, owed_from in session.execute(query):
            assert original is not None  # the month-day index only holds users with the date
            for occasion in occasions_between(
                kind,
                original,
                zone(zone_name),
                window.start,
                window.end,
                send_time=settings.send_time,
                feb29_policy=settings.feb29_policy,
            ):
                if occasion.send_at > owed_from:
                    yield user_id, occasion


def _within(query: Any, id_range: IdRange | None) -> Any:
    if id_range is not None and id_range.low is not None:
        query = query.where(User.id >= id_range.low)
    if id_range is not None and id_range.high is not None:
        query = query.where(User.id < id_range.high)
    return query


def insert_rows(session: Session, owed: Iterable[tuple[uuid.UUID, Occasion]]) -> int:
    """Insert PENDING rows for `owed`, skipping occasions that already have a live row."""
    inserted = 0
    for batch in _batches((_row(user_id, occasion) for user_id, occasion in owed), _INSERT_BATCH):
        inserted += messages.insert_pending(session, batch)
    return inserted


def plan(
    session: Session,
    window: Window,
    settings: Settings | None = None,
    user_ids: Iterable[uuid.UUID] | None = None,
    id_range: IdRange | None = None,
) -> int:
    """Plan every owed occasion in `window` (optionally only for `user_ids`, or the users in
    `id_range`); rows inserted."""
    settings = settings or get_settings()
    return insert_rows(session, owed_occasions(session, window, settings, user_ids, id_range))


@dataclass(frozen=True, slots=True)
class Followed:
    """What `follow_send_time` did: rows moved to the current SEND_TIME, rows cancelled (not
    owed at it), and the local times (HH:MM) the changed rows had been planned at."""

    moved: int = 0
    cancelled: int = 0
    planned_at: tuple[str, ...] = ()


def follow_send_time(
    session: Session, now: datetime, settings: Settings, previous: time | None
) -> Followed:
    """SEND_TIME changed from `previous` (the last plan's): move the PENDING rows planned at
    `previous` to the current SEND_TIME, on the same local date. Nothing when it did not change
    (or no plan before is recorded): a row at another instant (a test's, bench's, a replay's)
    is never touched.

    Only PENDING rows move: nothing was published for them (a QUEUED row's job is on the broker,
    timed for the old instant, and stays). The claim checks the row's instant, so a moved row
    is never sent before its new one. A row whose new instant is not after its user's
    owed_from (the user came between the two) is owed nothing any more: cancelled.

    Cheap when nothing changed: PENDING rows are read grouped by (zone, instant), a few hundred
    groups, and only the rows of groups whose local time is not SEND_TIME are read one by one.
    """
    if previous is None or previous == settings.send_time:
        return Followed()
    off = [
        (zone_name, at)
        for zone_name, at, _count in messages.pending_instants(session)
        if _at_send_time(zone_name, at, previous)
        and not _at_send_time(zone_name, at, settings.send_time)
    ]
    if not off:
        return Followed()
    moves, not_owed, planned_at = [], [], set()
    for row in messages.pending_at(session, off):
        tz = zone(row.timezone)
        planned_at.add(f"{row.scheduled_send_time.astimezone(tz):%H:%M}")
        new_at = send_instant(row.occasion_date, tz, settings.send_time)
        if new_at > row.owed_from:
            moves.append((row.id, row.scheduled_send_time, new_at))
        else:
            not_owed.append((row.id, row.scheduled_send_time))
    return Followed(
        messages.move_pending(session, moves, now),
        messages.cancel_pending(session, not_owed, now),
        tuple(sorted(planned_at)),
    )


def _at_send_time(zone_name: str, at: datetime, send_time: time) -> bool:
    """Is `at` SEND_TIME on its local date in the zone (the end of a DST gap included)?"""
    tz = zone(zone_name)
    return send_instant(at.astimezone(tz).date(), tz, send_time) == at


def cancel_stale(
    session: Session, user_id: uuid.UUID, now: datetime, settings: Settings | None = None
) -> int:
    """Cancel the user's unsent rows that no longer match their date, zone or existence.

    A row is stale when the user is deleted or opted out of its type, its date was removed,
    or the occasion recomputed from the user's current data has another local date or
    instant. Only PENDING and QUEUED rows are touched: a SENDING row is already with the email
    service. Returns rows cancelled.
    """
    settings = settings or get_settings()
    user = session.get(User, user_id)
    rows = messages.unsent_of_user(session, user_id)
    stale = [row.id for row in rows if not _still_owed(user, row, settings)]
    return messages.cancel(session, stale, now) if stale else 0


def _still_owed(user: User | None, row, settings: Settings) -> bool:
    if user is None or user.deleted_at is not None:
        return False
    kind = Kind(row.message_type)
    if kind in user.opted_out():
        return False
    original = user.birthday if kind is Kind.BIRTHDAY else user.anniversary
    if original is None:
        return False
    expected = occasion_in_year(
        kind,
        original,
        row.occasion_date.year,
        zone(user.timezone),
        settings.send_time,
        settings.feb29_policy,
    )
    return expected is not None and (expected.local_date, expected.send_at) == (
        row.occasion_date,
        row.scheduled_send_time,
    )


def _row(user_id: uuid.UUID, occasion: Occasion) -> dict:
    return {
        "id": uuid.uuid4(),
        "user_id": user_id,
        "message_type": occasion.kind.value,
        "status": Status.PENDING.value,
        "occasion_date": occasion.local_date,
        "scheduled_send_time": occasion.send_at,
        "idempotency_key": idempotency_key(user_id, occasion.kind, occasion.local_date),
    }


def _batches(items: Iterable[dict], size: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
