"""Delivering one message: claim the row, ask the breaker, call the email service, record.

`deliver()` is plain Python (no Celery): it returns an `Outcome` saying what the task should do
next (nothing, retry after N seconds, defer until T, or dead-letter). Every state change is a
conditional UPDATE naming the legal previous states; an UPDATE that matches no row means another
worker or job got there first, which is normal.
"""

from __future__ import annotations

import enum
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from sqlalchemy.exc import DBAPIError

from bday.config import Settings, get_settings
from bday.core import retries
from bday.core.occasions import message_text
from bday.delivery.breaker import Breaker, Permit
from bday.delivery.sender import EmailSender, PermanentSendError, Receipt, TransientSendError
from bday.store.db import fast_autocommit
from bday.store.models import FailureReason
from bday.telemetry import metrics

log = logging.getLogger(__name__)


class Action(enum.Enum):
    DONE = "done"  # sent now, or nothing to do (already sent, cancelled, stale job)
    RETRY = "retry"  # transient failure: run again after `delay_s`, one retry spent
    DEFER = "defer"  # not yet (early, leased elsewhere, breaker open): run again, nothing spent
    DEAD_LETTER = "dead_letter"  # permanent failure, retries exhausted, expired, unknown id


@dataclass(frozen=True, slots=True)
class Outcome:
    action: Action
    reason: str
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Claimed:
    id: uuid.UUID
    message_type: str
    scheduled_send_time: datetime
    retry_count: int
    email: str
    first_name: str
    last_name: str
    user_deleted: bool
    send_deadline: datetime | None

    def deadline(self, settings: Settings) -> datetime:
        """After this instant the greeting is no longer sent (DESIGN.md: CATCH_UP_HOURS)."""
        return self.send_deadline or self.scheduled_send_time + timedelta(
            hours=settings.catch_up_hours
        )


_CLAIM = """
    UPDATE messages m
       SET status = 'SENDING', lease_expires_at = %(lease_until)s, attempts = m.attempts + 1,
           updated_at = %(now)s
      FROM users u
     WHERE m.id = %(id)s AND u.id = m.user_id
       AND (m.status IN ('PENDING', 'QUEUED')
            OR (m.status = 'SENDING' AND m.lease_expires_at < %(now)s))
       AND (CAST(%(token)s AS uuid) IS NULL OR m.dispatch_token IS NULL
            OR m.dispatch_token = CAST(%(token)s AS uuid))
       AND m.scheduled_send_time <= %(now)s
    RETURNING m.id, m.message_type, m.scheduled_send_time, m.retry_count,
              u.email, u.first_name, u.last_name, u.deleted_at IS NOT NULL, m.send_deadline
    """

_MARK_SENT = """UPDATE messages SET status = 'SENT', sent_at = %(now)s, updated_at = %(now)s,
                    lease_expires_at = NULL, provider_status = %(status)s,
                    provider_response = %(response)s, sent_via = %(via)s
              WHERE id = %(id)s"""

_FINISH = {
    "sent": _MARK_SENT + " AND status = 'SENDING'",
    # After a database outage: the row may be SENDING still, or taken back by recovery.
    "sent_late": _MARK_SENT + " AND status IN ('PENDING', 'QUEUED', 'SENDING')",
    "retry": (
        """UPDATE messages SET status = 'QUEUED', retry_count = retry_count + 1,
                  last_error = %(error)s, provider_status = %(status)s, updated_at = %(now)s,
                  next_attempt_at = %(next_at)s, lease_expires_at = NULL
            WHERE id = %(id)s AND status = 'SENDING'"""
    ),
    "failed": (
        """UPDATE messages SET status = 'FAILED', failed_at = %(now)s, updated_at = %(now)s,
                  failure_reason = %(reason)s, last_error = %(error)s, provider_status = %(status)s,
                  lease_expires_at = NULL
            WHERE id = %(id)s AND status IN ('PENDING', 'QUEUED', 'SENDING')"""
    ),
    "cancelled": (
        """UPDATE messages SET status = 'CANCELLED', cancelled_at = %(now)s, updated_at = %(now)s,
                  lease_expires_at = NULL
            WHERE id = %(id)s AND status IN ('PENDING', 'QUEUED', 'SENDING')"""
    ),
    # A failed probe: back to QUEUED without spending a retry (deferrals count instead).
    "probe_failed": (
        """UPDATE messages SET status = 'QUEUED', deferrals = deferrals + 1,
                  last_error = %(error)s, provider_status = %(status)s, updated_at = %(now)s,
                  next_attempt_at = %(next_at)s, lease_expires_at = NULL
            WHERE id = %(id)s AND status = 'SENDING'"""
    ),
    "deferred": (
        """UPDATE messages SET deferrals = deferrals + 1, next_attempt_at = %(next_at)s,
                  updated_at = %(now)s
            WHERE id = %(id)s AND status IN ('PENDING', 'QUEUED')"""
    ),
}


