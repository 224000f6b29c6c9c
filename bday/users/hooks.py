"""Hooks: what happens to a user's greetings when the user changes or an occasion is announced.

Each hook commits the message rows it writes before it publishes a job for them, so a job
never names a row that is not there yet. Rows due now are then claimed and published as the
minute enqueue does (`dispatch.claim_and_publish`: the claim commits only once the broker holds
every job); an occasion hook's row is inserted and claimed in one transaction, so it is
published after that commit (`dispatch.publish_or_release`). A hook never calls the email
service itself (unless DIRECT_SEND_FALLBACK is on and RabbitMQ is unreachable: the seed's Step
11). A failed publish never raises into the caller: the row stays PENDING and the minute
enqueue job delivers it.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta

from bday.config import Settings, get_settings
from bday.core.occasions import Kind, Occasion, occasions_between, zone
from bday.scheduling import dispatch, planner
from bday.store import messages
from bday.store.db import transaction
from bday.store.messages import QueuedJob
from bday.store.models import Status, User, idempotency_key

log = logging.getLogger(__name__)

_LOOK_AHEAD = timedelta(days=367)
_BULK = 5000


def on_user_created(user_id: uuid.UUID) -> int:
    """Plan the new user's owed greetings and publish those due now; returns rows planned."""
    return _replan_and_dispatch(user_id)


def on_user_updated(user_id: uuid.UUID) -> int:
    """Cancel greetings the change made wrong, plan and publish the right ones."""
    return _replan_and_dispatch(user_id)


def on_user_deleted(user_id: uuid.UUID) -> int:
    """Cancel every unsent greeting of a deleted user; returns rows cancelled."""
    with transaction() as session:
        return planner.cancel_stale(session, user_id, _now())


def on_users_imported(user_ids: list[uuid.UUID]) -> int:
    """`on_user_created` for a bulk import, set-based: plan all, publish those due now."""
    if not user_ids:
        return 0
    settings, now = get_settings(), _now()
    planned = 0
    for start in range(0, len(user_ids), _BULK):
        chunk = user_ids[start : start + _BULK]
        with transaction() as session:
            planned += planner.plan(session, planner.Window.around(now, settings), settings, chunk)
        _queue_due(chunk, now, settings)
    return planned


def on_users_updated(user_ids: list[uuid.UUID]) -> tuple[int, int]:
    """`on_user_updated` for many users (an import with --update), a chunk per transaction:
    cancel what each change made wrong, plan the chunk set-based, publish what is due now.
    Returns (rows cancelled, rows planned)."""
    settings, now = get_settings(), _now()
    cancelled = planned = 0
    for start in range(0, len(user_ids), _BULK):
        chunk = user_ids[start : start + _BULK]
        with transaction() as session:
            for user_id in chunk:
                cancelled += planner.cancel_stale(session, user_id, now, settings)
            planned += planner.plan(session, planner.Window.around(now, settings), settings, chunk)
        _queue_due(chunk, now, settings)
    return cancelled, planned


def on_users_deleted(user_ids: list[uuid.UUID]) -> int:
    """`on_user_deleted` for many users (an import with --sync); returns rows cancelled."""
    now, cancelled = _now(), 0
    for start in range(0, len(user_ids), _BULK):
        with transaction() as session:
            cancelled += messages.cancel_unsent_of_users(
                session, user_ids[start : start + _BULK], now
            )
    return cancelled


def _queue_due(user_ids: list[uuid.UUID], now: datetime, settings: Settings) -> int:
    """Queue what these users are owed now (due within the enqueue lead), as the minute
    enqueue would, without waiting for it; returns rows claimed. At most two rows a user are
    due (one per type)."""
    claimed, unpublished = dispatch.claim_and_publish(
        now, settings, limit=max(100, 2 * len(user_ids)), user_ids=user_ids
    )
    _fall_back(unpublished, settings)
    return claimed


