"""Users: create, update, soft-delete and read, validating every field.

Bad input raises `UserInputError(field, problem)` before anything is written; its message is
one line naming the field. Each write commits, then calls the matching hook in `bday.users.hooks`
(hooks publish to the broker, which must only ever see committed rows).
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Any

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from bday.core.occasions import is_known_zone, zone
from bday.store.db import transaction
from bday.store.models import User
from bday.users import hooks
from bday.users.errors import UserInputError, UserNotFound, parse_user_id

NAME_MAX = 100
EMAIL_MAX = 320
EARLIEST_YEAR = 1900
FIELDS = ("first_name", "last_name", "email", "birthday", "timezone", "anniversary")


def create_user(
    *,
    first_name: str,
    last_name: str,
    email: str,
    birthday: date | str,
    timezone: str,
    anniversary: date | str | None = None,
) -> uuid.UUID:
    """Validate and store a new user, plan their greetings, and return the new id.

    Raises `UserInputError` for any invalid field, including an email already used by a live
    user. Nothing is written when it raises.
    """
    now = _now()
    values = clean_user_fields(
        dict(
            first_name=first_name,
            last_name=last_name,
            email=email,
            birthday=birthday,
            timezone=timezone,
            anniversary=anniversary,
        ),
    )
    user = User(
        id=uuid.uuid4(),
        **values,
        birthday_owed_from=now,
        anniversary_owed_from=now,
        created_at=now,
        updated_at=now,
    )
    with _unique_email(), transaction() as session:
        session.add(user)
    hooks.on_user_created(user.id)
    return user.id


def update_user(user_id: uuid.UUID | str, **changes: Any) -> None:
    """Change some fields of a live user; re-plan their greetings if a date or zone changed.

    Raises `UserNotFound` for an unknown or deleted id and `UserInputError` for an invalid
    or unknown field; nothing is written when it raises.
    """
    unknown = sorted(set(changes) - set(FIELDS))
    if unknown:
        raise UserInputError(unknown[0], "not a user field")
    if not changes:
        return
    user_id = parse_user_id(user_id)
    now = _now()
    with _unique_email(), transaction() as session:
        user = _live(session, user_id)
        current = {name: getattr(user, name) for name in FIELDS}
        _apply(user, clean_user_fields({**current, **changes}), now)
    hooks.on_user_updated(user_id)


def delete_user(user_id: uuid.UUID | str) -> None:
    """Soft-delete a live user and cancel their unsent greetings. Raises `UserNotFound`."""
    user_id = parse_user_id(user_id)
    with transaction() as session:
        _live(session, user_id).deleted_at = _now()
    hooks.on_user_deleted(user_id)


def get_user(user_id: uuid.UUID | str) -> User:
    """The live user with this id. Raises `UserNotFound`."""
    user_id = parse_user_id(user_id)
    with transaction() as session:
        return _live(session, user_id)


def list_users(*, limit: int | None = None, offset: int = 0) -> list[User]:
    """Live users, oldest first."""
    query = (
        select(User)
        .where(User.deleted_at.is_(None))
        .order_by(User.created_at, User.id)
        .offset(offset)
        .limit(limit)
    )
    with transaction() as session:
        return list(session.scalars(query))


def count_users() -> int:
    with transaction() as session:
        return session.scalar(
            select(func.count()).select_from(User).where(User.deleted_at.is_(None))
        )


# --- validation -----------------------------------------------------------------------------


def clean_user_fields(values: dict[str, Any], today: date | None = None) -> dict[str, Any]:
    """Validated, normalised copies of all user fields. Raises `UserInputError`."""
    tz = clean_timezone(values.get("timezone"))
    today = today or datetime.now(zone(tz)).date()
    return {
        "first_name": clean_name("first_name", values.get("first_name")),
        "last_name": clean_name("last_name", values.get("last_name")),
        "email": clean_email(values.get("email")),
        "timezone": tz,
        "birthday": clean_date("birthday", values.get("birthday"), latest=today),
        "anniversary": (
            None
            if values.get("anniversary") in (None, "")
            else clean_date("anniversary", values["anniversary"])
        ),
    }


def clean_name(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise UserInputError(field, "is required")
    name = unicodedata.normalize("NFC", value.strip())
    if not name:
        raise UserInputError(field, "must not be empty")
    if len(name) > NAME_MAX:
        raise UserInputError(field, f"must be at most {NAME_MAX} characters (got {len(name)})")
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in name):
        raise UserInputError(field, "must not contain control characters")
    return name


def clean_email(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UserInputError("email", "is required")
    if len(value) > EMAIL_MAX:
        raise UserInputError("email", f"must be at most {EMAIL_MAX} characters")
    try:
        checked = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise UserInputError("email", f"is not a valid address ({_one_line(exc)})") from None
    return checked.normalized.lower()


def clean_timezone(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UserInputError("timezone", "is required (an IANA name such as Europe/London)")
    if not is_known_zone(value.strip()):
        raise UserInputError("timezone", f"unknown IANA time zone {value.strip()!r}")
    return value.strip()


def clean_date(field: str, value: Any, latest: date | None = None) -> date:
    parsed = _parse_date(field, value)
    if parsed.year < EARLIEST_YEAR:
        raise UserInputError(field, f"must not be before {EARLIEST_YEAR}")
    if latest is not None and parsed > latest:
        raise UserInputError(field, f"{parsed.isoformat()} is in the future")
    return parsed


def _parse_date(field: str, value: Any) -> date:
    if isinstance(value, datetime):
        raise UserInputError(field, "must be a date, not a date and time")
    if isinstance(value, date):
        return value
    if not isinstance(value, str) or not value.strip():
        raise UserInputError(field, "is required (YYYY-MM-DD)")
    text = value.strip()
    try:
        if _ISO_DATE.match(text):
            return date.fromisoformat(text)
    except ValueError:
        pass
    raise UserInputError(field, f"{text!r} is not a real date (YYYY-MM-DD)")


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


# --- internals --------------------------------------------------------------------------------


def _apply(user: User, values: dict[str, Any], now: datetime) -> None:
    zone_changed = values["timezone"] != user.timezone
    if zone_changed or values["birthday"] != user.birthday:
        user.birthday_owed_from = now
    if zone_changed or values["anniversary"] != user.anniversary:
        user.anniversary_owed_from = now
    for name, value in values.items():
        setattr(user, name, value)
    user.updated_at = now


def _live(session, user_id: uuid.UUID) -> User:
    user = session.get(User, user_id)
    if user is None or user.deleted_at is not None:
        raise UserNotFound(user_id)
    return user


@contextmanager
def _unique_email():
    """Turn the live-email unique index's refusal into a field error."""
    try:
        yield
    except IntegrityError as exc:
        if "uq_users_email_live" in str(exc):
            raise UserInputError("email", "is already used by another user") from None
        raise


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _now() -> datetime:
    return datetime.now(UTC)
