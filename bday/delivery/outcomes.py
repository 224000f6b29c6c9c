"""What each answer does to its row: the rules of one delivery's outcome.

A send's answer (accepted, a permanent refusal, a transient failure, a throttle, a failed
probe), a deferral by the breaker or the pacer, a row that cannot be claimed, or a database
that went away becomes one conditional UPDATE of the row (through `bday.store.messages`) and
an `Outcome` telling the task what to do with the job. Every state change names its legal
previous states; an UPDATE that matches no row means another worker or job got there first.
"""

from __future__ import annotations

import enum
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy.exc import DBAPIError

from bday.config import Settings
from bday.core import retries
from bday.delivery.breaker import Permit
from bday.delivery.interfaces import BreakerService, PacerService
from bday.delivery.pacing import Slot
from bday.delivery.provider import (
    Email,
    PermanentSendError,
    Receipt,
    SendError,
    TransientSendError,
)
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
    DB_AWAY = "db_away"  # the database did not answer before anything was sent: run again
    RECORD = "record"  # sent, but SENT could not be written: run again to record `delivered`


@dataclass(frozen=True, slots=True)
class Outcome:
    action: Action
    reason: str
    delay_s: float = 0.0
    slot: Slot | None = None  # a paced send's promised slot: it comes back with it
    delivered: dict[str, Any] | None = None  # RECORD: what `record_delivered` writes
    cause: BaseException | None = None  # DB_AWAY: the database's error


DB_ERRORS = (psycopg.Error, DBAPIError)


def deadline(claimed: Claimed, settings: Settings) -> datetime:
    """After this instant the greeting is no longer sent (CATCH_UP_HOURS, or a forced replay's)."""
    return claimed.send_deadline or claimed.scheduled_send_time + timedelta(
        hours=settings.catch_up_hours
    )


@dataclass(frozen=True, slots=True)
class Services:
    breaker: BreakerService
    pacer: PacerService | None


class UnrecordedDelivery(Exception):
    """The email service accepted the message but recording SENT failed (database away).

    `delivered` is what `record_delivered` needs later: the task carries it into its retry so
    the retry writes SENT instead of sending a second time.
    """

    def __init__(self, delivered: dict[str, Any]):
        super().__init__(f"message {delivered['id']} sent, not yet recorded")
        self.delivered = delivered


def record_delivered(delivered: dict[str, Any]) -> Outcome:
    """Write SENT for a delivery whose first recording failed (see UnrecordedDelivery); DB_AWAY
    if the database is still away. A malformed record raises KeyError, TypeError or ValueError.
    A record written before it carried the row's occasion date finds its row by id alone."""
    day = delivered.get("occasion_date")
    try:
        messages.record_outcome(
            "sent_late",
            uuid.UUID(delivered["id"]),
            datetime.fromisoformat(delivered["at"]),
            occasion_date=date.fromisoformat(day) if day is not None else None,
            status=delivered["status"],
            response=delivered["response"],
            via=delivered["via"],
            subject=delivered.get("subject"),
            body=delivered.get("body"),
        )
    except DB_ERRORS as exc:
        return db_away(exc)
    log.info("message %s sent (recorded after a database outage)", delivered["id"])
    return Outcome(Action.DONE, "sent")


