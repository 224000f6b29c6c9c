"""Delivering one message: claim the row, ask the breaker, call the email service, record.

`deliver()` is plain Python (no Celery): it returns an `Outcome` saying what the task should do
next (nothing, retry after N seconds, defer until T, or dead-letter). Every state change is a
conditional UPDATE naming the legal previous states; an UPDATE that matches no row means another
worker or job got there first, which is normal.
"""

from __future__ import annotations

import enum
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import psycopg
from sqlalchemy.exc import DBAPIError

from bday.config import Settings, get_settings
from bday.core import retries
from bday.core.templates import Catalogue, placeholder_values, render
from bday.delivery.breaker import Breaker, Permit
from bday.delivery.pacing import Pacer, Slot
from bday.delivery.provider import (
    Email,
    PermanentSendError,
    Receipt,
    SendError,
    Sends,
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


@dataclass(frozen=True, slots=True)
class SendJob:
    """One `send_message` job as a worker received it (`send_message(message_id, token,
    slot=)`): the ids as the message carried them, text, checked when the batch is claimed."""

    message_id: str
    token: str | None = None
    slot: Slot | None = None


_DB_ERRORS = (psycopg.Error, DBAPIError)


def _deadline(claimed: Claimed, settings: Settings) -> datetime:
    """After this instant the greeting is no longer sent (CATCH_UP_HOURS, or a forced replay's)."""
    return claimed.send_deadline or claimed.scheduled_send_time + timedelta(
        hours=settings.catch_up_hours
    )


def deliver(
    message_id: str,
    token: str | None,
    *,
    sender: Sends,
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
    was promised when it was deferred. Raises UnrecordedDelivery when the service accepted the
    greeting but SENT could not be written, and the database's error when it did not answer
    before the send.
    """
    [outcome] = deliver_many(
        [SendJob(message_id, token, slot)],
        sender=sender,
        breaker=breaker,
        settings=settings,
        now=now,
        via=via,
        pacer=pacer,
    )
    if outcome.action is Action.RECORD:
        assert outcome.delivered is not None
        raise UnrecordedDelivery(outcome.delivered)
    if outcome.action is Action.DB_AWAY and outcome.cause is not None:
        raise outcome.cause
    return outcome


Notify = Callable[[int, Outcome], None]


class _Ledger:
    """A batch's outcomes, each told to `notify` the moment it is known, so its message can be
    settled (acked, re-published, dead-lettered) while slower sends of the batch are still out."""

    def __init__(self, size: int, notify: Notify | None):
        self._outcomes: list[Outcome | None] = [None] * size
        self._notify = notify

    def __setitem__(self, index: int, outcome: Outcome) -> None:
        self._outcomes[index] = outcome
        if self._notify is not None:
            self._notify(index, outcome)

    def results(self, default: Outcome) -> list[Outcome]:
        """Every outcome; jobs never settled get `default` (told like the others)."""
        for index, outcome in enumerate(self._outcomes):
            if outcome is None:
                self[index] = default
        return [o for o in self._outcomes if o is not None]


def deliver_many(
    jobs: Sequence[SendJob],
    *,
    sender: Sends,
    breaker: Breaker,
    settings: Settings | None = None,
    now: datetime | None = None,
    via: str = "queue",
    pacer: Pacer | None = None,
    notify: Notify | None = None,
) -> list[Outcome]:
    """Deliver a batch of greetings: one outcome per job, in order, each also passed to
    `notify(index, outcome)` as soon as it is known.

    Unpaced, the batch shares its work: one breaker question, one claim statement, the sends
    at once (`sender.send_many`), one statement recording the SENTs of each group of answers
    that arrive together (a 200 is recorded while slower requests are still out). While a send
    rate is in force, each job goes on its own (`sender.each`): a paced send takes its turn just
    before its request, so the batch's sends keep the rate's spacing instead of leaving together.

    A job told to wait less than a second (its instant, its paced slot, a breaker's scatter)
    waits in a sending thread of its own and goes once more: the broker's delayed delivery
    counts whole seconds, so sending it back would make it late. `now` (tests) fixes the clock.
    """
    settings = settings or get_settings()
    given_now = now
    one = partial(_deliver_all, sender=sender, breaker=breaker, settings=settings, via=via)

    def finish(index: int, outcome: Outcome, started: float, job: SendJob) -> Outcome:
        """The job's outcome after at most one short in-place wait; then tell it."""
        if outcome.action is Action.DEFER and outcome.delay_s < 1:
            time.sleep(max(0.0, started + outcome.delay_s - time.monotonic()))
            clock = None if given_now is None else given_now + timedelta(seconds=outcome.delay_s)
            [outcome] = one([replace(job, slot=outcome.slot)], pacer=pacer, now=clock)
        if notify is not None:
            notify(index, outcome)
        return outcome

    started = time.monotonic()
    if len(jobs) > 1 and _paced(pacer, given_now or datetime.now(UTC)):

        def alone(item: tuple[int, SendJob]) -> Outcome:
            index, job = item
            began = time.monotonic()
            [outcome] = one([job], pacer=pacer, now=given_now)
            return finish(index, outcome, began, job)

        return sender.each(alone, list(enumerate(jobs)))

    soon: dict[int, Outcome] = {}

    def told(index: int, outcome: Outcome) -> None:
        if outcome.action is Action.DEFER and outcome.delay_s < 1:
            soon[index] = outcome
        elif notify is not None:
            notify(index, outcome)

    outcomes = one(jobs, pacer=pacer, now=given_now, notify=told)
    if soon:
        waiting = sorted(soon)
        again = sender.each(lambda index: finish(index, soon[index], started, jobs[index]), waiting)
        for index, outcome in zip(waiting, again, strict=True):
            outcomes[index] = outcome
    return outcomes


def _paced(pacer: Pacer | None, now: datetime) -> bool:
    """Is a send rate in force? If the database cannot say, the batch path meets the same error
    and says DB_AWAY for each job (a raise here would dead-letter the whole batch)."""
    try:
        return pacer is not None and pacer.rate(now) is not None
    except _DB_ERRORS:
        return False


def _deliver_all(
    jobs: Sequence[SendJob],
    *,
    sender: Sends,
    breaker: Breaker,
    settings: Settings,
    via: str,
    pacer: Pacer | None,
    now: datetime | None = None,
    notify: Notify | None = None,
) -> list[Outcome]:
    now = now or datetime.now(UTC)
    started = time.monotonic()
    outcomes = _Ledger(len(jobs), notify)
    later: list[int] = []
    try:
        asked = _admit(jobs, outcomes, later, breaker, pacer, now)
        claimed = _claim(asked, outcomes, breaker, settings, now)
    except _DB_ERRORS as exc:
        return outcomes.results(_away(exc))
    services = Services(breaker, pacer)
    emails = [_email(row, settings.catalogue) for row, _, _ in claimed]
    for answers in sender.send_many(emails):
        sent: list[tuple[Claimed, Receipt, int, Email]] = []
        for position, answer in answers:
            row, permit, index = claimed[position]
            try:
                if isinstance(answer, Receipt):
                    answered = datetime.now(UTC)
                    breaker.record_success(permit, answered)
                    if pacer is not None:
                        pacer.note_sent(answered)
                    sent.append((row, answer, index, emails[position]))
                else:
                    outcomes[index] = _after_failed_send(row, permit, answer, services, settings)
            except _DB_ERRORS as exc:
                outcomes[index] = _away(exc)
        for index, outcome in _record_sent(sent, via):  # at once: see SendPool.send_many
            outcomes[index] = outcome
    if later:  # the probe has answered, the repeated rows are settled: the rest go now

        def told(k: int, outcome: Outcome) -> None:
            outcomes[later[k]] = outcome

        _deliver_all(
            [jobs[index] for index in later],
            sender=sender,
            breaker=breaker,
            settings=settings,
            via=via,
            pacer=pacer,
            now=now + timedelta(seconds=time.monotonic() - started),
            notify=told,
        )
    return outcomes.results(_away(None))


@dataclass(frozen=True, slots=True)
class Services:
    breaker: Breaker
    pacer: Pacer | None


@dataclass(frozen=True, slots=True)
class _Asked:
    index: int
    row_id: uuid.UUID
    token_id: uuid.UUID | None
    permit: Permit


def _admit(
    jobs: Sequence[SendJob],
    outcomes: _Ledger,
    later: list[int],
    breaker: Breaker,
    pacer: Pacer | None,
    now: datetime,
) -> list[_Asked]:
    """Parse each job, ask the breaker and the pacer: the jobs that may be claimed now. The
    others get their outcome here, except those that go once this round is over (`later`):
    the ones waiting for the breaker's probe, and a second job for a row already in the batch.

    Two jobs for one row meet in a batch when a row was re-published (fresh token) while its
    older job was still on its way back: only the row knows which job is current, so the
    second goes after the first has settled (it then finds the row sent, or claims it)."""
    parsed: list[tuple[int, uuid.UUID, uuid.UUID | None]] = []
    seen: set[uuid.UUID] = set()
    repeats: list[int] = []
    for index, job in enumerate(jobs):
        try:
            row_id = uuid.UUID(str(job.message_id))
            token_id = uuid.UUID(str(job.token)) if job.token is not None else None
        except ValueError:
            outcomes[index] = Outcome(Action.DEAD_LETTER, "malformed job: message id is not a UUID")
            continue
        if row_id in seen:
            repeats.append(index)
            continue
        seen.add(row_id)
        parsed.append((index, row_id, token_id))
    asked = []
    permits = breaker.permits(now, len(parsed))
    later.extend(index for index, _, _ in parsed[len(permits) :])
    later.extend(repeats)
    for (index, row_id, token_id), permit in zip(parsed, permits, strict=False):
        if not permit.allowed:
            outcomes[index] = _defer_for_breaker(row_id, token_id, permit, now)
            continue
        held = jobs[index].slot
        wait = pacer.acquire(now, held) if pacer is not None else None
        if wait is not None:
            breaker.release(permit, now)
            outcomes[index] = _defer_for_pace(row_id, token_id, wait, held=wait is held, now=now)
            continue
        asked.append(_Asked(index, row_id, token_id, permit))
    return asked


def _claim(
    asked: list[_Asked],
    outcomes: _Ledger,
    breaker: Breaker,
    settings: Settings,
    now: datetime,
) -> list[tuple[Claimed, Permit, int]]:
    """Claim the admitted rows in one statement; settle the ones that need no send."""
    lease_until = now + timedelta(seconds=settings.send_lease_s)
    rows = messages.claim_many([(a.row_id, a.token_id) for a in asked], now, lease_until)
    claimed = []
    for a in asked:
        row = rows.get(a.row_id)
        if row is None:
            breaker.release(a.permit, now)
            outcomes[a.index] = _why_not_claimed(a.row_id, a.token_id, now)
        elif row.user_deleted:
            breaker.release(a.permit, now)
            messages.finish("cancelled", row.id, now)
            outcomes[a.index] = Outcome(Action.DONE, "user deleted")
        elif _deadline(row, settings) < now:
            breaker.release(a.permit, now)
            outcomes[a.index] = _expired(row, settings, now)
        else:
            claimed.append((row, a.permit, a.index))
    return claimed


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
    if the database is still away. A malformed record raises KeyError, TypeError or ValueError."""
    try:
        messages.finish(
            "sent_late",
            uuid.UUID(delivered["id"]),
            datetime.fromisoformat(delivered["at"]),
            status=delivered["status"],
            response=delivered["response"],
            via=delivered["via"],
            subject=delivered.get("subject"),
            body=delivered.get("body"),
        )
    except _DB_ERRORS as exc:
        return _away(exc)
    log.info("message %s sent (recorded after a database outage)", delivered["id"])
    return Outcome(Action.DONE, "sent")


def _email(claimed: Claimed, catalogue: Catalogue) -> Email:
    """The greeting in the words of the user's language (its template's fallback chain)."""
    values = placeholder_values(
        claimed.message_type,
        claimed.first_name,
        claimed.last_name,
        claimed.occasion_date,
        claimed.original_date,
    )
    words = render(catalogue.pick(claimed.message_type, claimed.locale), values)
    return Email(
        claimed.email,
        words.text,
        str(claimed.id),
        subject=words.subject,
        html=words.html,
        name=values["full_name"],
    )


def _record_sent(
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
        messages.record_sent(rows, done, via)
    except _DB_ERRORS:
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


def _after_failed_send(
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


def _expired(claimed: Claimed, settings: Settings, now: datetime) -> Outcome:
    messages.finish(
        "failed",
        claimed.id,
        now,
        reason=FailureReason.EXPIRED.value,
        error=f"more than {settings.catch_up_hours} h late",
    )
    metrics.record_failed(claimed.message_type, FailureReason.EXPIRED.value)
    return Outcome(Action.DEAD_LETTER, "expired")


def _away(exc: BaseException | None) -> Outcome:
    orig = getattr(exc, "orig", None) or exc
    return Outcome(Action.DB_AWAY, f"database unavailable ({type(orig).__name__})", cause=exc)


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
    log.info("message %s: throttled (%s), again in %.1f s", claimed.id, exc.status, wait_s)
    return Outcome(Action.DEFER, "throttled", wait_s, slot)


def _defer_for_pace(
    row_id: uuid.UUID, token_id: uuid.UUID | None, slot: Slot, *, held: bool, now: datetime
) -> Outcome:
    """Not this send's turn yet: wait for `slot` (a new one is recorded on the row)."""
    wait_s = max(0.0, slot.at - now.timestamp())
    if not held:
        refused = _defer_row(row_id, token_id, now, wait_s)
        if refused is not None:
            return refused
    return Outcome(Action.DEFER, "paced", wait_s, slot)


def _defer_for_breaker(
    row_id: uuid.UUID, token_id: uuid.UUID | None, permit: Permit, now: datetime
) -> Outcome:
    refused = _defer_row(row_id, token_id, now, permit.retry_in_s)
    if refused is not None:
        return refused
    return Outcome(Action.DEFER, f"breaker {permit.state}", permit.retry_in_s)


def _defer_row(
    row_id: uuid.UUID, token_id: uuid.UUID | None, now: datetime, wait_s: float
) -> Outcome | None:
    """Record on the row that it waits `wait_s`; None if it does, else why this job cannot
    (the row is finished, or the job superseded)."""
    next_at = now + timedelta(seconds=wait_s)
    if messages.finish("deferred", row_id, now, next_at=next_at, token=token_id) == 0:
        return _why_not_claimed(row_id, token_id, now)
    metrics.record_deferred()
    return None


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
