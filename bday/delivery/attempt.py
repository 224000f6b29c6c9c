"""A batch of deliveries: parse the jobs, ask the breaker and the pacer, claim the rows in one
statement, send at once, and record each group of answers as it arrives.

`deliver()` and `deliver_many()` are plain Python (no Celery): each job gets an `Outcome`
saying what the task should do next (nothing, retry after N seconds, defer until T, or
dead-letter). What each answer does to its row is `bday.delivery.outcomes`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from functools import partial

from bday.config import Settings, get_settings
from bday.core.templates import Catalogue, placeholder_values, render
from bday.delivery.breaker import Permit
from bday.delivery.interfaces import BreakerService, PacerService
from bday.delivery.outcomes import (
    DB_ERRORS,
    Action,
    Outcome,
    Services,
    UnrecordedDelivery,
    after_failed_send,
    db_away,
    deadline,
    defer_for_breaker,
    defer_for_pace,
    expire,
    why_not_claimed,
    write_sent,
)
from bday.delivery.pacing import Slot
from bday.delivery.provider import (
    Email,
    Receipt,
    Sends,
)
from bday.store import messages
from bday.store.messages import Claimed

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SendJob:
    """One `send_message` job as a worker received it (`send_message(message_id, token,
    slot=, occasion_date=)`): the ids as the message carried them, text, checked when the
    batch is claimed. `occasion_date` (ISO) is the row's partition key: with it the row is
    looked for in one monthly partition; a job published without it is found by id alone."""

    message_id: str
    token: str | None = None
    slot: Slot | None = None
    occasion_date: str | None = None


def deliver(
    message_id: str,
    token: str | None,
    *,
    sender: Sends,
    breaker: BreakerService,
    settings: Settings | None = None,
    now: datetime | None = None,
    via: str = "queue",
    pacer: PacerService | None = None,
    slot: Slot | None = None,
    occasion_date: str | None = None,
) -> Outcome:
    """Try to deliver message `message_id` once; say what should happen next.

    `via` is recorded on a sent row: `queue` from a worker, `direct` from the fallback path.
    `pacer` (None: unpaced) holds the send to the shared rate; `slot` is the one a paced send
    was promised when it was deferred. Raises UnrecordedDelivery when the service accepted the
    greeting but SENT could not be written, and the database's error when it did not answer
    before the send.
    """
    [outcome] = deliver_many(
        [SendJob(message_id, token, slot, occasion_date)],
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
    breaker: BreakerService,
    settings: Settings | None = None,
    now: datetime | None = None,
    via: str = "queue",
    pacer: PacerService | None = None,
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
    batch = _Batch(
        jobs,
        partial(
            _deliver_all,
            sender=sender,
            breaker=breaker,
            settings=settings or get_settings(),
            via=via,
            pacer=pacer,
        ),
        sender,
        now,
        notify,
    )
    if len(jobs) > 1 and _paced(pacer, now or datetime.now(UTC)):
        return sender.each(batch.alone, list(enumerate(jobs)))
    return batch.together()


_SOON_S = 1.0  # a wait shorter than this happens here, not through the broker


class _Batch:
    """One call of `deliver_many`: its jobs, the delivery of some of them (`one`), and the
    outcomes told to `notify` as they are known."""

    def __init__(
        self,
        jobs: Sequence[SendJob],
        one: Callable[..., list[Outcome]],
        sender: Sends,
        now: datetime | None,
        notify: Notify | None,
    ):
        self.jobs, self.one, self.sender = jobs, one, sender
        self.now, self.notify = now, notify
        self.started = time.monotonic()
        self.soon: dict[int, Outcome] = {}

    def together(self) -> list[Outcome]:
        """Unpaced: the whole batch at once; the jobs told to wait under a second go again
        once their wait is over, each in a sending thread of its own."""
        outcomes = self.one(self.jobs, now=self.now, notify=self._told)
        waiting = sorted(self.soon)
        again = self.sender.each(self._again, waiting)
        for index, outcome in zip(waiting, again, strict=True):
            outcomes[index] = outcome
        return outcomes

    def alone(self, item: tuple[int, SendJob]) -> Outcome:
        """Paced: one job, in its own sending thread."""
        index, job = item
        began = time.monotonic()
        [outcome] = self.one([job], now=self.now)
        return self._settle(index, outcome, began, job)

    def _told(self, index: int, outcome: Outcome) -> None:
        if _soon(outcome):
            self.soon[index] = outcome
        elif self.notify is not None:
            self.notify(index, outcome)

    def _again(self, index: int) -> Outcome:
        return self._settle(index, self.soon[index], self.started, self.jobs[index])

    def _settle(self, index: int, outcome: Outcome, started: float, job: SendJob) -> Outcome:
        """The job's outcome after at most one short in-place wait; then tell it."""
        if _soon(outcome):
            time.sleep(max(0.0, started + outcome.delay_s - time.monotonic()))
            clock = None if self.now is None else self.now + timedelta(seconds=outcome.delay_s)
            [outcome] = self.one([replace(job, slot=outcome.slot)], now=clock)
        if self.notify is not None:
            self.notify(index, outcome)
        return outcome


