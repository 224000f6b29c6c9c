"""Per-user history: `bday messages list` and `bday messages show`, so support can answer
"did Ada get her greeting, and when?" without SQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from bday.store import messages
from bday.store.db import transaction
from bday.store.models import Status
from bday.users.api import find_user
from bday.users.errors import UserInputError

# What `show` prints, in order: every counter, timestamp and answer a row holds.
DETAIL = (
    "id",
    "user_id",
    "message_type",
    "status",
    "occasion_date",
    "scheduled_send_time",
    "idempotency_key",
    "attempts",
    "retry_count",
    "deferrals",
    "created_at",
    "queued_at",
    "next_attempt_at",
    "lease_expires_at",
    "send_deadline",
    "sent_at",
    "failed_at",
    "cancelled_at",
    "updated_at",
    "sent_via",
    "provider_status",
    "provider_response",
    "failure_reason",
    "last_error",
)
SUMMARY = ("id", "user_id", "message_type", "status", "scheduled_send_time", "sent_at", "attempts")


def list_messages(
    *,
    user: str | None = None,
    status: str | None = None,
    since: timedelta | None = None,
    limit: int = 100,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Rows newest first. Raises `UserNotFound` for an unknown user and `UserInputError` for
    an empty one or an unknown status."""
    # `is not None`: an empty --user (an unset shell variable) is refused, never "all users"
    user_id = find_user(user, include_deleted=True).id if user is not None else None
    wanted = parse_status(status) if status else None
    start = (now or datetime.now(UTC)) - since if since else None
    with transaction() as session:
        rows = messages.history(session, user_id=user_id, status=wanted, since=start, limit=limit)
    return [_plain(row, SUMMARY) for row in rows]


def show_message(message_id: str) -> dict[str, Any]:
    """Every field of one row. Raises `MessageNotFound`."""
    try:
        parsed = uuid.UUID(message_id.strip())
    except ValueError:
        raise MessageNotFound(message_id) from None
    with transaction() as session:
        row = messages.one(session, parsed)
    if row is None:
        raise MessageNotFound(message_id)
    return _plain(row, DETAIL)


class MessageNotFound(LookupError):
    def __init__(self, message_id: str):
        super().__init__(f"message {message_id} not found")


def parse_status(value: str) -> Status:
    try:
        return Status(value.strip().upper())
    except ValueError:
        choices = ", ".join(status.value for status in Status)
        raise UserInputError("status", f"{value!r} is not one of {choices}") from None


def _plain(row: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    """JSON-ready values: ids and instants as strings, numbers as numbers."""
    values = row._mapping
    return {name: _json(values[name]) for name in fields}


def _json(value: Any) -> Any:
    if value is None or isinstance(value, int | float | str):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)
