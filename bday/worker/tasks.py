"""Celery tasks. Thin: parse, call a plain function, turn its outcome into a Celery action.

`send_message(message_id)` is the only task that talks to the email service; a worker runs its
jobs in batches (`SendMessage`, bday.worker.batching). The periodic tasks (`plan`, `enqueue`,
`recover`, `retention`) are run by beat and wrap `bday.scheduling.jobs`.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Any

from bday.broker.app import app
from bday.config import get_settings
from bday.delivery.attempt import Notify, SendJob, deliver_many
from bday.delivery.outcomes import Action, Outcome, record_delivered
from bday.delivery.pacing import Slot, get_pacer
from bday.delivery.sender import get_send_pool
from bday.scheduling import jobs
from bday.scheduling import plan_ranges as ranges
from bday.scheduling.jobs import get_breaker
from bday.worker.batching import ACK, REJECT, RETRY, BatchTask, Received, Settle

log = logging.getLogger(__name__)

DB_RETRY_MAX_S = 60


_JOB_ARGS = ("message_id", "token", "delivered", "slot", "occasion_date")
_PROVIDER_BODY = re.compile(r"(HTTP \d{3}):.*", re.DOTALL)


class SendMessage(BatchTask):
    """`send_message`'s worker side: its jobs run in batches (bday.worker.batching).

    Each job keeps its own fate: acked when done (ACK), re-published (Celery's way of retrying:
    the same task id, `retries` + 1, a countdown through the broker's delayed delivery) then
    acked when it must run again (RETRY), rejected so RabbitMQ dead-letters it when it must
    not (REJECT)."""

    @property
    def batch_size(self) -> int:  # type: ignore[override]
        return get_settings().send_batch_size

    @property
    def batch_wait_s(self) -> float:  # type: ignore[override]
        return get_settings().send_batch_wait_s

    def run_batch(self, jobs: list[Received], settle: Settle | None = None) -> list[str]:
        verdicts: list[str | None] = [None] * len(jobs)

        def decide(index: int, verdict: str, reason: str) -> None:
            verdicts[index] = verdict
            if settle is not None:  # this message's fate is known: settle it now
                settle(index, verdict, reason)

        work: list[tuple[int, SendJob]] = []
        for index, received in enumerate(jobs):
            fields = _fields(received)
            if fields is None:
                log.warning("job %s: malformed arguments, dead-lettered", received.id)
                decide(index, REJECT, "malformed arguments")
            elif fields.get("delivered") is not None:
                decide(index, *self._record(received, fields))
            else:
                slot = Slot.from_json(fields.get("slot"))
                job = SendJob(
                    fields["message_id"], fields.get("token"), slot, fields.get("occasion_date")
                )
                work.append((index, job))

        def done(k: int, outcome: Outcome) -> None:
            index, job = work[k]
            decide(index, *self._verdict(jobs[index], job, outcome))

        _deliver([job for _, job in work], done)
        return [verdict or REJECT for verdict in verdicts]

    def _verdict(self, received: Received, job: SendJob, outcome: Outcome) -> tuple[str, str]:
        """The verdict on a job, and why (for its task events)."""
        action, reason = outcome.action, _without_body(outcome.reason)
        if action is Action.DONE:
            return ACK, reason
        if action is Action.DEAD_LETTER:
            return REJECT, reason
        if action in (Action.RETRY, Action.DEFER):
            slot = outcome.slot.to_json() if outcome.slot else None
            kwargs = _dated(job, {"token": job.token, "slot": slot})
            return self._again(received, _countdown(outcome), kwargs, reason)
        countdown = _db_backoff(received.retries)
        if action is Action.RECORD:  # sent, but PostgreSQL went away before we wrote SENT
            log.warning(
                "message %s: sent, recording deferred (database unavailable)", job.message_id
            )
            kwargs = _dated(job, {"token": job.token, "delivered": outcome.delivered})
            return self._again(received, countdown, kwargs, "sent; recording deferred")
        log.warning("message %s: %s, again in %d s", job.message_id, reason, countdown)
        return self._again(received, countdown, received.kwargs, reason)

    def _record(self, received: Received, fields: dict[str, Any]) -> tuple[str, str]:
        """A retry that only has to write SENT for a send the service already accepted."""
        try:
            outcome = record_delivered(fields["delivered"])
        except (KeyError, TypeError, ValueError):
            log.warning("job %s: malformed delivery record, dead-lettered", received.id)
            return REJECT, "malformed delivery record"
        job = SendJob(fields["message_id"], fields.get("token"), None, fields.get("occasion_date"))
        return self._verdict(received, job, outcome)

    def _again(
        self, received: Received, countdown: float, kwargs: dict[str, Any], reason: str
    ) -> tuple[str, str]:
        """Publish the job again (after `countdown` s), then ack this copy (RETRY). If the
        broker refuses, dead-letter it instead, as Celery's own retry does: recovery
        re-publishes the row, which is still unsent."""
        try:
            self.apply_async(
                args=received.args,
                kwargs=kwargs,
                countdown=countdown,
                task_id=received.id,
                retries=received.retries + 1,
            )
        except Exception as exc:  # noqa: BLE001 - any publish failure: see above
            log.warning("job %s: could not be re-published (%s), dead-lettered", received.id, exc)
            return REJECT, f"{reason}; re-publish failed ({type(exc).__name__})"
        return RETRY, f"{reason}; again in {countdown:g} s"


def _dated(job: SendJob, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A re-published job keeps its row's occasion date, if it came with one (an older job
    without it stays without: its row is found by id)."""
    if job.occasion_date is not None:
        kwargs["occasion_date"] = job.occasion_date
    return kwargs


def _without_body(reason: str) -> str:
    """The reason without the provider's response body, which may echo the address: task
    events go to Flower and the task exporter, which must not hold personal data."""
    return _PROVIDER_BODY.sub(r"\1", reason)


def _fields(received: Received) -> dict[str, Any] | None:
    """The job's arguments by name, or None when they do not fit `send_message`'s signature."""
    if not 1 <= len(received.args) <= len(_JOB_ARGS) or not isinstance(received.kwargs, dict):
        return None
    fields = dict(zip(_JOB_ARGS, received.args, strict=False))
    for name, value in received.kwargs.items():
        if name not in _JOB_ARGS or name in fields:
            return None
        fields[name] = value
    if not isinstance(fields["message_id"], str):
        return None
    return fields


def _deliver(jobs: list[SendJob], notify: Notify) -> None:
    if jobs:
        deliver_many(
            jobs,
            sender=get_send_pool(),
            breaker=get_breaker(),
            pacer=get_pacer(),
            notify=notify,
        )


@app.task(base=SendMessage, bind=True, name="bday.tasks.send_message", acks_late=True)
def send_message(
    self: SendMessage,
    message_id: str,
    token: str | None = None,
    delivered: dict | None = None,
    slot: dict | None = None,
    occasion_date: str | None = None,
) -> str:
    """Deliver one greeting. A threads-pool worker runs these jobs in batches
    (`SendMessage.run_batch`); a prefork or solo worker, or a direct call, runs one job the same
    way here (`BatchTask.run_one`): "ack" when done, Retry when re-published, Reject
    (dead-letter) when it must not run again.
    `delivered` is internal: a retry that only has to record a send the service already
    accepted; so is `slot`, a paced send's promised turn. `occasion_date` (ISO) is the row's,
    its partition key: the job names the row by (id, date), so one partition is looked in; a
    job without it (published by an older release) is found by its id alone."""
    named = (
        ("token", token),
        ("delivered", delivered),
        ("slot", slot),
        ("occasion_date", occasion_date),
    )
    kwargs = {name: value for name, value in named if value is not None}
    request = self.request
    return self.run_one(Received(request.id or "", (message_id,), kwargs, request.retries or 0))


def _countdown(outcome: Outcome) -> float:
    # A paced send keeps its slot to the millisecond: the broker holds it for the whole
    # seconds, the batcher's clock for the fraction (no thread waits), so sends keep the
    # slots' spacing. The broker's delayed delivery refuses less than one second.
    if outcome.slot is not None:
        return max(1.0, outcome.delay_s)
    return max(1, round(outcome.delay_s))


def _db_backoff(retries: int) -> int:
    return min(DB_RETRY_MAX_S, 2 ** min(retries, 6))


@app.task(name="bday.tasks.plan", acks_on_failure=True)
def plan(requested_at: str | None = None) -> dict:
    """Plan owed occasions in the window around now (hourly, and when beat or a worker starts:
    then `requested_at`, the ISO instant of the start, lets one plan serve both)."""
    return jobs.plan_job(
        requested_at=datetime.fromisoformat(requested_at) if requested_at else None
    )


@app.task(name="bday.tasks.plan_ranges", acks_on_failure=True)
def plan_ranges(started_at: str) -> dict:
    """Help plan the fanned-out plan that started at `started_at` (ISO): its ranges nobody
    holds, one at a time, until all are done; nothing when this process already helps."""
    planned = ranges.run(started_at)
    return {"busy": True} if planned is None else {"planned": planned}


@app.task(name="bday.tasks.enqueue", acks_on_failure=True)
def enqueue() -> dict:
    """Publish rows due within the enqueue lead (every minute)."""
    return jobs.enqueue_job()


@app.task(name="bday.tasks.enqueue_slice", acks_on_failure=True)
def enqueue_slice(now: str, limit: int) -> dict:
    """Publish part of a fanned-out enqueue run's due rows (the run at `now`, ISO; at most
    `limit` rows): published by `enqueue` when one process would take too long."""
    return jobs.enqueue_slice_job(datetime.fromisoformat(now), limit)


@app.task(name="bday.tasks.recover", acks_on_failure=True)
def recover() -> dict:
    """Re-publish lost and transiently failed rows; expire overdue ones (every 5 minutes)."""
    return jobs.recover_job()


@app.task(name="bday.tasks.retention", acks_on_failure=True)
def retention() -> dict:
    """Delete finished rows older than MESSAGE_RETENTION_DAYS in batches (daily)."""
    return jobs.retention_job()