def _soon(outcome: Outcome) -> bool:
    return outcome.action is Action.DEFER and outcome.delay_s < _SOON_S


def _paced(pacer: PacerService | None, now: datetime) -> bool:
    """Is a send rate in force? If the database cannot say, the batch path meets the same error
    and says DB_AWAY for each job (a raise here would dead-letter the whole batch)."""
    try:
        return pacer is not None and pacer.rate(now) is not None
    except DB_ERRORS:
        return False


def _deliver_all(
    jobs: Sequence[SendJob],
    *,
    sender: Sends,
    breaker: BreakerService,
    settings: Settings,
    via: str,
    pacer: PacerService | None,
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
    except DB_ERRORS as exc:
        return outcomes.results(db_away(exc))
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
                    outcomes[index] = after_failed_send(row, permit, answer, services, settings)
            except DB_ERRORS as exc:
                outcomes[index] = db_away(exc)
        for index, outcome in write_sent(sent, via):  # at once: see SendPool.send_many
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
    return outcomes.results(db_away(None))


@dataclass(frozen=True, slots=True)
class _Asked:
    index: int
    row_id: uuid.UUID
    token_id: uuid.UUID | None
    day: date | None
    permit: Permit


def _day(text: object) -> date | None:
    """A job's occasion date, or None when it has none (an older job) or not a date: the date
    only narrows where the row is looked for, so a job without a usable one is found by id."""
    if not isinstance(text, str):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _admit(
    jobs: Sequence[SendJob],
    outcomes: _Ledger,
    later: list[int],
    breaker: BreakerService,
    pacer: PacerService | None,
    now: datetime,
) -> list[_Asked]:
    """Parse each job, ask the breaker and the pacer: the jobs that may be claimed now. The
    others get their outcome here, except those that go once this round is over (`later`):
    the ones waiting for the breaker's probe, and a second job for a row already in the batch.

    Two jobs for one row meet in a batch when a row was re-published (fresh token) while its
    older job was still on its way back: only the row knows which job is current, so the
    second goes after the first has settled (it then finds the row sent, or claims it)."""
    parsed: list[tuple[int, uuid.UUID, uuid.UUID | None, date | None]] = []
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
        parsed.append((index, row_id, token_id, _day(job.occasion_date)))
    asked = []
    permits = breaker.permits(now, len(parsed))
    later.extend(index for index, *_ in parsed[len(permits) :])
    later.extend(repeats)
    for (index, row_id, token_id, day), permit in zip(parsed, permits, strict=False):
        if not permit.allowed:
            outcomes[index] = defer_for_breaker(row_id, token_id, permit, now, day)
            continue
        held = jobs[index].slot
        wait = pacer.acquire(now, held) if pacer is not None else None
        if wait is not None:
            breaker.release(permit, now)
            outcomes[index] = defer_for_pace(
                row_id, token_id, wait, held=wait is held, now=now, day=day
            )
            continue
        asked.append(_Asked(index, row_id, token_id, day, permit))
    return asked


def _claim(
    asked: list[_Asked],
    outcomes: _Ledger,
    breaker: BreakerService,
    settings: Settings,
    now: datetime,
) -> list[tuple[Claimed, Permit, int]]:
    """Claim the admitted rows in one statement; settle the ones that need no send."""
    lease_until = now + timedelta(seconds=settings.send_lease_s)
    rows = messages.claim_many(
        [(a.row_id, a.token_id) for a in asked],
        now,
        lease_until,
        days={a.row_id: a.day for a in asked if a.day is not None},
    )
    claimed = []
    for a in asked:
        row = rows.get(a.row_id)
        if row is None:
            breaker.release(a.permit, now)
            outcomes[a.index] = why_not_claimed(a.row_id, a.token_id, now, a.day)
        elif row.user_deleted:
            breaker.release(a.permit, now)
            messages.record_outcome("cancelled", row.id, now, occasion_date=row.occasion_date)
            outcomes[a.index] = Outcome(Action.DONE, "user deleted")
        elif deadline(row, settings) < now:
            breaker.release(a.permit, now)
            outcomes[a.index] = expire(row, settings, now)
        else:
            claimed.append((row, a.permit, a.index))
    return claimed


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
