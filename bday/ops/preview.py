"""`bday preview`: who is owed a greeting on a date, and at which instant, written nowhere.

It runs the planner's own arithmetic (`planner.owed_occasions`) over a window wide enough for
every zone, keeps the occasions whose *local* date is the one asked for, and reads (never
writes) the status of any row already planned for them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import select

from bday.config import get_settings
from bday.core.occasions import Kind, zone
from bday.core.templates import placeholder_values, render
from bday.scheduling import planner
from bday.store import messages
from bday.store.db import transaction
from bday.store.models import User, idempotency_key
from bday.users.fields import clean_timezone

# The local date D is D in some zone from D 00:00 at UTC+14 to D 24:00 at UTC-12.
_MARGIN = timedelta(hours=16)


@dataclass
class Owed:
    user_id: str
    name: str
    message_type: str
    timezone: str
    send_at_utc: datetime
    send_at_local: datetime
    planned: str | None  # the status of its row, if planned already
    subject: str = ""  # the words the greeting will carry (the user's language's template)
    text: str = ""


@dataclass
class Preview:
    day: date
    owed: list[Owed] = field(default_factory=list)

    def by_instant(self) -> list[tuple[datetime, int]]:
        return sorted(Counter(item.send_at_utc for item in self.owed).items())

    def as_json(self) -> dict[str, Any]:
        return {
            "date": self.day.isoformat(),
            "owed": [
                {
                    **vars(item),
                    "send_at_utc": _iso(item.send_at_utc),
                    "send_at_local": _iso(item.send_at_local),
                }
                for item in self.owed
            ],
            "by_instant": [{"at": _iso(at), "count": n} for at, n in self.by_instant()],
        }


def preview(day: date, zone_name: str | None = None) -> Preview:
    """Occasions owed on local date `day` (optionally only users in `zone_name`), by instant.

    Raises `UserInputError` for an unknown zone.
    """
    wanted_zone = clean_timezone(zone_name) if zone_name is not None else None
    settings = get_settings()
    midnight = datetime.combine(day, time(), UTC)
    window = planner.Window(midnight - _MARGIN, midnight + timedelta(days=1) + _MARGIN)
    with transaction() as session:
        owed = [
            (user_id, occasion)
            for user_id, occasion in planner.owed_occasions(session, window, settings)
            if occasion.local_date == day
        ]
        users = _users(session, [user_id for user_id, _ in owed])
        keys = [idempotency_key(u, o.kind, o.local_date) for u, o in owed]
        planned = messages.live_status_by_key(session, keys) if keys else {}
    result = Preview(day)
    for (user_id, occasion), key in zip(owed, keys, strict=True):
        user = users[user_id]
        if wanted_zone is not None and user.timezone != wanted_zone:
            continue
        original = user.birthday if occasion.kind is Kind.BIRTHDAY else user.anniversary
        values = placeholder_values(
            occasion.kind, user.first_name, user.last_name, occasion.local_date, original
        )
        words = render(settings.catalogue.pick(occasion.kind, user.locale), values)
        result.owed.append(
            Owed(
                str(user_id),
                f"{user.first_name} {user.last_name}",
                occasion.kind.value,
                user.timezone,
                occasion.send_at,
                occasion.send_at.astimezone(zone(user.timezone)),
                planned.get(key),
                words.subject,
                words.text,
            )
        )
    result.owed.sort(key=lambda item: (item.send_at_utc, item.message_type, item.user_id))
    return result


def _users(session, ids: list) -> dict:
    found = {}
    for start in range(0, len(ids), 5000):
        chunk = ids[start : start + 5000]
        found.update(
            {user.id: user for user in session.scalars(select(User).where(User.id.in_(chunk)))}
        )
    return found


def _iso(instant: datetime) -> str:
    return instant.isoformat()
