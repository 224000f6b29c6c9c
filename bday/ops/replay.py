"""Replay FAILED messages (the seed's Step 9): reset their retries and publish them again."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from bday.config import get_settings
from bday.scheduling import dispatch
from bday.store import messages
from bday.store.db import transaction
from bday.store.models import Status


@dataclass
class ReplayResult:
    selected: list[uuid.UUID] = field(default_factory=list)
    too_old: list[uuid.UUID] = field(default_factory=list)
    published: int = 0


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
    `since` is a window back from now; None means no window, a zero or negative one is refused
    (it would otherwise read as "no filter").
    """
    if since is not None and since <= timedelta(0):
        raise ValueError(f"since must be a positive window, got {since}")
    settings, now = get_settings(), now or datetime.now(UTC)
    cutoff = now - timedelta(hours=settings.catch_up_hours)
    result = ReplayResult()
    with transaction() as session:
        rows = messages.failed_for_replay(
            session,
            since=now - since if since is not None else None,
            message_type=message_type,
            limit=limit,
        )
        for row in rows:
            (
                result.too_old
                if row.scheduled_send_time < cutoff and not force
                else result.selected
            ).append(row.id)
        if dry_run or not result.selected:
            return result
        deadline = now + timedelta(hours=settings.catch_up_hours) if force else None
        messages.reset_for_replay(session, result.selected, deadline=deadline)
        jobs = messages.reissue(session, result.selected, (Status.FAILED,), now)
    result.published = len(jobs) - len(dispatch.publish_or_release(jobs))
    return result


_AGE = re.compile(r"([0-9]+)([smhd])")  # ASCII digits only: int() also takes '²' and '٣'
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
MAX_AGE = timedelta(days=36_500)  # a century: older than any message, far inside datetime's range


def parse_age(value: str) -> timedelta:
    """'24h', '90m', '2d', '45s' -> a window of more than zero and at most MAX_AGE.

    Raises ValueError, naming the problem, for anything else: an empty or zero window would
    otherwise read as "no filter" and replay everything.
    """
    shown = repr(value if len(value) <= 40 else value[:37] + "...")
    match = _AGE.fullmatch(value.strip().lower())
    if not match:
        raise ValueError(f"expected digits 0-9 and a unit s, m, h or d (e.g. 24h, 2d), got {shown}")
    digits, unit = match[1].lstrip("0"), match[2]
    if not digits:
        raise ValueError(f"{shown} is an empty window (leave --since out to replay all)")
    # the length test first: int() of a 5,000-digit string is itself an error
    if len(digits) > 15 or int(digits) * _SECONDS[unit] > MAX_AGE.total_seconds():
        raise ValueError(f"{shown} is longer than {MAX_AGE.days} days")
    return timedelta(seconds=int(digits) * _SECONDS[unit])