def _finish(kind: str, message_id: uuid.UUID, now: datetime, **values) -> int:
    params = {
        "id": message_id,
        "now": now,
        "status": None,
        "error": None,
        "reason": None,
        "response": None,
        "next_at": None,
        "via": "queue",
        **values,
    }
    with fast_autocommit() as connection:
        return connection.execute(_FINISH[kind], params, prepare=True).rowcount


def deliver(
    message_id: str,
    token: str | None,
    *,
    sender: EmailSender,
    breaker: Breaker,
    settings: Settings | None = None,
    now: datetime | None = None,
    via: str = "queue",
) -> Outcome:
    """Try to deliver message `message_id` once; say what should happen next.

    `via` is recorded on a sent row: `queue` from a worker, `direct` from the fallback path.
    """
    settings = settings or get_settings()
    now = now or datetime.now(UTC)
    try:
        row_id = uuid.UUID(str(message_id))
        token_id = uuid.UUID(str(token)) if token is not None else None
    except ValueError:
        return Outcome(Action.DEAD_LETTER, "malformed job: message id is not a UUID")
    permit = breaker.permit(now)
    if not permit.allowed:
        return _defer_for_breaker(row_id, permit, now)
    claimed = _claim(row_id, token_id, now, settings)
    if claimed is None:
        breaker.release(permit, now)
        return _why_not_claimed(row_id, token_id, now)
    return _attempt(claimed, permit, sender, breaker, settings, now, via)


def _claim(row_id, token_id, now, settings) -> Claimed | None:
    with fast_autocommit() as connection:
        row = connection.execute(
            _CLAIM,
            {
                "id": row_id,
                "token": token_id,
                "now": now,
                "lease_until": now + timedelta(seconds=settings.send_lease_s),
            },
            prepare=True,
        ).fetchone()
    return Claimed(*row) if row else None


def _attempt(
    claimed: Claimed,
    permit: Permit,
    sender: EmailSender,
    breaker: Breaker,
    settings: Settings,
    now: datetime,
    via: str,
) -> Outcome:
    if claimed.user_deleted:
        breaker.release(permit, now)
        _finish("cancelled", claimed.id, now)
        return Outcome(Action.DONE, "user deleted")
    if claimed.deadline(settings) < now:
        breaker.release(permit, now)
        _finish(
            "failed",
            claimed.id,
            now,
            reason=FailureReason.EXPIRED.value,
            error=f"more than {settings.catch_up_hours} h late",
        )
        metrics.record_failed(claimed.message_type, FailureReason.EXPIRED.value)
        return Outcome(Action.DEAD_LETTER, "expired")
    try:
        receipt = sender.send(
            email=claimed.email,
            message=message_text(claimed.message_type, claimed.first_name, claimed.last_name),
            idempotency_key=str(claimed.id),
        )
    except TransientSendError as exc:
        breaker.record_failure(permit, datetime.now(UTC), exc)
        if permit.is_probe:  # the service is still down: that is the outage, not this message
            return _after_failed_probe(claimed, exc, breaker)
        return _after_transient(claimed, exc, settings)
    except PermanentSendError as exc:
        breaker.record_success(permit, datetime.now(UTC))  # the service answered: it is up
        return _after_permanent(claimed, exc)
    breaker.record_success(permit, datetime.now(UTC))
    return _after_sent(claimed, receipt, via)


class UnrecordedDelivery(Exception):
    """The email service accepted the message but recording SENT failed (database away).

    `delivered` is what `record_delivered` needs later: the task carries it into its retry so
    the retry writes SENT instead of sending a second time.
    """

    def __init__(self, delivered: dict):
        super().__init__(f"message {delivered['id']} sent, not yet recorded")
        self.delivered = delivered


def record_delivered(delivered: dict) -> Outcome:
    """Write SENT for a delivery whose first recording failed (see UnrecordedDelivery)."""
    _finish(
        "sent_late",
        uuid.UUID(delivered["id"]),
        datetime.fromisoformat(delivered["at"]),
        status=delivered["status"],
        response=delivered["response"],
        via=delivered["via"],
    )
    log.info("message %s sent (recorded after a database outage)", delivered["id"])
    return Outcome(Action.DONE, "sent")


