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
from typing import Any

import psycopg
from sqlalchemy.exc import DBAPIError

from bday.config import Settings, get_settings
from bday.core import retries
from bday.core.occasions import message_text
from bday.delivery.breaker import Breaker, Permit
from bday.delivery.pacing import Pacer, Slot
from bday.delivery.sender import EmailSender, PermanentSendError, Receipt, TransientSendError
from bday.store import messages
from bday.store.messages import Claimed
from bday.store.models import FINISHED, FailureReason, Status
from bday.telemetry import metrics

log = logging.getLogger(__name__)


class Action(enum.Enum):
    DONE = "done"  # sent now, or nothing to do (already sent, cancelled, stale job)
    RETRY = "retry"  # transient failure: run again after `delay_s`, one retry spent
    DEFER = "defer"  # not yet (early, leased, breaker open, paced): run again, nothing spent
    DEAD_LETTER = "dead_letter"  # permanent failure, retries exhausted, expired, unknown id


@dataclass(frozen=True, slots=True)
class Outcome:
    action: Action
    reason: str
    delay_s: float = 0.0
    slot: Slot | None = None  # a paced send's promised slot: it comes back with it


def _deadline(claimed: Claimed, settings: Settings) -> datetime:
    """After this instant the greeting is no longer sent (CATCH_UP_HOURS, or a forced replay's)."""
    return claimed.send_deadline or claimed.scheduled_send_time + timedelta(
        hours=settings.catch_up_hours
    )


