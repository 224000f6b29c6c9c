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

# What `show` prints, in order: every counter, timestamp and answer a row holds, the status
# (the current state) first.
DETAIL = (
    "status",
    "id",
    "user_id",
    "message_type",
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
    "subject",
    "body",
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
    detail = _plain(row, DETAIL)
    current, earlier = split_failure(
        detail["status"], detail["failed_at"], detail["failure_reason"], detail["last_error"]
    )
    return {**detail, **current, "earlier_failure": earlier}


FAILURE_FIELDS = ("failed_at", "failure_reason", "last_error")


def split_failure(
    status: str, failed_at: Any, reason: str | None, error: str | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the failure fields as the row's current state, the same as history).

    The store keeps a row's latest failure (`failed_at`, `failure_reason`, `last_error`) after
    a replay, a retry or a later success: it says why a greeting went late. It is the current
    state only while the row is FAILED; otherwise it is history, and a view that showed it
    beside SENT would call a delivered greeting failed."""
    if status == Status.FAILED:
        return {"failed_at": failed_at, "failure_reason": reason, "last_error": error}, None
    cleared: dict[str, Any] = dict.fromkeys(FAILURE_FIELDS)
    if failed_at is None and reason is None and error is None:
        return cleared, None
    return cleared, {"at": failed_at, "reason": reason, "error": error}


def describe_earlier(earlier: dict[str, Any]) -> str:
    """`permanent at 2026-12-04T13:32:10+00:00 (HTTP 400: ...)`; a row retried without ever
    being FAILED has no time or reason, only the error it was retried after."""
    failed = f"{earlier['reason'] or 'failed'} at {earlier['at']}" if earlier["at"] else ""
    error = earlier["error"] or ""
    if failed and error:
        return f"{failed} ({error})"
    return failed or f"retried after {error}"


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