def _after_sent(claimed: Claimed, receipt: Receipt, via: str) -> Outcome:
    done = datetime.now(UTC)
    try:
        _finish("sent", claimed.id, done, status=receipt.status, response=receipt.body, via=via)
    except (psycopg.Error, DBAPIError) as exc:
        raise UnrecordedDelivery(
            {
                "id": str(claimed.id),
                "at": done.isoformat(),
                "status": receipt.status,
                "response": receipt.body,
                "via": via,
            }
        ) from exc
    metrics.record_sent(claimed.message_type, (done - claimed.scheduled_send_time).total_seconds())
    log.info(
        "message %s sent (%s, %.0f ms)", claimed.id, claimed.message_type, receipt.elapsed_s * 1000
    )
    return Outcome(Action.DONE, "sent")


def _after_transient(claimed: Claimed, exc: TransientSendError, settings: Settings) -> Outcome:
    now = datetime.now(UTC)
    if claimed.retry_count >= settings.queue_max_retries:
        _finish(
            "failed",
            claimed.id,
            now,
            reason=FailureReason.RETRIES_EXHAUSTED.value,
            error=str(exc),
            status=exc.status,
        )
        metrics.record_failed(claimed.message_type, FailureReason.RETRIES_EXHAUSTED.value)
        log.warning("message %s failed after %d retries: %s", claimed.id, claimed.retry_count, exc)
        return Outcome(Action.DEAD_LETTER, f"retries exhausted: {exc}")
    delay_s = retries.backoff_s(claimed.retry_count + 1, settings, retry_after_s=exc.retry_after_s)
    _finish(
        "retry",
        claimed.id,
        now,
        error=str(exc),
        status=exc.status,
        next_at=now + timedelta(seconds=delay_s),
    )
    metrics.record_retried(claimed.message_type)
    log.info(
        "message %s: transient failure (%s), retry %d in %.1f s",
        claimed.id,
        exc,
        claimed.retry_count + 1,
        delay_s,
    )
    return Outcome(Action.RETRY, str(exc), delay_s)


def _after_failed_probe(claimed: Claimed, exc: TransientSendError, breaker: Breaker) -> Outcome:
    now = datetime.now(UTC)
    snapshot = breaker.snapshot(fresh=True)
    wait_s = max(1.0, (snapshot.open_until - now).total_seconds()) if snapshot.open_until else 1.0
    _finish(
        "probe_failed",
        claimed.id,
        now,
        error=str(exc),
        status=exc.status,
        next_at=now + timedelta(seconds=wait_s),
    )
    metrics.record_deferred()
    log.info("message %s: probe failed (%s), breaker open for %.0f s", claimed.id, exc, wait_s)
    return Outcome(Action.DEFER, f"probe failed: {exc}", wait_s)


def _after_permanent(claimed: Claimed, exc: PermanentSendError) -> Outcome:
    _finish(
        "failed",
        claimed.id,
        datetime.now(UTC),
        reason=FailureReason.PERMANENT.value,
        error=str(exc),
        status=exc.status,
    )
    metrics.record_failed(claimed.message_type, FailureReason.PERMANENT.value)
    log.warning("message %s failed permanently: %s", claimed.id, exc)
    return Outcome(Action.DEAD_LETTER, f"permanent: {exc}")


def _defer_for_breaker(row_id: uuid.UUID, permit: Permit, now: datetime) -> Outcome:
    next_at = now + timedelta(seconds=permit.retry_in_s)
    if _finish("deferred", row_id, now, next_at=next_at) == 0:
        return _why_not_claimed(row_id, None, now)
    metrics.record_deferred()
    return Outcome(Action.DEFER, f"breaker {permit.state}", permit.retry_in_s)


_STATE = """SELECT status, dispatch_token, scheduled_send_time, lease_expires_at
         FROM messages WHERE id = %(id)s"""


def _why_not_claimed(row_id: uuid.UUID, token_id: uuid.UUID | None, now: datetime) -> Outcome:
    with fast_autocommit() as connection:
        row = connection.execute(_STATE, {"id": row_id}, prepare=True).fetchone()
    if row is None:
        return Outcome(Action.DEAD_LETTER, "unknown message id")
    status, current_token, scheduled, lease_until = row
    if status in ("SENT", "FAILED", "CANCELLED"):
        return Outcome(Action.DONE, f"already {status}")
    if token_id is not None and current_token is not None and current_token != token_id:
        return Outcome(Action.DONE, "superseded job")
    if scheduled > now:  # never early: come back at the instant
        return Outcome(Action.DEFER, "early", (scheduled - now).total_seconds())
    if status == "SENDING" and lease_until is not None:
        # Another worker holds it (or held it and died): look again when its lease ends.
        return Outcome(Action.DEFER, "leased", max(1.0, (lease_until - now).total_seconds() + 1))
    return Outcome(Action.DONE, f"not claimable ({status})")