def deliver(
    message_id: str,
    token: str | None,
    *,
    sender: EmailSender,
    breaker: Breaker,
    settings: Settings | None = None,
    now: datetime | None = None,
    via: str = "queue",
    pacer: Pacer | None = None,
    slot: Slot | None = None,
) -> Outcome:
    """Try to deliver message `message_id` once; say what should happen next.

    `via` is recorded on a sent row: `queue` from a worker, `direct` from the fallback path.
    `pacer` (None: unpaced) holds the send to the shared rate; `slot` is the one a paced send
    was promised when it was deferred.
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
    wait = pacer.acquire(now, slot) if pacer is not None else None
    if wait is not None:
        breaker.release(permit, now)
        return _defer_for_pace(row_id, token_id, wait, held=wait is slot, now=now)
    claimed = _claim(row_id, token_id, now, settings)
    if claimed is None:
        breaker.release(permit, now)
        return _why_not_claimed(row_id, token_id, now)
    return _attempt(claimed, permit, sender, Services(breaker, pacer), settings, now, via)


@dataclass(frozen=True, slots=True)
class Services:
    breaker: Breaker
    pacer: Pacer | None


def _claim(
    row_id: uuid.UUID, token_id: uuid.UUID | None, now: datetime, settings: Settings
) -> Claimed | None:
    lease_until = now + timedelta(seconds=settings.send_lease_s)
    return messages.claim_for_send(row_id, token_id, now, lease_until)


def _attempt(
    claimed: Claimed,
    permit: Permit,
    sender: EmailSender,
    services: Services,
    settings: Settings,
    now: datetime,
    via: str,
) -> Outcome:
    breaker = services.breaker
    if claimed.user_deleted:
        breaker.release(permit, now)
        messages.finish("cancelled", claimed.id, now)
        return Outcome(Action.DONE, "user deleted")
    if _deadline(claimed, settings) < now:
        breaker.release(permit, now)
        messages.finish(
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
        if exc.status == 429:  # pacing, not an outage: the service answered, so it is up
            breaker.record_success(permit, datetime.now(UTC))
            return _after_throttled(claimed, exc, services.pacer)
        breaker.record_failure(permit, datetime.now(UTC), exc)
        if permit.is_probe:  # the service is still down: that is the outage, not this message
            return _after_failed_probe(claimed, exc, breaker)
        return _after_transient(claimed, exc, settings)
    except PermanentSendError as exc:
        breaker.record_success(permit, datetime.now(UTC))  # the service answered: it is up
        return _after_permanent(claimed, exc)
    done = datetime.now(UTC)
    breaker.record_success(permit, done)
    if services.pacer is not None:
        services.pacer.note_sent(done)
    return _after_sent(claimed, receipt, via)


class UnrecordedDelivery(Exception):
    """The email service accepted the message but recording SENT failed (database away).

    `delivered` is what `record_delivered` needs later: the task carries it into its retry so
    the retry writes SENT instead of sending a second time.
    """

    def __init__(self, delivered: dict[str, Any]):
        super().__init__(f"message {delivered['id']} sent, not yet recorded")
        self.delivered = delivered


def record_delivered(delivered: dict[str, Any]) -> Outcome:
    """Write SENT for a delivery whose first recording failed (see UnrecordedDelivery)."""
    messages.finish(
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
        messages.finish(
            "sent", claimed.id, done, status=receipt.status, response=receipt.body, via=via
        )
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
        messages.finish(
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
    messages.finish(
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
    _back_to_queue("probe_failed", claimed, exc, now, wait_s)
    log.info("message %s: probe failed (%s), breaker open for %.0f s", claimed.id, exc, wait_s)
    return Outcome(Action.DEFER, f"probe failed: {exc}", wait_s)


def _back_to_queue(
    kind: str, claimed: Claimed, exc: TransientSendError, now: datetime, wait_s: float
) -> None:
    """SENDING -> QUEUED without spending a retry (a failed probe, a 429), due in `wait_s`."""
    next_at = now + timedelta(seconds=wait_s)
    messages.finish(kind, claimed.id, now, error=str(exc), status=exc.status, next_at=next_at)
    metrics.record_deferred()


def _after_permanent(claimed: Claimed, exc: PermanentSendError) -> Outcome:
    messages.finish(
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


def _after_throttled(claimed: Claimed, exc: TransientSendError, pacer: Pacer | None) -> Outcome:
    """A 429: slow the cluster down and defer this send to a new slot; no retry is spent."""
    now = datetime.now(UTC)
    slot = None
    if pacer is not None:
        pacer.throttled(now, exc.retry_after_s)
        slot = pacer.acquire(now)
    wait_s = (slot.at - now.timestamp()) if slot else (exc.retry_after_s or 1.0)
    wait_s = max(wait_s, exc.retry_after_s or 0.0)
    _back_to_queue("throttled", claimed, exc, now, wait_s)
    log.info("message %s: throttled (429), again in %.1f s", claimed.id, wait_s)
    return Outcome(Action.DEFER, "throttled", wait_s, slot)


def _defer_for_pace(
    row_id: uuid.UUID, token_id: uuid.UUID | None, slot: Slot, *, held: bool, now: datetime
) -> Outcome:
    """Not this send's turn yet: wait for `slot` (a new one is recorded on the row)."""
    wait_s = max(0.0, slot.at - now.timestamp())
    if not held:
        next_at = now + timedelta(seconds=wait_s)
        if messages.finish("deferred", row_id, now, next_at=next_at) == 0:
            return _why_not_claimed(row_id, token_id, now)
        metrics.record_deferred()
    return Outcome(Action.DEFER, "paced", wait_s, slot)


def _defer_for_breaker(row_id: uuid.UUID, permit: Permit, now: datetime) -> Outcome:
    next_at = now + timedelta(seconds=permit.retry_in_s)
    if messages.finish("deferred", row_id, now, next_at=next_at) == 0:
        return _why_not_claimed(row_id, None, now)
    metrics.record_deferred()
    return Outcome(Action.DEFER, f"breaker {permit.state}", permit.retry_in_s)


def _why_not_claimed(row_id: uuid.UUID, token_id: uuid.UUID | None, now: datetime) -> Outcome:
    row = messages.current_state(row_id)
    if row is None:
        return Outcome(Action.DEAD_LETTER, "unknown message id")
    status, current_token, scheduled, lease_until = row
    if status in FINISHED:
        return Outcome(Action.DONE, f"already {status}")
    if token_id is not None and current_token is not None and current_token != token_id:
        return Outcome(Action.DONE, "superseded job")
    if scheduled > now:  # never early: come back at the instant
        return Outcome(Action.DEFER, "early", (scheduled - now).total_seconds())
    if status == Status.SENDING and lease_until is not None:
        # Another worker holds it (or held it and died): look again when its lease ends.
        return Outcome(Action.DEFER, "leased", max(1.0, (lease_until - now).total_seconds() + 1))
    return Outcome(Action.DONE, f"not claimable ({status})")