def write_sent(
    sent: list[tuple[Claimed, Receipt, int, Email]], via: str
) -> list[tuple[int, Outcome]]:
    """Write SENT for every accepted greeting in one statement, with the words it carried; if
    the database is away, each becomes RECORD (its job comes back only to write SENT, never to
    send again)."""
    if not sent:
        return []
    done = datetime.now(UTC)
    rows = [(c.id, r.status, r.body, e.subject, e.message) for c, r, _, e in sent]
    try:
        messages.record_sent(rows, done, via, days={c.id: c.occasion_date for c, *_ in sent})
    except DB_ERRORS:
        at = done.isoformat()
        return [
            (
                index,
                Outcome(
                    Action.RECORD,
                    "sent, not yet recorded",
                    delivered={
                        "id": str(c.id),
                        "at": at,
                        "status": r.status,
                        "response": r.body,
                        "via": via,
                        "subject": e.subject,
                        "body": e.message,
                        "occasion_date": c.occasion_date.isoformat(),
                    },
                ),
            )
            for c, r, index, e in sent
        ]
    for claimed, receipt, _, _ in sent:
        metrics.record_sent(
            claimed.message_type, (done - claimed.scheduled_send_time).total_seconds()
        )
        log.debug(
            "message %s sent (%s, %.0f ms)",
            claimed.id,
            claimed.message_type,
            receipt.elapsed_s * 1000,
        )
    slowest = max(receipt.elapsed_s for _, receipt, _, _ in sent)
    log.info(
        "sent %d (slowest %.0f ms): %s",
        len(sent),
        slowest * 1000,
        " ".join(str(claimed.id) for claimed, _, _, _ in sent),
    )
    return [(index, _SENT) for _, _, index, _ in sent]


_SENT = Outcome(Action.DONE, "sent")


def after_failed_send(
    claimed: Claimed, permit: Permit, exc: SendError, services: Services, settings: Settings
) -> Outcome:
    breaker = services.breaker
    if isinstance(exc, PermanentSendError):
        breaker.record_success(permit, datetime.now(UTC))  # the service answered: it is up
        return _after_permanent(claimed, exc)
    assert isinstance(exc, TransientSendError)
    if exc.throttled:  # pacing, not an outage: the service answered, so it is up
        breaker.record_success(permit, datetime.now(UTC))
        return _after_throttled(claimed, exc, services.pacer)
    breaker.record_failure(permit, datetime.now(UTC), exc)
    if permit.is_probe:  # the service is still down: that is the outage, not this message
        return _after_failed_probe(claimed, exc, breaker)
    return _after_transient(claimed, exc, settings)


def expire(claimed: Claimed, settings: Settings, now: datetime) -> Outcome:
    messages.record_outcome(
        "failed",
        claimed.id,
        now,
        occasion_date=claimed.occasion_date,
        reason=FailureReason.EXPIRED.value,
        error=f"more than {settings.catch_up_hours} h late",
    )
    metrics.record_failed(claimed.message_type, FailureReason.EXPIRED.value)
    return Outcome(Action.DEAD_LETTER, "expired")


def db_away(exc: BaseException | None) -> Outcome:
    orig = getattr(exc, "orig", None) or exc
    return Outcome(Action.DB_AWAY, f"database unavailable ({type(orig).__name__})", cause=exc)


