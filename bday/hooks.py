"""Hooks: what happens to a user's greetings when the user changes.

Each hook writes message rows in its own transaction and commits before anything else, so a
job can never reference a row that is not there yet. Hooks never call the email service.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

from bday import planner
from bday.config import get_settings
from bday.db import transaction

log = logging.getLogger(__name__)


def on_user_created(user_id: uuid.UUID) -> int:
    """Plan the new user's owed greetings in the planning window; returns rows planned."""
    return _replan(user_id)


def on_user_updated(user_id: uuid.UUID) -> int:
    """Cancel greetings the change made wrong, plan the right ones; returns rows planned."""
    return _replan(user_id)


def on_user_deleted(user_id: uuid.UUID) -> int:
    """Cancel every unsent greeting of a deleted user; returns rows cancelled."""
    with transaction() as session:
        return planner.cancel_stale(session, user_id, _now())


def _replan(user_id: uuid.UUID) -> int:
    settings = get_settings()
    now = _now()
    with transaction() as session:
        cancelled = planner.cancel_stale(session, user_id, now, settings)
        planned = planner.plan(session, planner.Window.around(now, settings), settings, [user_id])
    log.info("user %s: %d greeting(s) planned, %d cancelled", user_id, planned, cancelled)
    return planned


def _now() -> datetime:
    return datetime.now(UTC)
