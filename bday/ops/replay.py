"""Replay FAILED messages (the seed's Step 9): reset their retries and publish them again."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from bday.config import get_settings
from bday.scheduling import dispatch
from bday.store.db import transaction


@dataclass
class ReplayResult:
    selected: list[uuid.UUID] = field(default_factory=list)
    too_old: list[uuid.UUID] = field(default_factory=list)
    published: int = 0


_FAILED = text(
    """
    SELECT id, scheduled_send_time FROM messages
     WHERE status = 'FAILED'
       AND (CAST(:since AS timestamptz) IS NULL OR failed_at >= CAST(:since AS timestamptz))
       AND (CAST(:type AS text) IS NULL OR message_type = CAST(:type AS text))
     ORDER BY scheduled_send_time
     LIMIT :limit
     FOR UPDATE SKIP LOCKED
    """
)
_RESET = text(
    """UPDATE messages SET retry_count = 0, failure_reason = NULL, send_deadline = :deadline
        WHERE id = ANY(:ids) AND status = 'FAILED'"""
)


def replay_failed(
    *,
    since: timedelta | None = None,
    message_type: str | None = None,
    limit: int | None = None,
    dry_run: bool = False,
    force: bool = False,
    now: datetime | None = None,
) -> ReplayResult:
    """Re-queue FAILED messages (oldest first), resetting their retry counts.

    Messages more than CATCH_UP_HOURS late are refused (listed in `too_old`) unless `force`,
    which gives them a fresh CATCH_UP_HOURS to be sent in. With `dry_run` nothing changes.
    """
    settings, now = get_settings(), now or datetime.now(UTC)
    cutoff = now - timedelta(hours=settings.catch_up_hours)
    result = ReplayResult()
    with transaction() as session:
        rows = session.execute(
            _FAILED, {"since": now - since if since else None, "type": message_type, "limit": limit}
        ).all()
        for row in rows:
            (
                result.too_old
                if row.scheduled_send_time < cutoff and not force
                else result.selected
            ).append(row.id)
        if dry_run or not result.selected:
            return result
        deadline = now + timedelta(hours=settings.catch_up_hours) if force else None
        session.execute(_RESET, {"ids": result.selected, "deadline": deadline})
        jobs = dispatch.reissue(session, result.selected, ("FAILED",), now)
    result.published = dispatch.publish_or_release(jobs)
    return result


def parse_age(value: str) -> timedelta:
    """'24h', '90m', '2d', '45s' -> timedelta. Raises ValueError for anything else."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    value = value.strip().lower()
    if len(value) < 2 or value[-1] not in units or not value[:-1].isdigit():
        raise ValueError(f"expected a duration such as 24h, 90m or 2d, got {value!r}")
    return timedelta(**{units[value[-1]]: int(value[:-1])})