def _after_transient(claimed: Claimed, exc: TransientSendError, settings: Settings) -> Outcome:
    now = datetime.now(UTC)
    if claimed.retry_count >= settings.queue_max_retries:
        messages.record_outcome(
            "failed",
            claimed.id,
            now,
            occasion_date=claimed.occasion_date,
            reason=FailureReason.RETRIES_EXHAUSTED.value,
            error=str(exc),
            status=exc.status,
        )
        metrics.record_failed(claimed.message_type, FailureReason.RETRIES_EXHAUSTED.value)
        log.warning("message %s failed after %d retries: %s", claimed.id, claimed.retry_count, exc)
        return Outcome(Action.DEAD_LETTER, f"retries exhausted: {exc}")
    delay_s = retries.backoff_s(claimed.retry_count + 1, settings, retry_after_s=exc.retry_after_s)
    messages.record_outcome(
        "retry",
        claimed.id,
        now,
        occasion_date=claimed.occasion_date,
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


def _after_failed_probe(
    claimed: Claimed, exc: TransientSendError, breaker: BreakerService
) -> Outcome:
    now = datetime.now(UTC)
    snapshot = breaker.snapshot(fresh=True)
    wait_s = max(1.0, (snapshot.open_until - now).total_seconds()) if snapshot.open_until else 1.0
    _put_back("probe", claimed, exc, now, wait_s)
    log.info("message %s: probe failed (%s), breaker open for %.0f s", claimed.id, exc, wait_s)
    return Outcome(Action.DEFER, f"probe failed: {exc}", wait_s)


def _put_back(
    cause: str, claimed: Claimed, exc: TransientSendError, now: datetime, wait_s: float
) -> None:
    """SENDING -> QUEUED without spending a retry (a failed probe, a 429), due in `wait_s`."""
    next_at = now + timedelta(seconds=wait_s)
    messages.record_outcome(
        "put_back",
        claimed.id,
        now,
        occasion_date=claimed.occasion_date,
        error=str(exc),
        status=exc.status,
        next_at=next_at,
    )
    metrics.record_deferred(cause)


def _after_permanent(claimed: Claimed, exc: PermanentSendError) -> Outcome:
    messages.record_outcome(
        "failed",
        claimed.id,
        datetime.now(UTC),
        occasion_date=claimed.occasion_date,
        reason=FailureReason.PERMANENT.value,
        error=str(exc),
        status=exc.status,
    )
    metrics.record_failed(claimed.message_type, FailureReason.PERMANENT.value)
    log.warning("message %s failed permanently: %s", claimed.id, exc)
    return Outcome(Action.DEAD_LETTER, f"permanent: {exc}")


def _after_throttled(
    claimed: Claimed, exc: TransientSendError, pacer: PacerService | None
) -> Outcome:
    """A 429: slow the cluster down and defer this send to a new slot; no retry is spent."""
    now = datetime.now(UTC)
    slot = None
    if pacer is not None:
        pacer.throttled(now, exc.retry_after_s)
        slot = pacer.acquire(now)
    wait_s = (slot.at - now.timestamp()) if slot else (exc.retry_after_s or 1.0)
    wait_s = max(wait_s, exc.retry_after_s or 0.0)
    _put_back("throttled", claimed, exc, now, wait_s)
    log.info("message %s: throttled (%s), again in %.1f s", claimed.id, exc.status, wait_s)
    return Outcome(Action.DEFER, "throttled", wait_s, slot)


def defer_for_pace(
    row_id: uuid.UUID,
    token_id: uuid.UUID | None,
    slot: Slot,
    *,
    held: bool,
    now: datetime,
    day: date | None = None,
) -> Outcome:
    """Not this send's turn yet: wait for `slot` (a new one is recorded on the row). `day`,
    here and below: the row's occasion date as its job carried it (None: unknown)."""
    wait_s = max(0.0, slot.at - now.timestamp())
    if not held:
        refused = _defer_row(row_id, token_id, now, wait_s, "pace", day)
        if refused is not None:
            return refused
    return Outcome(Action.DEFER, "paced", wait_s, slot)


def defer_for_breaker(
    row_id: uuid.UUID,
    token_id: uuid.UUID | None,
    permit: Permit,
    now: datetime,
    day: date | None = None,
) -> Outcome:
    refused = _defer_row(row_id, token_id, now, permit.retry_in_s, "breaker", day)
    if refused is not None:
        return refused
    return Outcome(Action.DEFER, f"breaker {permit.state}", permit.retry_in_s)


def _defer_row(
    row_id: uuid.UUID,
    token_id: uuid.UUID | None,
    now: datetime,
    wait_s: float,
    cause: str,
    day: date | None,
) -> Outcome | None:
    """Record on the row that it waits `wait_s` (for the breaker or its pace); None if it does,
    else why this job cannot (the row is finished, or the job superseded)."""
    next_at = now + timedelta(seconds=wait_s)
    changed = messages.record_outcome(
        "deferred", row_id, now, occasion_date=day, next_at=next_at, token=token_id
    )
    if changed == 0:
        return why_not_claimed(row_id, token_id, now, day)
    metrics.record_deferred(cause)
    return None


def why_not_claimed(
    row_id: uuid.UUID, token_id: uuid.UUID | None, now: datetime, day: date | None = None
) -> Outcome:
    row = messages.current_state(row_id, day)
    if row is None and day is not None and messages.current_state(row_id) is not None:
        # Never published so (the date comes from the row itself, and never changes): the row
        # stays as it is, and recovery re-publishes it with its own date if it is owed.
        log.warning("message %s: the job's occasion date %s is not its row's", row_id, day)
        return Outcome(Action.DEAD_LETTER, "the job's occasion date is not its row's")
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