def on_birthday_hook(user_id: uuid.UUID | str) -> uuid.UUID | None:
    """Queue the user's birthday greeting (the seed's Step 5); returns the message id."""
    return _occasion_hook(user_id, Kind.BIRTHDAY)


def on_anniversary_hook(user_id: uuid.UUID | str) -> uuid.UUID | None:
    """Queue the user's work-anniversary greeting; None if they have no anniversary."""
    return _occasion_hook(user_id, Kind.ANNIVERSARY)


def _replan_and_dispatch(user_id: uuid.UUID) -> int:
    settings, now = get_settings(), _now()
    with transaction() as session:
        cancelled = planner.cancel_stale(session, user_id, now, settings)
        planned = planner.plan(session, planner.Window.around(now, settings), settings, [user_id])
    queued = _queue_due([user_id], now, settings)
    log.info(
        "user %s: %d greeting(s) planned, %d cancelled, %d queued",
        user_id,
        planned,
        cancelled,
        queued,
    )
    return planned


def _occasion_hook(user_id: uuid.UUID | str, kind: Kind) -> uuid.UUID | None:
    from bday.users.errors import UserNotFound, parse_user_id

    settings, now = get_settings(), _now()
    user_id = parse_user_id(user_id)
    with transaction() as session:
        user = session.get(User, user_id)
        if user is None or user.deleted_at is not None:
            raise UserNotFound(user_id)
        occasion = next_owed_occasion(user, kind, now, settings)
        if occasion is None:
            return None
        planner.insert_rows(session, [(user_id, occasion)])
        key = idempotency_key(user_id, kind, occasion.local_date)
        message_id = messages.live_id_by_key(session, key)
        assert message_id is not None  # inserted above, or already live
        jobs = messages.reissue(session, [message_id], (Status.PENDING,), now)
    _publish(jobs, settings)  # nothing to publish when the row was already queued or sent
    return message_id


def next_owed_occasion(
    user: User, kind: Kind, now: datetime, settings: Settings
) -> Occasion | None:
    """The user's earliest occasion of `kind` that is owed and not yet CATCH_UP_HOURS late."""
    original = user.birthday if kind is Kind.BIRTHDAY else user.anniversary
    if original is None or kind in user.opted_out():
        return None
    owed_from = user.birthday_owed_from if kind is Kind.BIRTHDAY else user.anniversary_owed_from
    for occasion in occasions_between(
        kind,
        original,
        zone(user.timezone),
        now - timedelta(hours=settings.catch_up_hours),
        now + _LOOK_AHEAD,
        send_time=settings.send_time,
        feb29_policy=settings.feb29_policy,
    ):
        if occasion.send_at > owed_from:
            return occasion
    return None


def _publish(jobs: list[QueuedJob], settings: Settings) -> None:
    _fall_back(dispatch.publish_or_release(jobs), settings)


def _fall_back(unpublished: list[QueuedJob], settings: Settings) -> None:
    """Jobs the broker did not take (their rows are PENDING again) are sent from here when
    DIRECT_SEND_FALLBACK is on; otherwise the next enqueue run publishes them."""
    if unpublished and settings.direct_send_fallback:
        _send_directly(unpublished)


def _send_directly(jobs: list[QueuedJob]) -> None:
    """DIRECT_SEND_FALLBACK: the broker is unreachable, so send what is due right here."""
    from bday.delivery.attempt import deliver
    from bday.delivery.sender import get_sender
    from bday.scheduling.jobs import get_breaker

    with transaction() as session:
        due = messages.due_pending(session, [job.message_id for job in jobs], _now())
    for message_id in due:
        outcome = deliver(
            str(message_id), None, sender=get_sender(), breaker=get_breaker(), via="direct"
        )
        log.warning("message %s sent directly (broker unreachable): %s", message_id, outcome.reason)


def _now() -> datetime:
    return datetime.now(UTC)
